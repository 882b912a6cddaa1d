"""`attnkit segment MODEL (--prompt P | --image in.png [--prompt P]) --out DIR`: segments from self-attention.

Writes DIR/labels.png (palette), DIR/overlay.png, DIR/segment-<id>.png per segment, DIR/segments.json (the timestep
and step read; id, label word, area, bbox per segment), and DIR/image.png (the generated or given image).
`--protocol` (default diffseg: DiffSeg's published benchmark) says how the image is read and the maps merged.
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
    from ..segment.defaults import (
        DEFAULT_ANCHORS,
        DEFAULT_KMEANS_ITERATIONS,
        DEFAULT_PROTOCOL,
        DEFAULT_TIMESTEP,
        PROTOCOLS,
    )

    p = commands.add_parser("segment", help="segment a generated or existing image by self-attention (DiffSeg), "
                                            "segments named by prompt words")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--prompt", default=None, help="the prompt to generate; with --image, the image's description "
                                                  "(optional), whose words name the segments")
    p.add_argument("--image", type=Path, default=None, help="segment this image (PNG/JPEG) instead of generating one")
    p.add_argument("--out", required=True, type=Path, help="folder to write labels.png, overlay.png, "
                   "segment-<id>.png, segments.json and image.png")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=DEFAULT_PROTOCOL,
                   help="how the image is read and its maps merged: "
                   + "; ".join(f"{proto.name}: {proto.description}" for proto in PROTOCOLS.values())
                   + f" (default {DEFAULT_PROTOCOL}; a generation is read at its step nearest --timestep)")
    p.add_argument("--timestep", type=timestep, default=DEFAULT_TIMESTEP,
                   help=f"noise level (0 clean .. 1000 pure noise) read (default {DEFAULT_TIMESTEP}, DiffSeg's)")
    p.add_argument("--resolutions", default=None,
                   help="comma-separated token-grid sizes of the self-attention sites to use (default: all)")
    p.add_argument("--threshold", type=kl, default=None,
                   help="KL threshold of every merging round (default: the protocol's, "
                   + ", ".join(f"{proto.thresholds[0]:g} for {proto.name}" for proto in PROTOCOLS.values())
                   + "); lower splits more")
    p.add_argument("--kmeans-iterations", type=positive_int, default=None,
                   help=f"rounds of the k-means refinement at most (protocols that refine; default "
                   f"{DEFAULT_KMEANS_ITERATIONS})")
    p.add_argument("--anchors", type=positive_int, default=DEFAULT_ANCHORS,
                   help=f"side of the anchor grid (default {DEFAULT_ANCHORS})")
    add_generation_options(p)
    p.set_defaults(run=_segment, check=_check, seed=None)  # --seed: a generation's (default 0), or img2img's noise


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """The segmentation options, checked with what the command was given to segment."""
    if args.prompt is None and args.image is None:
        raise AttnkitError("give --prompt to segment a generated image, or --image (and optionally --prompt) to "
                           "segment an existing one.")
    from ..segment.defaults import IMAGE_PROTOCOLS, PROTOCOLS

    protocol = PROTOCOLS[args.protocol]
    if args.image is not None:
        given = [name for name in ("height", "width") if getattr(args, name) is not None]
        if given:
            raise AttnkitError(f"--{given[0]} sets the size of a generated image; the size of --image is its own. "
                               "Leave it out, or resize the image.")
        if protocol.clean and args.seed is not None:
            raise AttnkitError(f"--seed draws the noise of --protocol img2img; --protocol {protocol.name} reads the "
                               "image's clean latent, without noise: leave --seed out, or add --protocol img2img.")
    elif protocol.name in IMAGE_PROTOCOLS:
        raise AttnkitError(f"--protocol {protocol.name} reads an existing image: add --image, or choose "
                           + " or ".join(name for name in PROTOCOLS if name not in IMAGE_PROTOCOLS)
                           + " for a generated one.")
    if args.kmeans_iterations is not None and not protocol.refine:
        raise AttnkitError(f"--kmeans-iterations sets the rounds of DiffSeg's k-means refinement, which --protocol "
                           f"{protocol.name} leaves out: use --protocol diffseg-notebook.")
    options = {"protocol": args.protocol, "timestep": args.timestep, "resolutions": _resolutions(args.resolutions),
               "anchors": args.anchors}
    if args.threshold is not None:
        options["thresholds"] = (args.threshold,) * 3
    if args.kmeans_iterations is not None:
        options["kmeans_iterations"] = args.kmeans_iterations
    return options


def _segment(args: argparse.Namespace, load: Any) -> None:
    from ..files import read_image
    from ..run import sampling_options, segment

    segment_options = _check(args)
    image = read_image(args.image, "--image", "RGB") if args.image is not None else None
    pipe = load(args.model)
    options = sampling_options(args.model, pipe, args.steps, args.height, args.width, args.guidance)
    result = segment(args.model, pipe, args.prompt, image, args.seed, options, segment_options, out=args.out)
    found = result.segmentation
    named = ", ".join(f"{s.id}: {s.label}" for s in found.segments)
    read = f"timestep {found.timestep:g}" if found.step is None else \
        f"step {found.step} of {found.steps} (timestep {found.timestep:g})"
    print(f"wrote {len(found.segments)} segment(s) ({named}), read at {read}, to {args.out}: "
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
