"""FLUX.1 (dev, schnell and their fine-tunes): double-stream blocks with joint [text | image] attention, then
single-stream blocks over the same sequence. The pipeline packs 2x2 latent pixels into one token, and passes the
transformer the timestep / 1000."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, SitePattern, TextInput


def img_ids_grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    """The token grid from the (row, column) position ids of the image tokens, as Flux-layout models take them."""
    ids = bound.get("img_ids")
    if ids is None:
        raise AttnkitError(f"the {type(model).__name__} was called without `img_ids`; attnkit reads the token grid "
                           "from them.")
    ids = ids.reshape(-1, ids.shape[-1])
    return Grid(1, int(ids[:, 1].max() - ids[:, 1].min()) + 1, int(ids[:, 2].max() - ids[:, 2].min()) + 1)


def pack_latents(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """(batch, channels, rows, cols) latents as Flux-layout pipelines take them: 2x2 latent pixels per token."""
    return type(pipe)._pack_latents(latents, *latents.shape)


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    """Flux's transformer sees T5 tokens only (CLIP gives just the pooled embedding)."""
    return [(pipe.tokenizer_2, 0, text_tokens)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=max_sequence_length)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("CLIP", pipe.tokenizer, getattr(pipe, "tokenizer_max_length", 77)),
            ("T5", pipe.tokenizer_2, max_sequence_length)]


FAMILY = Family(
    name="flux",
    model="FluxTransformer2DModel",
    processors=("FluxAttnProcessor", "FluxAttnProcessor2_0"),
    sites=(SitePattern(r"transformer_blocks\.(\d+)\.attn", "joint", "joint"),
           SitePattern(r"single_transformer_blocks\.(\d+)\.attn", "single", "single")),
    order="text",
    stride=2,
    grid=img_ids_grid,
    streams=_streams,
    timestep_scale=1000.0,
    guidance="embedded",  # guidance-distilled: classifier-free guidance is `true_cfg_scale` against a negative
    text=TextInput(_encode, {"prompt_embeds": 1}, _limits, pooled=("pooled_prompt_embeds",),
                   max_sequence_length=512, negative="given"),
    pack_latents=pack_latents,
    stream_blocks=(("transformer_blocks", "joint"), ("single_transformer_blocks", "single")),
)
