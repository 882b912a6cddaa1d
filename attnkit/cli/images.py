"""`attnkit generate` (plain text-to-image) and `attnkit regional` (a region spec on SD1.x, SD2, SDXL, SD3, SD3.5,
Flux or another image DiT).

Both write the image as PNG with what made it in the `attnkit` text chunk (JSON), so an image carries its spec.
`regional --init-image` runs the model family's img2img pipeline on the same modules, `--mask-image` its inpaint
pipeline; the output has the init image's size.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import MODEL_HELP, add_generation_options, guidance, lora_file, strength

__all__ = ["register"]


def register(commands: Any) -> None:
    p = commands.add_parser("generate", help="plain text-to-image generation with the stock pipeline")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--prompt", required=True, help="the prompt")
    _common(p)
    p.set_defaults(run=_generate)

    p = commands.add_parser("regional", help="regional prompting from a YAML / JSON region spec (SD1.x, SDXL, SD3, "
                                             "Flux and the other image DiTs)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--spec", required=True, type=Path, help="region spec file (.yaml, .yml or .json)")
    _common(p)
    p.add_argument("--outline", action="store_true",
                   help="also write OUT with '.outline' before the suffix: the image with region borders drawn")
    p.add_argument("--init-image", type=Path,
                   help="img2img: start from this image instead of noise; the output has its size")
    p.add_argument("--strength", type=strength,
                   help="with --init-image: how much of it is re-noised, in (0, 1] (default: the pipeline's, 0.6)")
    p.add_argument("--mask-image", type=Path,
                   help="with --init-image: inpaint, repainting only where this mask is white")
    p.add_argument("--lora", type=lora_file, action="append", default=[], metavar="NAME=PATH",
                   help="load this LoRA file under adapter NAME for the run (repeat for more), as the spec's "
                        "`loras` does; regions give it to their tokens with `lora: {NAME: weight}`")
    p.add_argument("--true-cfg-scale", type=guidance,
                   help="true classifier-free guidance against the spec's negatives, on pipelines that guide only when "
                        "given a negative (Flux.1, Qwen-Image); needed there when the spec has negatives")
    p.set_defaults(run=_regional, check=_read_spec)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    add_generation_options(p)


def _options(args: argparse.Namespace, pipe: Any) -> dict[str, Any]:
    from ..run import sampling_options

    return sampling_options(args.model, pipe, args.steps, args.height, args.width, args.guidance)


def _generate(args: argparse.Namespace, load: Any) -> None:
    from ..run import generate

    pipe = load(args.model)
    print(*generate(args.model, pipe, args.prompt, args.seed, _options(args, pipe), out=args.out).files, sep="\n")


def _read_spec(args: argparse.Namespace) -> Any:
    from ..regional import load_spec
    from ..run import with_lora_files

    return with_lora_files(load_spec(args.spec), args.lora)


def _regional(args: argparse.Namespace, load: Any) -> None:
    from ..run import init_images, regional, true_cfg_options

    spec = _read_spec(args)
    images = init_images(args.init_image, args.mask_image, args.strength)
    pipe = load(args.model)
    options = _options(args, pipe) | true_cfg_options(pipe, args.true_cfg_scale)
    result = regional(args.model, pipe, spec, args.seed, options, images, args.strength, out=args.out,
                      outline=args.outline)
    print(*result.files, sep="\n")
