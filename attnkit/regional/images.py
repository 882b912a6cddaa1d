"""Init images for regional img2img and inpainting: their size, and the img2img / inpaint pipeline to run them.

Region boxes and masks are fractions of the generated image, and an img2img or inpaint pipeline resizes its init image
to `height` x `width`; so the size comes from the init image, and a different requested size is an error instead of
a silent resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import AttnkitError
from ..models import call_parameters

__all__ = ["image_pipeline", "init_size", "read_image", "takes_size"]


def init_size(pipe: Any, image: Any, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels of the init `image` (a PIL image, an array (H, W, C), a tensor (C, H, W), batched or
    in a list, or latents as diffusers takes them); an error if a requested `height` / `width` differs."""
    sizes = sorted({_pixels(pipe, item) for item in (image if isinstance(image, (list, tuple)) else [image])})
    if len(sizes) != 1:
        raise AttnkitError(f"the init images differ in size ({', '.join(f'{h}x{w}' for h, w in sizes)}, height x "
                           "width); give images of one size.")
    size = sizes[0]
    for name, asked, got in (("height", height, size[0]), ("width", width, size[1])):
        if asked is not None and asked != got:
            raise AttnkitError(f"{name}={asked}, but the init image is {size[0]}x{size[1]} (height x width): the "
                               "size comes from the init image. Leave out height and width, or resize the image.")
    return size


def _pixels(pipe: Any, item: Any) -> tuple[int, int]:
    if isinstance(item, Image.Image):
        return item.height, item.width
    if isinstance(item, torch.Tensor) and item.ndim in (3, 4):
        # a tensor with the VAE's latent channels is taken as latents, as the pipelines' image processors take it
        scale = pipe.vae_scale_factor if item.shape[-3] == pipe.vae.config.latent_channels else 1
        return int(item.shape[-2]) * scale, int(item.shape[-1]) * scale
    if isinstance(item, np.ndarray) and item.ndim in (3, 4):
        return int(item.shape[-3]), int(item.shape[-2])
    raise AttnkitError(f"cannot tell the size of an init image of type {type(item).__name__} with shape "
                       f"{tuple(getattr(item, 'shape', ()))}: give a PIL image, an array (H, W, C), a tensor (C, H, W) "
                       "or a batch or list of them.")


def takes_size(pipe: Any) -> bool:
    """Whether `pipe(...)` takes `height` / `width`: SD1.x / SDXL img2img pipelines take the init image's size."""
    return "height" in call_parameters(pipe)


def image_pipeline(pipe: Any, inpaint: bool) -> Any:
    """The img2img (or inpaint) pipeline of `pipe`'s family on the same modules, so attention sessions reach it."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    auto = AutoPipelineForInpainting if inpaint else AutoPipelineForImage2Image
    try:
        sibling = auto.from_pipe(pipe)
    except (ValueError, KeyError) as error:
        raise AttnkitError(f"diffusers has no {'inpaint' if inpaint else 'img2img'} pipeline for "
                           f"{type(pipe).__name__} ({error}); use another model.") from error
    sibling.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))  # from_pipe drops it
    return sibling


def read_image(path: Path, option: str, mode: str) -> Image.Image:
    """The image at `path` in PIL `mode` ("RGB" for an init image, "L" for a mask); an error naming `option`."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except OSError as error:
        raise AttnkitError(f"cannot read {option} {path} ({error}); give a PNG or JPEG file.") from error
