"""Published K/V methods by name, each set up as its authors' code sets it up: which self-attention layers and steps,
whether the other image's keys and values replace the image's own or join them, and what is normalised first, with
the reference code's own parameter names and defaults.

- `masactrl` — MasaCtrl, mutual self-attention (Cao et al., ICCV 2023; github TencentARC/MasaCtrl, commit d0ba16bb,
  masactrl/masactrl.py `MutualSelfAttentionControl`): from step `start_step` (4) to `total_steps` (50), in the
  self-attention layers whose index in execution order is at least `start_layer` (10: SD1.5's up_blocks.2 and .3;
  SDXL counts its 70 transformer layers), the image's keys and values are replaced by the reference's. Given
  foreground masks `mask_s` (the reference's) and `mask_t` (the image's), it is the mask-guided variant
  (`MutualSelfAttentionControlMask`): the image's foreground queries see the reference's foreground only, its
  background queries the reference's background.
- `masactrl-union` — its union variant (`MutualSelfAttentionControlUnion`): the image attends to its own keys and
  values and the reference's together. (The class raises as published; this is what its code and comments intend.)
- `style-aligned` — StyleAligned, shared attention (Hertz et al., CVPR 2024; github google/style-aligned, commit
  2faf0af7, sa_handler.py): in every self-attention layer at every step the image's queries and keys are normalised
  to the reference's statistics over its tokens (AdaIN: `adain_queries`, `adain_keys`, `adain_values`), and the
  reference's keys (times `keys_scale`, its `shared_score_scale`) and values join the image's own; with
  `shared_group_norm` (its `share_group_norm`, on in its SD1 demo, off in its SDXL demo), every GroupNorm of the
  denoiser normalises the image over its own and the reference's features together.
- `kv-extend` — attnkit's own setting, not a published method: the reference's keys and values join the image's own
  at `attnkit.kv.default_sites` at every step.

Video (`attnkit.kv.edit_video`):
- `text2video-zero` — Text2Video-Zero's cross-frame attention (Khachatryan et al., ICCV 2023; diffusers'
  `CrossFrameAttnProcessor2_0`, set on the UNet and, in its ControlNet recipe, on the ControlNet): in every
  self-attention layer of the UNet and of the pipeline's ControlNet, at every step, each frame's keys and values are
  replaced by the first frame's.
- `rerender` — Rerender-A-Video's cross-frame attention (Yang et al., SIGGRAPH Asia 2023; github
  williamyang1991/Rerender_A_Video, commit dfaf9d88, src/controller.py): in the decoder's self-attention layers
  (without the widest with `loose_cfattn`), at the steps of `cross_period` (fractions of the run, inclusive), each
  frame's keys and values are replaced by the first and the previous frame's. Not reproduced: its optical-flow and
  pixel-aware fusion, its colour AdaIN of the predicted clean latent and its keyframe propagation.

The papers use UNets (SD1.5, SDXL), whose self-attention layers are image over image. On a transformer whose image
tokens attend to themselves in joint or single-stream attention (SD3, Flux and the other DiTs), each method is
adapted: it acts on those sites in execution order, on the image tokens only (text tokens keep their own keys and
values, and are not normalised). A model with no such site refuses every method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import AttnkitError
from ..families import denoiser_of, family_of
from ..sites import SiteList, sites
from ..state import StepRange
from .control import Mode
from .defaults import VIDEO_METHODS
from .places import IMAGE_KINDS, default_sites

__all__ = ["METHODS", "METHOD_OPTIONS", "Method", "Setup", "VIDEO_METHODS", "setup"]


@dataclass(frozen=True)
class Setup:
    """How a method runs on one pipeline: its sites, how loaded keys and values are used, and when."""

    sites: SiteList
    mode: Mode
    steps: StepRange = (0, None)
    when: Callable[[int, int | None], bool] | None = None
    adain: tuple[str, ...] = ()
    keys_scale: float = 1.0
    group_norms: bool = False
    foreground: tuple[Any, Any] | None = None
    attend: str | None = None  # video: the stored frames each later frame attends to


@dataclass(frozen=True)
class Method:
    """A published method: its parameters (the reference code's names, with its defaults) and how it is set up."""

    name: str
    parameters: Mapping[str, Any]
    configure: Callable[[Any, dict[str, Any]], Setup]
    video: bool = False
    adapted: str = field(default="image tokens of joint and single-stream attention on transformers")


def image_sites(pipe: Any) -> SiteList:
    """The denoiser's sites where image tokens attend to image tokens, in execution order; an error where none."""
    found = SiteList(site for site in sites(pipe) if site.kind in IMAGE_KINDS)
    if not found:
        raise AttnkitError(f"{type(pipe).__name__} has no site where image tokens attend to image tokens (kinds "
                           f"{', '.join(IMAGE_KINDS)}), so no K/V method has keys and values to share there.")
    return found


def _whole(parameters: dict[str, Any], name: str, low: int = 0) -> int:
    value = parameters[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise AttnkitError(f"{name}={value!r}: give a whole number of at least {low}.")
    return value


def _flag(parameters: dict[str, Any], name: str) -> bool:
    if not isinstance(parameters[name], bool):
        raise AttnkitError(f"{name}={parameters[name]!r}: give True or False.")
    return parameters[name]


def _masactrl(mode: Mode) -> Callable[[Any, dict[str, Any]], Setup]:
    def configure(pipe: Any, parameters: dict[str, Any]) -> Setup:
        start_step, start_layer = _whole(parameters, "start_step"), _whole(parameters, "start_layer")
        total_steps = _whole(parameters, "total_steps", start_step + 1)
        layers = image_sites(pipe)
        if start_layer >= len(layers):
            raise AttnkitError(f"start_layer={start_layer} leaves no layer: {type(pipe).__name__} has {len(layers)} "
                               f"self-attention layers (0 to {len(layers) - 1} in execution order).")
        masks = parameters.get("mask_s"), parameters.get("mask_t")
        if (masks[0] is None) != (masks[1] is None):
            raise AttnkitError("mask-guided MasaCtrl needs both foreground masks: mask_s (the reference's) and mask_t "
                               "(this image's); give both, or neither for plain MasaCtrl.")
        return Setup(SiteList(layers[start_layer:]), mode, steps=(start_step, total_steps),
                     foreground=None if masks[0] is None else masks)

    return configure


def _style_aligned(pipe: Any, parameters: dict[str, Any]) -> Setup:
    adain = tuple(part for part in ("queries", "keys", "values") if _flag(parameters, f"adain_{part}"))
    scale = parameters["keys_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise AttnkitError(f"keys_scale={scale!r}: give a finite number above 0 (1: the reference's keys as they "
                           "are).")
    shared = _flag(parameters, "shared_group_norm")
    if shared and not any(isinstance(module, torch.nn.GroupNorm) for module in denoiser_of(pipe).modules()):
        raise AttnkitError(f"shared_group_norm=True: {type(denoiser_of(pipe)).__name__} has no GroupNorm layers to "
                           "share (transformers normalise per token); leave it False there.")
    return Setup(image_sites(pipe), "extend", adain=adain, keys_scale=float(scale), group_norms=shared)


def _kv_extend(pipe: Any, parameters: dict[str, Any]) -> Setup:
    return Setup(default_sites(pipe), "extend")


def _text2video_zero(pipe: Any, parameters: dict[str, Any]) -> Setup:
    chosen = list(image_sites(pipe))
    if getattr(pipe, "controlnet", None) is not None:
        chosen += sites(pipe, component="controlnet").select(kind="self")
    return Setup(SiteList(chosen), "replace", attend="first")


def _rerender(pipe: Any, parameters: dict[str, Any]) -> Setup:
    period = parameters["cross_period"]
    if (not isinstance(period, (tuple, list)) or len(period) != 2
            or not all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in period) or period[0] > period[1]):
        raise AttnkitError(f"cross_period={period!r}: give (start, end), fractions of the run with 0 <= start <= end "
                           "<= 1 (Rerender-A-Video's default: (0, 1), every step).")
    decoder = family_of(pipe).decoder
    if decoder is None:
        raise AttnkitError(f"Rerender-A-Video's cross-frame attention lives in a UNet decoder's self-attention; "
                           f"{type(pipe).__name__} has no decoder stage. Use method 'text2video-zero' there.")
    layers = sites(pipe).select(kind="self", block=decoder)
    if _flag(parameters, "loose_cfattn"):  # its channel threshold leaves out the widest decoder layers
        widest = max(site.heads * site.head_dim for site in layers)
        layers = layers.select(where=lambda site: site.heads * site.head_dim < widest)
    start, end = (float(p) for p in period)

    def within(step: int, steps: int | None) -> bool:
        return steps is None or steps * start <= step <= steps * end

    return Setup(layers, "replace", when=within, attend="first+previous")


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("masactrl", {"start_step": 4, "start_layer": 10, "total_steps": 50, "mask_s": None, "mask_t": None},
           _masactrl("replace")),
    Method("masactrl-union", {"start_step": 4, "start_layer": 10, "total_steps": 50}, _masactrl("extend")),
    Method("style-aligned", {"adain_queries": True, "adain_keys": True, "adain_values": False,
                             "shared_group_norm": False, "keys_scale": 1.0}, _style_aligned),
    Method("kv-extend", {}, _kv_extend),
    Method("text2video-zero", {}, _text2video_zero, video=True),
    Method("rerender", {"cross_period": (0.0, 1.0), "loose_cfattn": False}, _rerender, video=True),
)}
#: Every method's option names: what `edit_video` takes out of the keyword arguments it gives the pipeline.
METHOD_OPTIONS: frozenset[str] = frozenset(name for method in METHODS.values() for name in method.parameters)


def setup(pipe: Any, name: str, options: Mapping[str, Any], video: bool) -> Setup:
    """Method `name` set up on `pipe` with `options` (its parameters; the rest keep their defaults); an error for an
    unknown method, one of the other kind (image or video), or an option the method does not take."""
    kind = "video" if video else "image"
    if name not in METHODS or METHODS[name].video != video:
        names = ", ".join(n for n, m in METHODS.items() if m.video == video)
        other = " (a video method: `attnkit.kv.edit_video` takes it)" if name in VIDEO_METHODS else (
            " (an image method: `attnkit.kv.inject` and `record` take it)" if name in METHODS else "")
        raise AttnkitError(f"method={name!r}{other}: the {kind} methods are {names}.")
    method = METHODS[name]
    unknown = sorted(set(options) - set(method.parameters))
    if unknown:
        owners = {option: [n for n, m in METHODS.items() if option in m.parameters] for option in unknown}
        said = "; ".join(f"{option} is an option of {', '.join(found)}" if found else f"{option} is no method's option"
                         for option, found in owners.items())
        takes = ", ".join(method.parameters) or "no options"
        raise AttnkitError(f"method {name!r} takes {takes}; {said}.")
    return method.configure(pipe, {**method.parameters, **options})
