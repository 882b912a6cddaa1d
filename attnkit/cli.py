"""The `attnkit` command line. `--json` output formats are contracts other tools rely on: keep them exact."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .errors import AttnkitError

__all__ = ["main", "parse_command", "MODEL_HELP", "GENERATION_OPTIONS", "add_generation_options", "checked_float", "positive_int"]

MODEL_HELP = ("built-in name (shapes-sd3, shapes-sd15, shapes-flux, random-sd15, or a tiny offline pipeline: tiny-sd15, "
              "tiny-sdxl, tiny-sd3, tiny-sd35, tiny-flux, tiny-flux2, tiny-qwenimage, tiny-chroma, tiny-hidream, "
              "tiny-zimage, tiny-sana, tiny-pixart, tiny-lumina2, tiny-cogview4, tiny-auraflow, tiny-wan, tiny-cogvideox, "
              "tiny-hunyuanvideo, tiny-ltx), local folder or hub id")

# Feature packages add their subcommands through a `register(commands)` function in these modules. Building the
# parser imports them, so they import torch, diffusers and their own heavy modules inside their run functions only:
# `attnkit --help` and `attnkit COMMAND --help` stay instant.
FEATURE_COMMANDS: tuple[str, ...] = (
    "attnkit.maps.cli",
    "attnkit.shapes.cli",
    "attnkit.regional.cli",
    "attnkit.kv.cli",
    "attnkit.segment.cli",
    "attnkit.batch.cli",
    "attnkit.ui.cli",
)


def positive_int(text: str) -> int:
    """argparse type of a count or a size in pixels, so that 0 or -8 is a usage error, not a failure deep inside."""
    value = _whole(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; give a whole number of at least 1")
    return value


def _seed(text: str) -> int:
    """argparse type of a seed: any whole number `torch.Generator.manual_seed` takes."""
    value = _whole(text)
    if value is None or not -2**63 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"got {text!r}; give a whole number from 0 to 2**64 - 1")
    return value


def checked_float(accept: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    """argparse type of a finite number that `accept` takes; anything else (nan, inf, out of range) is a usage error
    that says what to give (`wanted`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and accept(value)):
            raise argparse.ArgumentTypeError(f"got {text!r}; give {wanted}")
        return value

    return parse


#: argparse type of an img2img strength: how much of the init image is re-noised.
strength = checked_float(lambda value: 0 < value <= 1, "a number above 0 and at most 1, e.g. 0.6")


# A guidance scale: nan or inf would sample garbage, a negative scale nothing meaningful.
_guidance = checked_float(lambda value: value >= 0, "a finite number of 0 or more, e.g. 7")


def _whole(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


#: The sampling options of every generating command, in help order.
GENERATION_OPTIONS: tuple[str, ...] = ("--seed", "--steps", "--height", "--width", "--guidance")
_GENERATION: dict[str, dict[str, Any]] = {
    "--seed": {"type": _seed, "default": 0, "help": "random seed (default 0)"},
    "--steps": {"type": positive_int, "default": 28, "help": "denoising steps (default 28)"},
    "--height": {"type": positive_int, "default": None, "help": "image height in pixels (default: the pipeline's)"},
    "--width": {"type": positive_int, "default": None, "help": "image width in pixels (default: the pipeline's)"},
    "--guidance": {"type": _guidance, "default": None,
                   "help": "guidance scale (default: the pipeline's; 7 on shapes models); true CFG against the empty "
                           "prompt on a Flux model without a guidance embedding"},
}


def add_generation_options(parser: argparse.ArgumentParser, options: Sequence[str] = GENERATION_OPTIONS) -> None:
    """Add `options` (all of GENERATION_OPTIONS by default), so that each means and checks the same everywhere."""
    for option in options:
        parser.add_argument(option, **_GENERATION[option])


def _sites(args: argparse.Namespace) -> None:
    from .models import load_pipeline
    from .sites import sites

    found = sites(load_pipeline(args.model))
    if args.json:
        print(json.dumps([s.as_dict() for s in found]))
        return
    width = max(len(s.name) for s in found)
    print(f"{'name':<{width}}  {'kind':<6} {'block':<10} {'heads':>5} {'head_dim':>8}")
    for s in found:
        print(f"{s.name:<{width}}  {s.kind:<6} {s.block:<10} {s.heads:>5} {s.head_dim:>8}")
    counts = ", ".join(f"{k} {sum(s.kind == k for s in found)}" for k in dict.fromkeys(s.kind for s in found))
    print(f"{len(found)} sites: {counts}")


def _inspect(args: argparse.Namespace) -> None:
    from .inspector import inspect_shapes
    from .models import check_size, load_pipeline

    pipe = load_pipeline(args.model)
    check_size(pipe, args.height, args.width)
    records = inspect_shapes(pipe, height=args.height, width=args.width)
    if args.json:
        print(json.dumps([r.as_dict() for r in records]))
        return
    for kind in dict.fromkeys(r.kind for r in records):
        print(f"{kind} attention")
        print(f"{'Index':>5}  {'Query Shape':<18} {'Key Shape':<18} {'Value Shape':<18} Attention Probability Shape")
        for r in (r for r in records if r.kind == kind):
            print(f"{r.index:>5}  {_shape(r.query):<18} {_shape(r.key):<18} {_shape(r.value):<18} {_shape(r.attention)}")
        print()


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnkit", description="Control and observe attention in diffusers pipelines.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("sites", help="list the attention sites of a model's denoiser")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON list of {name, kind, block, heads, head_dim}")
    p.set_defaults(run=_sites)

    p = commands.add_parser("inspect", help="Q/K/V and attention shapes at every site during one denoising step")
    p.add_argument("model", help=MODEL_HELP)
    add_generation_options(p, ("--height", "--width"))
    p.add_argument("--json", action="store_true",
                   help="print one JSON list of {index, site, kind, query, key, value, attention}")
    p.set_defaults(run=_inspect)
    for module in FEATURE_COMMANDS:
        importlib.import_module(module).register(commands)
    return parser


def _quiet_third_party() -> None:
    """Leave stderr to attnkit's messages and progress bars: the libraries' warnings seen here (no torchvision, no
    accelerate, deprecations inside diffusers / transformers) name nothing a user of the command can act on. The
    verbosities apply where the libraries are first imported, as in a command: set TRANSFORMERS_VERBOSITY or
    DIFFUSERS_VERBOSITY to `warning` to see them again."""
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|transformers)\.")


def parse_command(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` parsed as `attnkit` would parse it, its usage error raised as an AttnkitError instead of exiting."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            return _parser().parse_args(list(argv))
    except SystemExit:
        lines = buffer.getvalue().strip().splitlines()
        raise AttnkitError(lines[-1].split("error: ", 1)[-1] if lines else f"cannot parse {list(argv)}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_third_party()
    try:
        args.run(args)
    except AttnkitError as error:
        print(f"attnkit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
