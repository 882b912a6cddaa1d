"""`attnkit generate` (plain text-to-image) and `attnkit regional` (a region spec on SD3 / SD3.5 / Flux).

Both write the image as PNG with what made it in the `attnkit` text chunk (JSON), so an image carries its spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..cli import MODEL_HELP, add_generation_options

__all__ = ["register", "METADATA_KEY"]

#: PNG text chunk holding the JSON of the command, model, seed, sizes and prompt or spec.
METADATA_KEY = "attnkit"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("generate", help="plain text-to-image generation with the stock pipeline")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--prompt", required=True, help="the prompt")
    _common(p)
    p.set_defaults(run=_generate)

    p = commands.add_parser("regional", help="regional prompting from a YAML / JSON region spec (SD3, SD3.5, Flux)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--spec", required=True, type=Path, help="region spec file (.yaml, .yml or .json)")
    _common(p)
    p.add_argument("--outline", action="store_true",
                   help="also write OUT with '.outline' before the suffix: the image with region borders drawn")
    p.set_defaults(run=_regional)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    add_generation_options(p)


def _options(args: argparse.Namespace, pipe: Any) -> dict[str, Any]:
    from ..models import check_size

    check_size(pipe, args.height, args.width)
    return {"num_inference_steps": args.steps, "height": args.height, "width": args.width}


def _save(image: Any, path: Path, record: dict[str, Any]) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)
    print(path)


def _generate(args: argparse.Namespace) -> None:
    import torch

    from ..models import call_kwargs, guidance_kwargs, load_pipeline

    pipe = load_pipeline(args.model)
    options = _options(args, pipe) | call_kwargs(args.model, pipe) | guidance_kwargs(args.model, pipe, args.guidance)
    with torch.inference_mode():
        image = pipe(prompt=args.prompt, generator=torch.Generator().manual_seed(args.seed), **options).images[0]
    _save(image, args.out, {"command": "generate", "model": args.model, "prompt": args.prompt, "seed": args.seed,
                            **options})


def _regional(args: argparse.Namespace) -> None:
    import torch

    from ..models import call_kwargs, guidance_kwargs, load_pipeline
    from .outline import draw_outlines
    from .session import regional
    from .spec import load_spec

    spec = load_spec(args.spec)
    pipe = load_pipeline(args.model)
    options = _options(args, pipe) | guidance_kwargs(args.model, pipe, args.guidance)
    negative = options.pop("negative_prompt", None)  # true CFG: the spec's negatives, else this one
    if negative is not None and spec.negative is None and all(r.negative is None for r in spec.regions):
        spec = dataclasses.replace(spec, negative=negative)
    with regional(pipe, spec, **call_kwargs(args.model, pipe)) as call:
        kwargs = call(seed=args.seed, **options)
        with torch.inference_mode():
            image = pipe(**kwargs).images[0]
        grid = call.grid(kwargs["height"], kwargs["width"])
    options |= {"height": kwargs["height"], "width": kwargs["width"]}
    _save(image, args.out, {"command": "regional", "model": args.model, "spec": spec.as_dict(), "seed": args.seed,
                            **options})
    if args.outline:
        _save(draw_outlines(image, spec, grid), args.out.with_suffix(".outline" + (args.out.suffix or ".png")),
              {"command": "regional-outline", "spec": spec.as_dict()})
