"""Facts about a loaded pipeline that features ask for, answered from its family's description and its own
`__call__`: which arguments it takes, what size it generates at and must be a multiple of, its img2img / inpaint
sibling on the same modules and its scheduler run backwards (for inversion); and one denoiser forward of the pipeline
on a latent of attnkit's choosing (an existing image's clean latent, or that latent noised to one step), which
observation methods read images with.

Region boxes and masks are fractions of the generated image, and an img2img or inpaint pipeline resizes its init
image to `height` x `width`; so with an init image the size comes from the image, and a different requested size is
an error instead of a silent resize.
"""

from __future__ import annotations

import inspect
from functools import cache, wraps
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import AttnkitError
from .families import call_parameters, denoiser_of, family_of

__all__ = ["call_parameters", "check_size", "clean_latent", "default_of", "default_size", "image_pipeline",
           "init_size", "inverse_scheduler", "output_size", "single_forward", "size_multiple", "takes_size",
           "takes_true_cfg"]


def takes_true_cfg(pipe: Any) -> bool:
    """Whether `pipe` guides against a negative prompt with `true_cfg_scale` (Flux.1, Qwen-Image)."""
    return "true_cfg_scale" in call_parameters(pipe)


def default_of(pipe: Any, name: str) -> Any:
    """The default of `pipe`'s call parameter `name` (e.g. an img2img pipeline's `strength`)."""
    return call_parameters(pipe)[name].default


def takes_size(pipe: Any) -> bool:
    """Whether `pipe(...)` takes `height` / `width`: SD1.x / SDXL img2img pipelines take the init image's size."""
    return "height" in call_parameters(pipe)


def size_multiple(pipe: Any) -> int:
    """What image sides must be multiples of for `pipe`: 8 on SD1.x/SDXL, the VAE factor times the patch size on
    SD3, twice the VAE factor on Flux (its pipeline would silently round other sizes down)."""
    return family_of(pipe).multiple_of(pipe)


def default_size(pipe: Any) -> int:
    """The image side in pixels `pipe` generates at when given no size, as its `__call__` computes it: from the
    default sample size, or the height its signature defaults to (Z-Image, AuraFlow)."""
    sample = getattr(pipe, "default_sample_size", None) or denoiser_of(pipe).config.get("sample_size")
    if sample is not None:
        return int(sample * pipe.vae_scale_factor)
    height = call_parameters(pipe).get("height")
    if height is None or not isinstance(height.default, int):
        raise AttnkitError(f"cannot tell the default image size of {type(pipe).__name__}: give --height and --width.")
    return height.default


def check_size(pipe: Any, height: int | None, width: int | None) -> None:
    """An AttnkitError naming the multiple when `pipe` cannot generate at `height` x `width` pixels."""
    multiple = size_multiple(pipe)
    for name, value in (("height", height), ("width", width)):
        if value is not None and value % multiple:
            raise AttnkitError(f"--{name} {value} is not a multiple of {multiple}, which this {type(pipe).__name__} "
                               f"needs; use e.g. --{name} {max(multiple, value // multiple * multiple)}.")


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


def output_size(pipe: Any, height: int | None, width: int | None, image: Any = None) -> tuple[int, int]:
    """(height, width) `pipe` generates at: the init image's when there is one, else the asked or default size."""
    if image is not None:
        return init_size(pipe, image, height, width)
    default = default_size(pipe)
    return height or default, width or default


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


def image_pipeline(pipe: Any, inpaint: bool = False, controlnet: Any = None) -> Any:
    """The img2img pipeline of `pipe`'s family on the same modules (inpaint with `inpaint`, ControlNet img2img with
    `controlnet`), so that attention sessions reach it; `pipe` itself when it already is the one asked for. The
    sibling keeps `pipe`'s progress-bar settings."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    if controlnet is None and ("Inpaint" if inpaint else "Img2Img") in type(pipe).__name__:
        return pipe
    auto = AutoPipelineForInpainting if inpaint else AutoPipelineForImage2Image
    extra = {} if controlnet is None else {"controlnet": controlnet}
    try:
        sibling = auto.from_pipe(pipe, **extra)
    except (ValueError, KeyError) as error:
        what = "inpaint" if inpaint else "ControlNet img2img" if controlnet is not None else "img2img"
        fix = "edit without a ControlNet." if controlnet is not None else "use another model."
        raise AttnkitError(f"diffusers has no {what} pipeline for {type(pipe).__name__} ({error}); {fix}") from error
    sibling.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))  # from_pipe drops it
    return sibling


def clean_latent(pipe: Any, image: Image.Image) -> torch.Tensor:
    """(1, channels, rows, cols): `image` (sides the pipeline takes) as x / 127.5 - 1, computed in the VAE's dtype
    (a float64 VAE reads exact pixels), encoded by the pipeline's VAE, the posterior mean (no sample drawn), shifted
    and scaled as the pipeline's latents are."""
    vae = getattr(pipe, "vae", None)
    config = getattr(vae, "config", {})
    if vae is None or config.get("scaling_factor") is None or config.get("latents_mean") is not None:
        raise AttnkitError(f"{type(pipe).__name__}'s VAE is not one whose latents attnkit reads (a scaling factor and "
                           "optional shift, as SD1.x, SDXL, SD3 and Flux have): read the image through the pipeline's "
                           "img2img variant instead.")
    weight = next(vae.parameters())
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float64)).permute(2, 0, 1)[None]
    pixels = (pixels / 127.5 - 1).to(weight.device, weight.dtype)
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    return (posterior.mean - (config.get("shift_factor") or 0.0)) * config["scaling_factor"]


def single_forward(pipe: Any, latent: torch.Tensor, prompt: str | None = "", *, timestep: float | None = None,
                   steps: int = 1, step: int = 0, noise: torch.Tensor | None = None,
                   call: dict[str, Any] | None = None) -> None:
    """Run `pipe` for exactly one denoiser forward, on `latent` ((1, channels, rows, cols), e.g. `clean_latent`'s)
    and unguided; attention sessions attached to `pipe` see it as step 0 of a run.

    The pipeline prepares everything else as it would for a generation of the latent's size (prompt embeddings,
    position ids, conditioning), so the forward is the pipeline's own; only its latent and timestep are replaced:
    the timestep is `timestep` (scheduler units, 0-1000) or, without one, that of step `step` of a `steps`-step run,
    and with `noise` the latent is noised to it first (flow matching: (1 - sigma) x + sigma noise; else the
    scheduler's `add_noise`). `call`: further keyword arguments of the pipeline (e.g. `max_sequence_length`)."""
    family = family_of(pipe)
    model = denoiser_of(pipe)
    signature = inspect.signature(type(model).forward)
    factor = int(pipe.vae_scale_factor)
    size = {"height": latent.shape[-2] * factor, "width": latent.shape[-1] * factor} if takes_size(pipe) else {}
    if not 0 <= step < steps:
        raise AttnkitError(f"step={step} is not a step of a {steps}-step run: give 0 to {steps - 1}.")
    forwards = 0
    scheduler = pipe.scheduler
    kept: list[torch.Tensor] = []  # the run's timesteps while the forward's own stands in them

    def substitute(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        nonlocal forwards
        forwards += 1
        if forwards > 1:
            return args, kwargs
        bound = signature.bind(module, *args, **kwargs)
        wanted = timestep if timestep is not None else float(scheduler.timesteps[step])
        if isinstance(scheduler.timesteps, torch.Tensor) and float(scheduler.timesteps[step]) != wanted:
            # for the forward only: sessions find the step of a scheduler that keeps no step count (DDIM, DDPM) by
            # its timestep, and schedulers that do count find their first step by the run's own
            kept.append(scheduler.timesteps)
            scheduler.timesteps = scheduler.timesteps.clone()
            scheduler.timesteps[step] = wanted
        given = bound.arguments.get(family.latent_argument)
        replaced = latent if noise is None else _noised(scheduler, latent, noise, step, wanted)
        replaced = family.pack_latents(pipe, replaced) if family.pack_latents is not None else replaced
        if not isinstance(given, torch.Tensor) or given.shape != replaced.shape:
            raise AttnkitError(f"{type(model).__name__} takes its latents in a form attnkit cannot replace "
                               f"(`{family.latent_argument}`): read the image through the pipeline's img2img variant "
                               "instead.")
        bound.arguments[family.latent_argument] = replaced.to(given.device, given.dtype)
        family.set_timestep(bound.arguments, wanted)
        read = family.scheduler_timestep(bound.arguments)
        if read is None or abs(float(torch.as_tensor(read).flatten()[0]) - wanted) > 1e-3 * max(1.0, wanted):
            raise AttnkitError(f"cannot run {type(model).__name__} at timestep {wanted}: its family does not say how "
                               "its forward takes a timestep.")
        return bound.args[1:], bound.kwargs

    def restore(*_: Any) -> None:
        if kept:
            scheduler.timesteps = kept.pop()

    def stop(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        pipeline._interrupt = True  # the loop skips every later step
        return tensors

    unguided = {"guidance_scale": 1.0} if family.guidance == "cfg" else {}  # else an embedding: left as is
    text = {} if prompt is None else {"prompt": prompt}
    handles = [model.register_forward_pre_hook(substitute, with_kwargs=True), model.register_forward_hook(restore)]
    try:
        with torch.no_grad():
            pipe(**text, num_inference_steps=steps, output_type="latent", callback_on_step_end=stop,
                 generator=torch.Generator().manual_seed(0), **{**unguided, **size, **(call or {})})
    finally:
        for handle in handles:
            handle.remove()
        restore()
    if forwards == 0:
        raise AttnkitError(f"{type(pipe).__name__} ran no denoiser forward.")


def _noised(scheduler: Any, latent: torch.Tensor, noise: torch.Tensor, step: int, timestep: float) -> torch.Tensor:
    """`latent` noised to step `step` (at `timestep`) of the scheduler's run."""
    if hasattr(scheduler, "scale_noise"):  # flow matching: sigmas run alongside the timesteps
        sigma = scheduler.sigmas[step].to(latent.device, latent.dtype)
        return (1 - sigma) * latent + sigma * noise.to(latent.device, latent.dtype)
    return scheduler.add_noise(latent, noise.to(latent.device, latent.dtype), torch.tensor([int(round(timestep))]))


def inverse_scheduler(pipe: Any) -> Any:
    """`pipe`'s scheduler run backwards, with its config: DDIM's inverse for a DDIM scheduler, flow matching's Euler
    steps from sigma 0 up for a flow-matching Euler scheduler; an error naming the fix for any other."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, FlowMatchEulerDiscreteScheduler

    scheduler = pipe.scheduler
    if type(scheduler) is DDIMScheduler:
        if scheduler.config.timestep_spacing not in ("leading", "trailing"):
            raise AttnkitError(
                f"DDIM runs backwards only with 'leading' or 'trailing' timesteps, and this scheduler spaces them "
                f"{scheduler.config.timestep_spacing!r}: set `pipe.scheduler = DDIMScheduler.from_config("
                "pipe.scheduler.config, timestep_spacing='trailing')`.")
        return DDIMInverseScheduler.from_config(_settings(scheduler, DDIMInverseScheduler))
    if type(scheduler) is FlowMatchEulerDiscreteScheduler and not scheduler.config.get("stochastic_sampling"):
        inverse = _flow_match_euler_inverse()
        return inverse.from_config(_settings(scheduler, inverse))
    raise AttnkitError(
        f"inversion runs DDIM's steps or flow matching's Euler steps backwards, and {type(pipe).__name__} samples "
        f"with {type(scheduler).__name__}: set `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)` "
        "for the inversion and for the runs that start from it.")


def _settings(scheduler: Any, inverse: type) -> dict[str, Any]:
    """`scheduler`'s settings that `inverse` takes, all as the run has them: `from_config` would drop those the
    config marks as defaults even where a pipeline has since changed them (SD's `steps_offset`)."""
    taken = inspect.signature(inverse.__init__).parameters
    return {name: value for name, value in scheduler.config.items() if name in taken}


@cache
def _flow_match_euler_inverse() -> type:
    from diffusers import FlowMatchEulerDiscreteScheduler

    class FlowMatchEulerInverseScheduler(FlowMatchEulerDiscreteScheduler):
        """The run's sigmas backwards, from 0 up to its first sigma: each Euler step adds the velocity at its start
        times the (now positive) difference of sigmas."""

        @wraps(FlowMatchEulerDiscreteScheduler.set_timesteps)  # pipelines read its parameters (`sigmas`, `mu`)
        def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
            super().set_timesteps(*args, **kwargs)
            self.sigmas = self.sigmas.flip(0)
            self.timesteps = (self.sigmas[:-1] * self.config.num_train_timesteps).to(self.timesteps.dtype)

    return FlowMatchEulerInverseScheduler
