"""`attnkit segment MODEL (--prompt P | --image in.png [--prompt P]) --out DIR`: segments from self-attention.

Writes DIR/labels.png (palette), DIR/overlay.png, DIR/segment-<id>.png per segment, DIR/segments.json (id, label
word, area, bbox), and DIR/image.png (the generated or given image).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli import MODEL_HELP, add_generation_options, checked_float, positive_int
from ..errors import AttnkitError

__all__ = ["register"]

_timestep = checked_float(lambda value: 0 < value <= 1000, "a noise level above 0 and at most 1000, e.g. 300")
_kl = checked_float(lambda value: value > 0, "a positive KL divergence, e.g. 1.1")


def register(commands: Any) -> None:
    """Add the `segment` subcommand to the `attnkit` parser's subcommands."""
    from .defaults import DEFAULT_ANCHORS, DEFAULT_THRESHOLDS, DEFAULT_TIMESTEP

    p = commands.add_parser("segment", help="segment a generated or existing image by self-attention (DiffSeg), "
                                            "segments named by prompt words")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--prompt", default=None, help="the prompt to generate; with --image, the image's description "
                                                  "(optional), whose words name the segments")
    p.add_argument("--image", type=Path, default=None, help="segment this image (PNG/JPEG) instead of generating one")
    p.add_argument("--out", required=True, type=Path, help="folder to write labels.png, overlay.png, "
                   "segment-<id>.png, segments.json and image.png")
    p.add_argument("--timestep", type=_timestep, default=DEFAULT_TIMESTEP,
                   help=f"noise level (0 clean .. 1000 pure noise) read (default {DEFAULT_TIMESTEP}, DiffSeg's)")
    p.add_argument("--resolutions", default=None,
                   help="comma-separated token-grid sizes of the self-attention sites to use (default: all)")
    p.add_argument("--threshold", type=_kl, default=DEFAULT_THRESHOLDS[0],
                   help=f"KL threshold of every merging round (default {DEFAULT_THRESHOLDS[0]}); lower splits more")
    p.add_argument("--anchors", type=positive_int, default=DEFAULT_ANCHORS,
                   help=f"side of the anchor grid (default {DEFAULT_ANCHORS})")
    add_generation_options(p)
    p.set_defaults(run=_segment)


def _segment(args: argparse.Namespace) -> None:
    if args.prompt is None and args.image is None:
        raise AttnkitError("give --prompt to segment a generated image, or --image (and optionally --prompt) to "
                           "segment an existing one.")
    resolutions = _resolutions(args.resolutions)

    import torch

    from ..models import call_kwargs, check_size, default_size, guidance_kwargs, load_pipeline
    from ..regional.images import read_image
    from .trace import segment_image, trace

    image = read_image(args.image, "--image", "RGB") if args.image is not None else None
    pipe = load_pipeline(args.model)
    options = {"timestep": args.timestep, "resolutions": resolutions, "thresholds": (args.threshold,) * 3,
               "anchors": args.anchors}
    if image is not None:
        given = [name for name in ("height", "width") if getattr(args, name) is not None]
        if given:
            raise AttnkitError(f"--{given[0]} sets the size of a generated image; the size of --image is its own. "
                               "Leave it out, or resize the image.")
        result = segment_image(pipe, image, args.prompt or "", seed=args.seed, call=call_kwargs(args.model, pipe),
                               **options)
    else:
        check_size(pipe, args.height, args.width)
        height = args.height or default_size(pipe)
        width = args.width or default_size(pipe)
        with trace(pipe, args.prompt, height=height, width=width, **options) as tc, torch.inference_mode():
            image = pipe(prompt=args.prompt, num_inference_steps=args.steps, height=height, width=width,
                         generator=torch.Generator().manual_seed(args.seed), **call_kwargs(args.model, pipe),
                         **guidance_kwargs(args.model, pipe, args.guidance)).images[0]
        result = tc.segmentation(image)
    written = result.save(args.out)
    image.save(args.out / "image.png")
    named = ", ".join(f"{s.id}: {s.label}" for s in result.segments)
    print(f"wrote {len(result.segments)} segment(s) ({named}) to {args.out}: {', '.join(p.name for p in written[:3])}, "
          f"segment-<id>.png, image.png")


def _resolutions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise AttnkitError(f"--resolutions {text!r}: give comma-separated token-grid sizes, e.g. --resolutions 64,32.")
    return values
