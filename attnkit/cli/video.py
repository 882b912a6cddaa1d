"""`attnkit video-edit MODEL --video IN --prompt P --out OUT`: per-frame img2img made consistent by cross-frame
attention (see `attnkit.kv.video`). Reads and writes mp4, GIF or a folder of frames, one frame at a time."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import AttnkitError
from ..kv.defaults import ATTEND, VIDEO_METHODS
from .options import MODEL_HELP, add_generation_options, fps, positive_int, strength

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the `video-edit` subcommand to the `attnkit` parser's subcommands."""
    p = commands.add_parser("video-edit", help="edit a video frame by frame with img2img, kept consistent by "
                            "cross-frame attention to the first and previous frame")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--video", required=True, type=Path, help="input: an .mp4 (or other video), a .gif, or a folder "
                   "of frame images")
    p.add_argument("--prompt", required=True, help="what the edited video shows")
    p.add_argument("--out", required=True, type=Path, help="output: .mp4, .gif, or a folder (numbered PNGs)")
    p.add_argument("--controlnet", default=None, help="an edge ControlNet (shapes-sd15-edges, a folder or a hub id): "
                   "ControlNet img2img with each frame's edge map as the condition")
    p.add_argument("--method", choices=VIDEO_METHODS, default=None,
                   help="a published cross-frame attention, set up as its authors' code does: text2video-zero (every "
                   "self-attention layer of the UNet and the ControlNet attends to the first frame) or rerender "
                   "(the decoder's self-attention attends to the first and the previous frame)")
    p.add_argument("--attend", choices=ATTEND, default=None, help="without --method: the frames later frames attend "
                   "to in the decoder's self-attention: none (plain per-frame img2img), first, or first+previous "
                   "(the default)")
    p.add_argument("--strength", type=strength, default=0.6, help="img2img strength in (0, 1] (default 0.6)")
    add_generation_options(p, ("--seed", "--steps", "--guidance"))
    p.add_argument("--height", type=positive_int, default=None, help="frame height in pixels (default: the input's)")
    p.add_argument("--width", type=positive_int, default=None, help="frame width in pixels (default: the input's)")
    p.add_argument("--frames", type=positive_int, default=None, help="edit only the first N frames")
    p.add_argument("--fps", type=fps, default=None, help="output frames per second (default: the input's)")
    p.set_defaults(run=_video_edit, check=_probe)


def _probe(args: argparse.Namespace) -> None:
    """A bad video, or --attend with --method, fails before the model loads."""
    from ..videoio import probe

    if args.method is not None and args.attend is not None:
        raise AttnkitError(f"--method {args.method} sets which frames later frames attend to; leave out --attend.")
    probe(args.video)


def _video_edit(args: argparse.Namespace, load: Any) -> None:
    from ..run import video_edit

    _probe(args)
    count = video_edit(args.model, load(args.model), args.video, args.out, args.prompt, method=args.method,
                       attend=args.attend, strength=args.strength, steps=args.steps, seed=args.seed,
                       guidance=args.guidance,
                       height=args.height, width=args.width, frames=args.frames, fps=args.fps,
                       controlnet=args.controlnet)
    print(f"wrote {count} frame(s) to {args.out}")
