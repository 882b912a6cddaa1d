"""`attnkit maps MODEL --prompt P --out DIR`: generate one image and write its per-word attention maps.

Writes DIR/image.png, DIR/<word>.png (overlay per word), DIR/grid.png (all words) and DIR/maps.safetensors. With
`--space output --concepts a,b` the maps are output-space concept maps (SD3, SD3.5, Flux), one PNG per concept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cli import MODEL_HELP, add_generation_options, positive_int
from ..errors import AttnkitError

__all__ = ["register"]

_RESERVED = ("image", "grid")  # file names the command writes besides the words


def register(commands: Any) -> None:
    """Add the `maps` subcommand to the `attnkit` parser's subcommands."""
    p = commands.add_parser("maps", help="generate one image and write per-word attention heat maps")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--prompt", required=True, help="the prompt to generate")
    p.add_argument("--out", required=True, type=Path, help="folder to write image.png, <word>.png, grid.png, "
                   "maps.safetensors")
    p.add_argument("--words", default=None, help="comma-separated words of the prompt (default: every word)")
    p.add_argument("--space", choices=("probability", "output"), default="probability",
                   help="probability (default): attention probabilities over the prompt's words; output: "
                   "output-space concept maps of --concepts (SD3, SD3.5, Flux)")
    p.add_argument("--concepts", default=None, help="comma-separated concepts for --space output, in the prompt "
                   "or not, e.g. circle,square,background")
    add_generation_options(p)
    p.add_argument("--size", type=positive_int, default=None, metavar="S",
                   help="shorthand for --height S --width S (not combined with them)")
    p.set_defaults(run=_maps)


def _maps(args: argparse.Namespace) -> None:
    if args.size is not None:
        if args.height is not None or args.width is not None:
            raise AttnkitError(f"--size {args.size} sets both --height and --width; give either --size or "
                               "--height/--width.")
        args.height = args.width = args.size

    import torch

    from ..models import call_kwargs, check_size, guidance_kwargs, load_pipeline
    from . import plot
    from .trace import trace

    concepts = _concepts(args)
    words = _words(args.words)
    pipe = load_pipeline(args.model)
    check_size(pipe, args.height, args.width)
    space = {"space": "output", "concepts": concepts} if concepts else {}
    with trace(pipe, prompt=args.prompt, **space) as tc, torch.inference_mode():
        size = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
        out = pipe(prompt=args.prompt, num_inference_steps=args.steps, **size,
                   generator=torch.Generator().manual_seed(args.seed), **call_kwargs(args.model, pipe),
                   **guidance_kwargs(args.model, pipe, args.guidance))
    image = out.images[0] if hasattr(out, "images") else _filmstrip(out.frames[0], tc.recorder.frames)
    if concepts:
        words = concepts
    elif words is None:
        every = tc.tokens().unique_words
        words = [w for w in every if w not in _RESERVED]
        skipped = sorted(set(every) - set(words))
        if skipped:
            print(f"attnkit: no map for {', '.join(skipped)}: image.png and grid.png are other outputs", file=sys.stderr)
    maps = {w: heat[0] for w, heat in tc.word_maps(words).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    image.save(args.out / "image.png")
    for word, heat in maps.items():
        plot.overlay(image, heat).save(args.out / f"{word}.png")
    plot.grid(image, maps).save(args.out / "grid.png")
    tc.save(args.out / "maps.safetensors", words)
    print(f"wrote {args.out / 'image.png'}, {len(maps)} {'concept' if concepts else 'word'} map(s) "
          f"({', '.join(maps)}), "
          f"{args.out / 'grid.png'}, {args.out / 'maps.safetensors'}")


def _filmstrip(frames: Any, count: int) -> Any:
    """A video's frames at the `count` latent frames of its maps, stacked top to bottom as the maps stack them."""
    import numpy as np
    from PIL import Image

    frames = [np.asarray(f) for f in frames]
    chosen = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count).round()]
    stacked = np.concatenate(chosen, axis=0)
    return Image.fromarray(stacked if stacked.dtype == np.uint8 else (stacked.clip(0, 1) * 255).round().astype(np.uint8))


def _concepts(args: argparse.Namespace) -> list[str] | None:
    """The --concepts list of --space output (required there, refused elsewhere, not with --words)."""
    if args.space != "output":
        if args.concepts is not None:
            raise AttnkitError("--concepts names the concepts of output-space maps: add --space output (probability "
                               "maps take --words of the prompt).")
        return None
    if args.concepts is None:
        raise AttnkitError("--space output maps concepts: give them with --concepts, e.g. --concepts "
                           "circle,square,background.")
    if args.words is not None:
        raise AttnkitError("--words picks words of the prompt for probability maps; with --space output give "
                           "--concepts only.")
    return _names("--concepts", args.concepts, "circle,square")


def _words(text: str | None) -> list[str] | None:
    """The --words list, lower-cased; words named like the other output files are refused."""
    return None if text is None else _names("--words", text, "red,square")


def _names(option: str, text: str, example: str) -> list[str]:
    names = [w.strip().lower() for w in text.split(",") if w.strip()]
    if not names:
        raise AttnkitError(f"{option} {text!r} names no word; give e.g. {option} {example}.")
    taken = [w for w in names if w in _RESERVED]
    if taken:
        raise AttnkitError(f"{option} {', '.join(taken)}: {taken[0]}.png is the name of another output file; "
                           "leave that word out.")
    return names
