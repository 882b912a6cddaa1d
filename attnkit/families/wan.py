"""Wan 2.1 / 2.2 text-to-video (`WanTransformer3DModel`): every block runs a self-attention over the video tokens of
all frames (`attn1`, 3D rotary embeddings) and a cross-attention from the video tokens to the text (`attn2`), both
with `WanAttnProcessor`, which calls `dispatch_attention_fn` once (text-to-video; image-to-video releases add a
second call over the image-encoder tokens, which the T2V release does not have) with no mask.

The text part is UMT5's encoding of the prompt (eos included), then zero embeddings up to `max_sequence_length`
(512): the pipeline zeroes the pads' embeddings instead of masking them, and the transformer's text projection makes
them real, attended keys, counted as text. The video tokens come from a (1, 2, 2) `Conv3d` patch embedding,
flattened frame-major, then row-major. `WanPipeline` runs the conditional and unconditional forwards one after the
other (batch 1 each), not as one batch. The pipeline cleans the prompt (ftfy, HTML unescape, whitespace collapsed)
before tokenizing, which keeps the word positions of a plain `tokenizer(prompt)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import Family, Grid, SitePattern, TextInput


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    # hidden_states: (batch, channels, latent frames, height, width); the pipeline sizes the latent to a multiple
    # of the patch, so the divisions are exact.
    _, _, frames, height, width = bound["hidden_states"].shape
    patch_t, patch_h, patch_w = model.config.patch_size
    return Grid(frames // patch_t, height // patch_h, width // patch_w)


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    return [(pipe.tokenizer, 0, text_tokens)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """Each prompt zero-padded to `max_sequence_length` UMT5 tokens (no mask: the pads are attended as the pipeline
    attends them for one prompt)."""
    embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                   max_sequence_length=max_sequence_length or 512)
    return {"prompt_embeds": embeds}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("UMT5", pipe.tokenizer, max_sequence_length or 512)]


FAMILY = Family(
    name="wan",
    model="WanTransformer3DModel",
    processors=("WanAttnProcessor",),
    sites=(
        SitePattern(r"blocks\.(\d+)\.attn1", "blocks", "self"),
        SitePattern(r"blocks\.(\d+)\.attn2", "blocks", "cross"),
    ),
    order="text",  # no sequence holds both text and video tokens
    stride=2,  # spatial patch of every Wan release
    grid=_grid,
    streams=_streams,
    timestep_scale=1.0,  # the pipeline passes the scheduler's timesteps (0-1000) unchanged
    video=True,
    text=TextInput(_encode, {"prompt_embeds": 1}, _limits, max_sequence_length=512,
                   negative="always"),  # guidance 5.0 by default, negative prompt "" when none is given
)
