"""Plain generation and regional prompting as the command line, the web app and batch jobs run them: a loaded
pipeline, checked sampling options, and the image written as PNG with what made it in its `attnkit` text chunk, so
that an image carries its prompt or region spec."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AttnkitError
from ..files import read_image, save_png
from ..pipeline import check_size, default_of, image_pipeline, takes_true_cfg
from .models import call_kwargs, guidance_kwargs

if TYPE_CHECKING:
    from PIL import Image

    from ..regional.spec import RegionSpec

__all__ = ["Generated", "InitImages", "Regional", "generate", "init_images", "regional", "sampling_options",
           "true_cfg_options", "with_lora_files"]


@dataclass
class Generated:
    """One generated image, the record its PNG carries, and the files written (none unless an output was given)."""

    image: Image.Image
    record: dict[str, Any]
    files: list[Path] = field(default_factory=list)


@dataclass
class Regional(Generated):
    """A regional image, with the spec it ran (the masks a first pass found for `from_word` regions included) and
    the token grid its regions were laid on."""

    spec: RegionSpec | None = None
    grid: tuple[int, int] | None = None


def sampling_options(model: str, pipe: Any, steps: int, height: int | None, width: int | None,
                     guidance: float | None) -> dict[str, Any]:
    """The pipeline arguments of the generation options, checked: every front end samples and records alike."""
    check_size(pipe, height, width)
    return {"num_inference_steps": steps, "height": height, "width": width} | guidance_kwargs(model, pipe, guidance)


def true_cfg_options(pipe: Any, scale: float | None, field: str = "--true-cfg-scale") -> dict[str, Any]:
    """`true_cfg_scale` for the pipelines that guide against a negative prompt only with it (Flux.1, Qwen-Image);
    an error naming the option `field` on every other pipeline, which would ignore it."""
    if scale is None:
        return {}
    if not takes_true_cfg(pipe):
        raise AttnkitError(f"{field} applies to pipelines that take `true_cfg_scale` (Flux.1, Qwen-Image); "
                           f"{type(pipe).__name__} does not: set the guidance instead.")
    return {"true_cfg_scale": scale}


def _written(result: Generated, out: Path | None) -> Generated:
    if out is not None:
        save_png(result.image, out, result.record)
        result.files.append(out)
    return result


def generate(model: str, pipe: Any, prompt: str, seed: int, options: dict[str, Any], out: Path | None = None,
             **extra: Any) -> Generated:
    """The image of `attnkit generate` and the record its PNG carries (written to `out` if given); `extra` (e.g.
    `callback_on_step_end`) goes to the pipeline only."""
    import torch

    options = options | call_kwargs(model, pipe)
    with torch.inference_mode():
        image = pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **options, **extra).images[0]
    record = {"command": "generate", "model": model, "prompt": prompt, "seed": seed, **options}
    return _written(Generated(image, record), out)


@dataclass(frozen=True)
class InitImages:
    """An init image (and inpaint mask) as pipeline arguments, and the files they came from, for the record."""

    arguments: dict[str, Any]
    record: dict[str, str | None]

    @property
    def inpaint(self) -> bool:
        return "mask_image" in self.arguments


def init_images(init_image: Path | None, mask_image: Path | None = None, strength: float | None = None
                ) -> InitImages | None:
    """`--init-image` (and `--mask-image`) read, so that a bad file fails before the model loads; None without
    them; an error for a mask or a strength without an init image."""
    for option, value in (("--mask-image", mask_image), ("--strength", strength)):
        if value is not None and init_image is None:
            raise AttnkitError(f"{option} needs --init-image: it applies to img2img and inpainting, which start from "
                               f"that image. Add --init-image, or leave out {option}.")
    if init_image is None:
        return None
    arguments = {"image": read_image(init_image, "--init-image", "RGB")}
    if mask_image is not None:
        arguments["mask_image"] = read_image(mask_image, "--mask-image", "L")
    return InitImages(arguments, {"init_image": str(init_image),
                                  "mask_image": None if mask_image is None else str(mask_image)})


def with_lora_files(spec: RegionSpec, files: Iterable[tuple[str, str]]) -> RegionSpec:
    """`spec` with LoRA files given beside it (`--lora NAME=PATH`, read from the working folder) added to its
    `loras`; a name the spec already maps to a file is an error."""
    files = {name: str(Path(path).resolve()) for name, path in files}
    missing = [f"{name}={path}" for name, path in files.items() if not Path(path).is_file()]
    if missing:
        raise AttnkitError(f"--lora {', '.join(missing)}: no such file; give NAME=PATH of a LoRA file.")
    clashing = sorted(set(files) & set(spec.loras or {}))
    if clashing:
        raise AttnkitError(f"LoRA {clashing} is given a file both in the spec's `loras` and with --lora; give it in one "
                           "place.")
    return dataclasses.replace(spec, loras={**(spec.loras or {}), **files}) if files else spec


def regional(model: str, pipe: Any, spec: RegionSpec, seed: int, options: dict[str, Any],
             images: InitImages | None = None, strength: float | None = None, out: Path | None = None,
             outline: bool = False, **extra: Any) -> Regional:
    """The image of `attnkit regional`: `spec` on `pipe`, or with init `images` on its img2img (inpaint with a
    mask) sibling at `strength` (default: the pipeline's); regions found from words first (`word_regions`). The PNG
    (written to `out` if given; with `outline`, also the image with region borders beside it) records the spec it
    ran; `extra` (e.g. `callback_on_step_end`) goes to the pipeline only."""
    import torch

    from ..regional import regional as regional_session
    from .words import word_regions

    options = dict(options)
    arguments = {} if images is None else images.arguments
    if images is not None:
        pipe = image_pipeline(pipe, inpaint=images.inpaint)
        options["strength"] = default_of(pipe, "strength") if strength is None else strength
    negative = options.pop("negative_prompt", None)  # true CFG: the spec's negatives, else this one
    if negative is not None and not spec.negatives_given:
        spec = dataclasses.replace(spec, negative=negative)
    regional_options = call_kwargs(model, pipe)
    spec = word_regions(pipe, spec, generator=torch.Generator().manual_seed(seed), **regional_options, **options,
                        **arguments)
    with regional_session(pipe, spec, **regional_options) as regions:
        kwargs = regions(seed=seed, **options, **arguments, **extra)
        with torch.inference_mode():
            image = pipe(**kwargs).images[0]
        height, width = regions.size
        grid = regions.grid(height, width)
    options |= {"height": height, "width": width}
    record = {"command": "regional", "model": model, "spec": spec.as_dict(), "seed": seed, **options,
              **({} if images is None else images.record)}
    result = _written(Regional(image, record, spec=spec, grid=grid), out)
    if out is not None and outline:
        from ..regional.outline import draw_outlines

        path = out.with_suffix(".outline" + (out.suffix or ".png"))
        save_png(draw_outlines(image, spec, grid), path, {"command": "regional-outline", "spec": spec.as_dict()})
        result.files.append(path)
    return result
