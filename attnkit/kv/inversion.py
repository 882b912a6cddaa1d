"""Inversion: an existing image's latents taken back to the noise a run of the same pipeline starts from, so that
the run regenerates the image and an edit attending to it (MasaCtrl, StyleAligned) starts where the image does.

The pipeline runs its own loop on the image's clean latents with its scheduler's inverse
(`attnkit.pipeline.inverse_scheduler`): DDIM's (`DDIMInverseScheduler`, Song et al. 2021, as MasaCtrl's and
StyleAligned's code invert: the noise predicted at each step's destination timestep, from alpha[t - dt] to alpha[t])
for a pipeline with a DDIM scheduler, and the Euler steps of flow matching run backwards (the velocity at each step's
start, from sigma 0 up to the run's first sigma) for one with a flow-matching Euler scheduler (SD3, Flux). Any other
scheduler is refused: set the pipeline's scheduler to DDIM (`DDIMScheduler.from_config(pipe.scheduler.config)`) for
the inversion and the runs that start from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..families import family_of
from ..pipeline import inverse_scheduler

__all__ = ["Inversion", "encode_image", "invert"]


@dataclass(frozen=True)
class Inversion:
    """`latents`: the image's latents at the first timestep of a run of `steps` steps; `trajectory`: the clean
    latent, then the latents after each inversion step; all in the form the pipeline's `latents` argument takes
    (packed where it packs)."""

    latents: torch.Tensor
    trajectory: tuple[torch.Tensor, ...]
    steps: int


def encode_image(pipe: Any, image: Image.Image, height: int, width: int) -> torch.Tensor:
    """The image as the pipeline's clean latents: the VAE posterior's mean, scaled and shifted as its VAE says."""
    pixels = pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
    vae = pipe.vae
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def invert(pipe: Any, image: Image.Image, prompt: str = "", *, num_inference_steps: int = 50,
           guidance_scale: float | None = None, **call_kwargs: Any) -> Inversion:
    """`image` inverted with `pipe`'s own loop run backwards, conditioned on `prompt` at `guidance_scale` (default:
    unguided where `guidance_scale` is classifier-free guidance, the pipeline's own where it is an embedding;
    MasaCtrl inverts with the empty prompt, StyleAligned with the image's description at guidance 2). `call_kwargs`
    go to the pipeline (e.g. `max_sequence_length`); the image keeps its size."""
    if guidance_scale is None and family_of(pipe).guidance == "cfg":
        guidance_scale = 1.0
    if guidance_scale is not None:
        call_kwargs["guidance_scale"] = guidance_scale
    call_kwargs.setdefault("height", image.height)
    call_kwargs.setdefault("width", image.width)
    pack = family_of(pipe).pack_latents
    inverse = inverse_scheduler(pipe)
    trajectory: list[torch.Tensor] = []

    def keep(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        trajectory.append(tensors["latents"].clone())
        return tensors

    with torch.inference_mode():
        clean = encode_image(pipe, image, call_kwargs["height"], call_kwargs["width"])
        start = pack(pipe, clean) if pack is not None else clean
        forward, pipe.scheduler = pipe.scheduler, inverse
        try:
            noised = pipe(prompt=prompt, latents=start, num_inference_steps=num_inference_steps, output_type="latent",
                          callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"],
                          **call_kwargs).images
        finally:
            pipe.scheduler = forward
    return Inversion(noised, (start, *trajectory), num_inference_steps)
