"""`attnkit sites MODEL` (the attention sites of a model's denoiser) and `attnkit inspect MODEL` (the Q/K/V and
attention shapes at every site during one denoising step)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from .options import MODEL_HELP, add_generation_options

__all__ = ["register"]


def register(commands: Any) -> None:
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


def _sites(args: argparse.Namespace, load: Any) -> None:
    from ..sites import sites

    found = sites(load(args.model))
    if args.json:
        print(json.dumps([s.as_dict() for s in found]))
        return
    width = max(len(s.name) for s in found)
    print(f"{'name':<{width}}  {'kind':<6} {'block':<10} {'heads':>5} {'head_dim':>8}")
    for s in found:
        print(f"{s.name:<{width}}  {s.kind:<6} {s.block:<10} {s.heads:>5} {s.head_dim:>8}")
    counts = ", ".join(f"{k} {sum(s.kind == k for s in found)}" for k in dict.fromkeys(s.kind for s in found))
    print(f"{len(found)} sites: {counts}")


def _inspect(args: argparse.Namespace, load: Any) -> None:
    from ..inspector import inspect_shapes
    from ..pipeline import check_size

    pipe = load(args.model)
    check_size(pipe, args.height, args.width)
    records = inspect_shapes(pipe, height=args.height, width=args.width)
    if args.json:
        print(json.dumps([r.as_dict() for r in records]))
        return
    for kind in dict.fromkeys(r.kind for r in records):
        print(f"{kind} attention")
        print(f"{'Index':>5}  {'Query Shape':<18} {'Key Shape':<18} {'Value Shape':<18} Attention Probability Shape")
        for r in (r for r in records if r.kind == kind):
            shapes = "".join(f"{_shape(shape):<18} " for shape in (r.query, r.key, r.value))
            print(f"{r.index:>5}  {shapes}{_shape(r.attention)}")
        print()


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"
