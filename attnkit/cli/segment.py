"""`attnkit segment MODEL (--prompt P | --image in.png [--prompt P]) --out DIR`: segments from self-attention.

Writes DIR/labels.png (palette), DIR/overlay.png, DIR/segment-<id>.png per segment, DIR/segments.json (id, label
word, area, bbox), and DIR/image.png (the generated or given image).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import AttnkitError
from .options import MODEL_HELP, add_generation_options, kl, positive_int, timestep

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the `segment` subcommand to the `attnkit` parser's subcommands."""
    from ..segment.defaults import DEFAULT_ANCHORS, DEFAULT_THRESHOLDS, DEFAULT_TIMESTEP

    p = commands.add_parser("segment", help="segment a generated or existing image by self-attention (DiffSeg), "
                                            "segments named by prompt words")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--prompt", default=None, help="the prompt to generate; with --image, the image's description "
                                                  "(optional), whose words name the segments")
    p.add_argument("--image", type=Path, default=None, help="segment this image (PNG/JPEG) instead of generating one")
    p.add_argument("--out", required=True, type=Path, help="folder to write labels.png, overlay.png, "
                   "segment-<id>.png, segments.json and image.png")
    p.add_argument("--timestep", type=timestep, default=DEFAULT_TIMESTEP,
                   help=f"noise level (0 clean .. 1000 pure noise) read (default {DEFAULT_TIMESTEP}, DiffSeg's)")
    p.add_argument("--resolutions", default=None,
                   help="comma-separated token-grid sizes of the self-attention sites to use (default: all)")
    p.add_argument("--threshold", type=kl, default=DEFAULT_THRESHOLDS[0],
                   help=f"KL threshold of every merging round (default {DEFAULT_THRESHOLDS[0]}); lower splits more")
    p.add_argument("--anchors", type=positive_int, default=DEFAULT_ANCHORS,
                   help=f"side of the anchor grid (default {DEFAULT_ANCHORS})")
    add_generation_options(p)
    p.set_defaults(run=_segment, check=_check)


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """The segmentation options, checked with what the command was given to segment."""
    if args.prompt is None and args.image is None:
        raise AttnkitError("give --prompt to segment a generated image, or --image (and optionally --prompt) to "
                           "segment an existing one.")
    if args.image is not None:
        given = [name for name in ("height", "width") if getattr(args, name) is not None]
        if given:
            raise AttnkitError(f"--{given[0]} sets the size of a generated image; the size of --image is its own. "
                               "Leave it out, or resize the image.")
    return {"timestep": args.timestep, "resolutions": _resolutions(args.resolutions),
            "thresholds": (args.threshold,) * 3, "anchors": args.anchors}


def _segment(args: argparse.Namespace, load: Any) -> None:
    from ..files import read_image
    from ..run import sampling_options, segment

    segment_options = _check(args)
    image = read_image(args.image, "--image", "RGB") if args.image is not None else None
    pipe = load(args.model)
    options = sampling_options(args.model, pipe, args.steps, args.height, args.width, args.guidance)
    result = segment(args.model, pipe, args.prompt, image, args.seed, options, segment_options, out=args.out)
    named = ", ".join(f"{s.id}: {s.label}" for s in result.segmentation.segments)
    print(f"wrote {len(result.segmentation.segments)} segment(s) ({named}) to {args.out}: "
          f"{', '.join(p.name for p in result.files[:3])}, segment-<id>.png, image.png")


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
