"""`attnkit.kv.reference`: a new generation that keeps an existing image's layout and appearance through
self-attention, with no training.

The image's K/V are recorded by a reference pass with the same steps and guidance as the generation to come. Given
an `Inversion` of the image (`attnkit.kv.invert`), the pass regenerates the image from its inverted latents, as
MasaCtrl and StyleAligned edit real images (the generation then starts from the same latents). Without one, after
every step the pass's latents are put back to the reference image noised to the next timestep with one fixed noise,
so at each step the denoiser sees the reference as that step would see it (step 0 sees the noise itself, which the
reference at the first timestep nearly is). The generation then attends to those K/V at the same steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from PIL import Image

from ..errors import AttnkitError
from ..families import family_of
from ..session import Session
from ..sites import Site
from .control import Mode
from .inversion import Inversion, encode_image
from .methods import METHOD_OPTIONS
from .session import inject, record
from .store import KVStore

__all__ = ["record_image", "reference"]


def record_image(pipe: Any, image: Image.Image, store: KVStore | None = None, *, prompt: str = "", seed: int = 0,
                 sites_: Iterable[Site] | None = None, inversion: Inversion | None = None, method: str | None = None,
                 **call_kwargs: Any) -> KVStore:
    """The K/V `image` has at every selected site (or those of `method`, with its options in `call_kwargs`) and
    step of a `pipe` run with `call_kwargs` (steps, guidance, height, width, ...: those of the generation that will
    attend to them): the run regenerates `image` from its `inversion`, or is put back to it re-noised after every
    step."""
    store = KVStore() if store is None else store
    height, width = call_kwargs.setdefault("height", image.height), call_kwargs.setdefault("width", image.width)
    options = {name: call_kwargs.pop(name) for name in list(call_kwargs) if name in METHOD_OPTIONS}
    recording = record(pipe, store, sites_, method=method, **options)
    if inversion is not None:
        if call_kwargs.get("num_inference_steps", inversion.steps) != inversion.steps:
            raise AttnkitError(f"the inversion ran {inversion.steps} steps and the reference pass would run "
                               f"{call_kwargs['num_inference_steps']}: invert with the generation's steps.")
        with recording, torch.inference_mode():
            pipe(prompt=prompt, latents=inversion.latents, num_inference_steps=inversion.steps,
                 output_type="latent", **{k: v for k, v in call_kwargs.items() if k != "num_inference_steps"})
        return store
    pack = family_of(pipe).pack_latents
    with torch.inference_mode():
        clean = encode_image(pipe, image, height, width)
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)).to(clean)
        packed = (lambda x: pack(pipe, x)) if pack is not None else (lambda x: x)

        def back_to_reference(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            timesteps = pipeline.scheduler.timesteps
            if i + 1 < len(timesteps):
                tensors["latents"] = packed(_noised(pipeline.scheduler, clean, noise, timesteps[i + 1 : i + 2]))
            return tensors

        with recording:
            pipe(prompt=prompt, latents=packed(noise), generator=torch.Generator().manual_seed(seed),
                 callback_on_step_end=back_to_reference, callback_on_step_end_tensor_inputs=["latents"],
                 output_type="latent", **call_kwargs)
    return store


def reference(pipe: Any, reference: KVStore | Image.Image, mode: Mode | None = None, *,
              steps: tuple[int, int | None] | None = None, prompt: str = "", seed: int = 0,
              sites_: Iterable[Site] | None = None, inversion: Inversion | None = None, method: str | None = None,
              **call_kwargs: Any) -> Session:
    """A session in which `pipe` attends to `reference`: a store recorded from an earlier generation, or an image
    (recorded here by `record_image` with `prompt`, `seed`, `inversion` and `call_kwargs`, which must match the
    generation's steps and guidance); with `method` (and its options in `call_kwargs`), as that method does."""
    options = {name: call_kwargs.pop(name) for name in list(call_kwargs) if name in METHOD_OPTIONS}
    if isinstance(reference, Image.Image):
        reference = record_image(pipe, reference, prompt=prompt, seed=seed, sites_=sites_, inversion=inversion,
                                 method=method, **options, **call_kwargs)
    elif not isinstance(reference, KVStore):
        raise AttnkitError(f"reference must be a PIL image or an attnkit.kv.KVStore, got {type(reference).__name__}.")
    return inject(pipe, reference, mode, steps=steps, sites_=sites_, method=method, **options)


def _noised(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """`clean` noised to `timestep` the way `scheduler` noises (flow matching interpolates; others add noise)."""
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(clean, timestep, noise)
    return scheduler.add_noise(clean, noise, timestep)
