"""`attnkit generate` (plain text-to-image) and `attnkit regional` (a region spec on SD1.x, SD2, SDXL, SD3, SD3.5 or
Flux).

Both write the image as PNG with what made it in the `attnkit` text chunk (JSON), so an image carries its spec.
`regional --init-image` runs the model family's img2img pipeline on the same modules, `--mask-image` its inpaint
pipeline; the output has the init image's size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import MODEL_HELP, add_generation_options, strength
from ..errors import AttnkitError
from ..models import call_parameters, takes_true_cfg

if TYPE_CHECKING:
    from .spec import RegionSpec

__all__ = ["register", "METADATA_KEY", "generate_image", "regional_image", "sampling_options", "save_png",
           "true_cfg_options"]

#: PNG text chunk holding the JSON of the command, model, seed, sizes and prompt or spec.
METADATA_KEY = "attnkit"



def register(commands: argparse._SubParsersAction) -> None:
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
    p.add_argument("--true-cfg-scale", type=float,
                   help="true classifier-free guidance against the spec's negatives, on pipelines that guide only when "
                        "given a negative (Flux.1, Qwen-Image); needed there when the spec has negatives")
    p.set_defaults(run=_regional)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    add_generation_options(p)


def sampling_options(model: str, pipe: Any, steps: int, height: int | None, width: int | None,
                     guidance: float | None) -> dict[str, Any]:
    """The pipeline arguments of the generation options, checked: every front end samples and records alike."""
    from ..models import check_size, guidance_kwargs

    check_size(pipe, height, width)
    return {"num_inference_steps": steps, "height": height, "width": width} | guidance_kwargs(model, pipe, guidance)


def _options(args: argparse.Namespace, pipe: Any) -> dict[str, Any]:
    return sampling_options(args.model, pipe, args.steps, args.height, args.width, args.guidance)


def save_png(image: Any, path: Path, record: dict[str, Any]) -> None:
    """Write `image` as PNG with `record` as JSON in its `attnkit` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)


def _save(image: Any, path: Path, record: dict[str, Any]) -> None:
    save_png(image, path, record)
    print(path)


def generate_image(model: str, pipe: Any, prompt: str, seed: int, options: dict[str, Any],
                   **extra: Any) -> tuple[Any, dict[str, Any]]:
    """The image of `attnkit generate` and the record its PNG carries; `extra` (e.g. `callback_on_step_end`) goes to
    the pipeline only."""
    import torch

    from ..models import call_kwargs

    options = options | call_kwargs(model, pipe)
    with torch.inference_mode():
        image = pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **options, **extra).images[0]
    return image, {"command": "generate", "model": model, "prompt": prompt, "seed": seed, **options}


def _generate(args: argparse.Namespace) -> None:
    from ..models import load_pipeline

    pipe = load_pipeline(args.model)
    image, record = generate_image(args.model, pipe, args.prompt, args.seed, _options(args, pipe))
    _save(image, args.out, record)


def _init_images(args: argparse.Namespace) -> dict[str, Any]:
    """--init-image (and --mask-image) as pipeline arguments, read before the model loads so a bad file fails fast."""
    from .images import read_image

    for option, value in (("--mask-image", args.mask_image), ("--strength", args.strength)):
        if value is not None and args.init_image is None:
            raise AttnkitError(f"{option} needs --init-image: it applies to img2img and inpainting, which start from "
                               f"that image. Add --init-image, or leave out {option}.")
    if args.init_image is None:
        return {}
    images = {"image": read_image(args.init_image, "--init-image", "RGB")}
    if args.mask_image is not None:
        images["mask_image"] = read_image(args.mask_image, "--mask-image", "L")
    return images


def _image_pipeline(args: argparse.Namespace, pipe: Any, images: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The pipeline to run: `pipe`, or with init images its img2img (inpaint with a mask) sibling; and the strength
    it runs at (the pipeline's default unless --strength), as an argument."""
    from .images import image_pipeline

    if not images:
        return pipe, {}
    pipe = image_pipeline(pipe, inpaint="mask_image" in images)
    default = call_parameters(pipe)["strength"].default
    return pipe, {"strength": default if args.strength is None else args.strength}


def regional_image(model: str, pipe: Any, spec: RegionSpec, seed: int, options: dict[str, Any],
                   images: dict[str, Any] | None = None, **extra: Any) -> tuple[Any, RegionSpec, tuple[int, int],
                                                                               dict[str, Any]]:
    """The image of `attnkit regional`, the spec it ran (with the masks a first pass found for `from_word`
    regions), its token grid, and the record its PNG carries; `extra` (e.g. `callback_on_step_end`) goes to the
    pipeline only."""
    import torch

    from ..models import call_kwargs
    from .session import regional

    options = dict(options)
    negative = options.pop("negative_prompt", None)  # true CFG: the spec's negatives, else this one
    if negative is not None and spec.negative is None and all(r.negative is None for r in spec.regions):
        spec = dataclasses.replace(spec, negative=negative)
    with regional(pipe, spec, **call_kwargs(model, pipe)) as regions:
        kwargs = regions(seed=seed, **options, **(images or {}), **extra)
        with torch.inference_mode():
            image = pipe(**kwargs).images[0]
        height, width = regions.size
        grid = regions.grid(height, width)
        spec = regions.spec
    options |= {"height": height, "width": width}
    return image, spec, grid, {"command": "regional", "model": model, "spec": spec.as_dict(), "seed": seed, **options}


def true_cfg_options(pipe: Any, scale: float | None, field: str = "--true-cfg-scale") -> dict[str, Any]:
    """`true_cfg_scale` for the pipelines that guide against a negative prompt only with it (Flux.1, Qwen-Image);
    an error naming the option `field` on every other pipeline, which would ignore it."""
    if scale is None:
        return {}
    if not takes_true_cfg(pipe):
        raise AttnkitError(f"{field} applies to pipelines that take `true_cfg_scale` (Flux.1, Qwen-Image); "
                           f"{type(pipe).__name__} does not: set the guidance instead.")
    return {"true_cfg_scale": scale}


def _regional(args: argparse.Namespace) -> None:
    from ..models import load_pipeline
    from .outline import draw_outlines
    from .spec import load_spec

    spec = load_spec(args.spec)
    images = _init_images(args)
    pipe, strength = _image_pipeline(args, load_pipeline(args.model), images)
    options = _options(args, pipe) | strength | true_cfg_options(pipe, args.true_cfg_scale)
    image, spec, grid, record = regional_image(args.model, pipe, spec, args.seed, options, images)
    if images:
        record |= {"init_image": str(args.init_image),
                   "mask_image": None if args.mask_image is None else str(args.mask_image)}
    _save(image, args.out, record)
    if args.outline:
        _save(draw_outlines(image, spec, grid), args.out.with_suffix(".outline" + (args.out.suffix or ".png")),
              {"command": "regional-outline", "spec": spec.as_dict()})
