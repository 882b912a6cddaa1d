"""Stable Diffusion 3 and 3.5 (MMDiT): joint attention over [image | text] in every block, and in SD3.5's MMDiT-X
blocks a second, image-only attention (`attn2`). The text is 77 CLIP tokens (CLIP-L and CLIP-G side by side in the
channels) followed by the T5 tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import Family, Grid, SitePattern, TextInput


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    patch = int(model.config.patch_size)
    rows, cols = bound["hidden_states"].shape[-2:]
    return Grid(1, rows // patch, cols // patch)


def _conditioning(model: torch.nn.Module, bound: Mapping[str, Any], pooled: torch.Tensor) -> torch.Tensor:
    """The blocks' `temb` as the transformer makes it, with `pooled`."""
    return model.time_text_embed(bound["timestep"], pooled)


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    clip = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
    clip_length = min(clip.model_max_length, text_tokens)
    streams = [(clip, 0, clip_length)]
    # without T5 the pipeline pads the text with zero rows, which belong to no word
    t5 = getattr(pipe, "tokenizer_3", None) is not None and getattr(pipe, "text_encoder_3", None) is not None
    if t5 and text_tokens > clip_length:
        streams.append((pipe.tokenizer_3, clip_length, text_tokens - clip_length))
    return streams


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                              do_classifier_free_guidance=False,
                                              max_sequence_length=max_sequence_length)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    keeps = getattr(pipe, "tokenizer_max_length", 77)
    limits = [("CLIP", getattr(pipe, "tokenizer", None), keeps), ("CLIP-G", getattr(pipe, "tokenizer_2", None), keeps)]
    if getattr(pipe, "text_encoder_3", None) is not None:
        limits.append(("T5", getattr(pipe, "tokenizer_3", None), max_sequence_length))
    return limits


FAMILY = Family(
    name="sd3",
    model="SD3Transformer2DModel",
    processors=("JointAttnProcessor2_0",),
    sites=(SitePattern(r"transformer_blocks\.(\d+)\.attn", "joint", "joint"),
           SitePattern(r"transformer_blocks\.(\d+)\.attn2", "joint", "self2")),
    order="image",
    stride=lambda model: int(model.config.patch_size),
    grid=_grid,
    streams=_streams,
    text=TextInput(_encode, {"prompt_embeds": 1}, _limits, pooled=("pooled_prompt_embeds",),
                   max_sequence_length=256, fixed_tokens=lambda pipe: pipe.tokenizer_max_length),  # CLIP's, then T5's
    stream_blocks=(("transformer_blocks", "joint"),),
    conditioning=_conditioning,
    # ConceptAttention's SD3 code at db30c4d (concept_attention/sd3/dit_block.py, pipeline.py,
    # concept_attention_pipeline.py): the concepts joined into one prompt (CLIP start token kept), the prompt's
    # conditioning, the concept call's own image outputs, vectors averaged over steps and L2-normalised concepts.
    concept_defaults={"encoding": "joined", "pooled": "prompt", "image_outputs": "concepts", "combine": "vectors"},
)
