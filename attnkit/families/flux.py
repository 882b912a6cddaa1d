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


def conditioning(model: torch.nn.Module, bound: Mapping[str, Any], pooled: torch.Tensor) -> torch.Tensor:
    """The blocks' `temb` as the transformer makes it (timestep and guidance times 1000), with `pooled`."""
    dtype = bound["hidden_states"].dtype
    timestep = bound["timestep"].to(dtype) * 1000
    guidance = bound.get("guidance")
    if guidance is None:
        return model.time_text_embed(timestep, pooled)
    return model.time_text_embed(timestep, guidance.to(dtype) * 1000, pooled)


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
    conditioning=conditioning,
    # ConceptAttention's Flux code at 8c2709c (concept_attention/modified_double_stream_block.py, utils.py,
    # concept_attention_pipeline.py): each concept's first T5 token, a zero pooled vector for the concepts, the
    # prompt call's image outputs, softmax per layer and step; an existing image read with a zero pooled vector
    # and guidance 0.
    concept_defaults={"encoding": "first-token", "pooled": "zero", "image_outputs": "prompt", "combine": "softmax",
                      "image_pooled": "zero", "image_guidance": 0.0},
)
