"""The `attnkit` command line. `--json` output formats are contracts other tools rely on: keep them exact."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from .errors import AttnkitError

__all__ = ["main", "MODEL_HELP"]

MODEL_HELP = ("built-in name (shapes-sd3, shapes-sd15, shapes-flux, tiny-sd15, tiny-sdxl, tiny-sd3, tiny-sd35, tiny-flux, "
              "random-sd15), local folder or hub id")

# Feature packages add their subcommands through a `register(commands)` function in these modules.
FEATURE_COMMANDS: tuple[str, ...] = (
    "attnkit.maps.cli",
    "attnkit.shapes.cli",
    "attnkit.regional.cli",
)


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
    from .models import load_pipeline

    records = inspect_shapes(load_pipeline(args.model), height=args.height, width=args.width)
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
    p.add_argument("--height", type=int, default=None, help="image height in pixels (default: the pipeline's)")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (default: the pipeline's)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON list of {index, site, kind, query, key, value, attention}")
    p.set_defaults(run=_inspect)
    for module in FEATURE_COMMANDS:
        importlib.import_module(module).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except AttnkitError as error:
        print(f"attnkit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
