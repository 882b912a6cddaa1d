"""The diffusers UNet (`UNet2DConditionModel`) of SD1.x, SD2 and SDXL: transformer blocks inside its down, mid and up
blocks, each with a self-attention over the image tokens (`attn1`) and a cross-attention from the image tokens to the
text (`attn2`).

Each block sees the latent at its own resolution: every down-sampling convolution halves it (rounding odd sides up),
every up-sampling one doubles it back, so sites of different blocks have different token grids (`multiscale`). The
text is CLIP's 77 tokens (SDXL: CLIP-L and CLIP-G side by side in the channels). attnkit replays the stock
`AttnProcessor2_0` and `AttnProcessor` step for step (`attnkit.processors.unet`) instead of running their code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, SitePattern, TextInput


def kind_of(module: torch.nn.Module) -> str:
    return "cross" if getattr(module, "is_cross_attention", False) else "self"


def latent_grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    """The latent itself: the UNet's own grid is one latent pixel per cell (`stride` 1); its sites' are coarser."""
    sample = bound.get("sample", bound.get("hidden_states"))
    return Grid(1, int(sample.shape[-2]), int(sample.shape[-1]))


def block_strides(model: torch.nn.Module) -> dict[str, int]:
    """Token stride per block, found by walking the down- and up-samplers in execution order (a ControlNet has the
    down and mid blocks only)."""
    strides: dict[str, int] = {}
    stride = 1
    for i, block in enumerate(model.down_blocks):
        strides[f"down.{i}"] = stride
        if getattr(block, "downsamplers", None):
            stride *= 2
    strides["mid.0"] = stride
    for i, block in enumerate(getattr(model, "up_blocks", ())):
        strides[f"up.{i}"] = stride
        if getattr(block, "upsamplers", None):
            stride //= 2
    return strides


def streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    """CLIP's tokens, begin-of-text first (SDXL's two tokenizers split a prompt alike: either labels it)."""
    tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    if tokenizer is None:
        raise AttnkitError(f"{type(pipe).__name__} has no tokenizer or tokenizer_2, so attnkit cannot tell which "
                           "token is which word. Use the raw maps (`trace.total`) instead of words.")
    return [(tokenizer, 0, text_tokens)]


#: How a user gives sites of a UNet (or of its ControlNet) back the stock processors attnkit replays.
RESTORE = ("call `{denoiser}.set_attn_processor(AttnProcessor2_0())` or `{denoiser}.set_default_attn_processor()`")


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    encoded = pipe.encode_prompt(prompt=prompts, device=pipe._execution_device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
    pooled = encoded[2] if len(encoded) == 4 else None  # SDXL also returns pooled embeddings
    return {"prompt_embeds": encoded[0], "pooled_prompt_embeds": pooled}


def _zeros_without_negative(pipe: Any) -> bool:
    """SDXL pipelines (`force_zeros_for_empty_prompt`, on in every release) guide against zero embeddings when given
    no negative prompt; SD1.x and SD2 against the empty prompt."""
    return bool(pipe.config.get("force_zeros_for_empty_prompt", False))


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("CLIP", getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_max_length", 77)),
            ("CLIP-G", getattr(pipe, "tokenizer_2", None), 77)]


FAMILY = Family(
    name="unet",
    model="UNet2DConditionModel",
    processors=("AttnProcessor2_0", "AttnProcessor"),
    sites=(SitePattern(r"down_blocks\.(\d+)\..+", "down", kind_of),
           SitePattern(r"mid_block\..+", "mid", kind_of),
           SitePattern(r"up_blocks\.(\d+)\..+", "up", kind_of)),
    stride=1,
    grid=latent_grid,
    streams=streams,
    block_stride=block_strides,
    multiscale=True,
    decoder="up",
    encoder="down",
    latent_argument="sample",
    text=TextInput(_encode, {"prompt_embeds": 1}, _limits, pooled=("pooled_prompt_embeds",),
                   zeros_without_negative=_zeros_without_negative),
    replay=True,
    restore=RESTORE,
    size_multiple=lambda pipe: math.lcm(8, int(getattr(pipe, "vae_scale_factor", 8))),
)
