"""`attnkit demo` (the first command to run: real pictures, no download) and `attnkit eval MODEL` (quality numbers
on the shapes models)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import add_generation_options, positive_int

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the `demo` and `eval` subcommands to the `attnkit` parser's subcommands."""
    p = commands.add_parser("demo", help="offline demo on a shipped shapes model: plain vs regional prompt, "
                            "attention maps; writes PNGs")
    p.add_argument("--out", type=Path, default=Path("attnkit-demo"), help="folder for the PNGs (default attnkit-demo)")
    p.add_argument("--model", default="shapes-sd3",
                   help="shapes-sd3 (default), shapes-sd15, or shapes-flux (attnkit-shapes-extra)")
    add_generation_options(p, ("--seed",))  # size, steps and guidance are the shapes models' own
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (default 1: the model is tiny, more "
                   "threads only add overhead)")
    p.add_argument("--video", action="store_true", help="also write video.gif: a shapes-world video recoloured by "
                   "per-frame img2img and with cross-frame attention, side by side (about half a minute)")
    p.set_defaults(run=_demo)

    p = commands.add_parser("eval", help="quality benchmark on shapes models, judged by colour segmentation")
    p.add_argument("models", nargs="+", metavar="MODEL", help="shapes-sd3, shapes-sd15, shapes-flux, or a folder "
                   "trained by attnkit.shapes.train")
    p.add_argument("--seeds", type=positive_int, default=8, help="images per single-object prompt; 4x as many "
                   "two-object layouts (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object per model: model, prompt_following, "
                   "regional_adherence, plain_adherence, map_iou, flicker_per_frame, flicker_first, "
                   "flicker_first_previous, edit_adherence, regional_adherence_4, map_iou_output, segment_miou (each "
                   "in [0, 1] or null)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (default 1)")
    p.set_defaults(run=_eval)


def _eval(args: argparse.Namespace, load: Any) -> None:
    import torch

    from ..processes import is_main_process
    from ..shapes.evaluate import METRICS, model_metrics

    torch.set_num_threads(args.threads)
    for model in args.models:
        metrics = model_metrics(model, args.seeds)
        if not is_main_process():  # under `accelerate launch` every process has the result; one reports it
            continue
        if args.json:
            print(json.dumps(metrics))
        else:
            print(model)
            for key in METRICS:
                value = metrics[key]
                print(f"  {key:<20} {'n/a (feature not installed)' if value is None else f'{value:.3f}'}")


def _demo(args: argparse.Namespace, load: Any) -> None:
    import time

    import torch

    from ..shapes.demo import run_demo, video_demo

    torch.set_num_threads(args.threads)
    start = time.monotonic()
    written = run_demo(args.model, args.out, seed=args.seed)
    if args.video:
        written.append(video_demo(args.model, args.out, seed=args.seed))
    print(f"wrote {', '.join(str(p) for p in written)} in {time.monotonic() - start:.1f} s")
