"""`attnkit maps MODEL --prompt P --out DIR`: generate one image and write its per-word attention maps.

Writes DIR/image.png, DIR/<word>.png (overlay per word), DIR/grid.png (all words) and DIR/maps.safetensors. With
`--space output --concepts a,b` the maps are output-space concept maps (SD3, SD3.5, Flux), one PNG per concept;
`--method daam` aggregates probability maps as DAAM's code does (UNets).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import AttnkitError
from .options import MODEL_HELP, add_generation_options, positive_int

__all__ = ["register"]


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
    p.add_argument("--method", choices=("mean", "daam"), default="mean",
                   help="how probability maps are aggregated: mean (default: the mean probability over heads, layers "
                   "and steps, a word's tokens summed) or daam (DAAM's code: a UNet's down- and up-block "
                   "cross-attention, each layer's and head's sum over steps upsampled bicubic and clamped at 0, "
                   "averaged; a word's tokens averaged)")
    p.add_argument("--normalize", action="store_true",
                   help="with --method daam: divide each word's map by the prompt's words' sum at every pixel, as "
                   "DAAM's normalize does")
    add_generation_options(p)
    p.add_argument("--size", type=positive_int, default=None, metavar="S",
                   help="shorthand for --height S --width S (not combined with them)")
    p.set_defaults(run=_maps, check=_check)


def _check(args: argparse.Namespace) -> tuple[int | None, int | None, list[str] | None, list[str] | None]:
    """(height, width, words, concepts) of the options, checked: --size is both sides."""
    if args.normalize and args.method != "daam":
        raise AttnkitError("--normalize is DAAM's normalisation over the prompt's words: add --method daam.")
    if args.method != "mean" and args.space == "output":
        raise AttnkitError(f"--method {args.method} aggregates attention probabilities; --space output maps concepts "
                           "from attention outputs: leave --method out.")
    height, width = args.height, args.width
    if args.size is not None:
        if height is not None or width is not None:
            raise AttnkitError(f"--size {args.size} sets both --height and --width; give either --size or "
                               "--height/--width.")
        height = width = args.size
    return height, width, _words(args.words), _concepts(args)


def _maps(args: argparse.Namespace, load: Any) -> None:
    from ..run import maps, sampling_options

    height, width, words, concepts = _check(args)
    pipe = load(args.model)
    options = sampling_options(args.model, pipe, args.steps, height, width, args.guidance)
    result = maps(args.model, pipe, args.prompt, args.seed, options, words=words, concepts=concepts, out=args.out,
                  method=args.method, normalize=args.normalize)
    print(f"wrote {args.out / 'image.png'}, {len(result.maps)} {'concept' if concepts else 'word'} map(s) "
          f"({', '.join(result.maps)}), {args.out / 'grid.png'}, {args.out / 'maps.safetensors'}")


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
    from ..run.attention_maps import MAPS_FILES

    names = [w.strip().lower() for w in text.split(",") if w.strip()]
    if not names:
        raise AttnkitError(f"{option} {text!r} names no word; give e.g. {option} {example}.")
    taken = [w for w in names if w in MAPS_FILES]
    if taken:
        raise AttnkitError(f"{option} {', '.join(taken)}: {taken[0]}.png is the name of another output file; "
                           "leave that word out.")
    return names
