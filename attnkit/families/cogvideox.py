"""CogVideoX (`CogVideoXTransformer3DModel`, 1.0 and 1.5): one kind of block, whose attention
(`CogVideoXAttnProcessor2_0`) concatenates [text | video] and runs one `F.scaled_dot_product_attention` over the
joint sequence (no mask from the pipeline; 3D rotary embeddings, when the release has them, only on the video part).

The text part is T5's encoding of the prompt, eos, then pads up to `max_sequence_length` (226): the pads are real,
attended positions, counted as text (their number depends on the prompt, which an attention call cannot see). The
video tokens are frame-major, then row-major within a frame (`CogVideoXPatchEmbed`; with 1.5's temporal patches of
`patch_size_t` latent frames, one token frame per patch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import Family, Grid, SitePattern, duplicated_latents


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    # hidden_states: (batch, latent frames, channels, height, width); the pipeline pads frames to a multiple of
    # patch_size_t (1.5), so the division is exact.
    _, frames, _, height, width = bound["hidden_states"].shape
    patch, patch_t = model.config.patch_size, model.config.patch_size_t
    return Grid(frames // patch_t if patch_t else frames, height // patch, width // patch)


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    return [(pipe.tokenizer, 0, text_tokens)]


FAMILY = Family(
    name="cogvideox",
    model="CogVideoXTransformer3DModel",
    processors=("CogVideoXAttnProcessor2_0",),
    sites=(SitePattern(r"transformer_blocks\.(\d+)\.attn1", "joint", "joint"),),
    order="text",
    stride=2,
    grid=_grid,
    streams=_streams,
    guided=duplicated_latents,  # CogVideoX keeps `do_classifier_free_guidance` in a local
    timestep_scale=1.0,  # the pipeline passes the scheduler's integer timesteps (0-999) unchanged
    video=True,
)
