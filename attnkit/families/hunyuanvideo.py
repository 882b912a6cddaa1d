"""HunyuanVideo: a text token refiner (self-attention over the text alone), then double-stream blocks with joint
attention over [video | text], then single-stream blocks over the same sequence.

Video tokens come first, frame-major then row-major (a 1x2x2 Conv3d patch embedding, flattened); the text is the
Llama tokens of the templated prompt after the pipeline drops the template's 95-token prefix (`crop_start`): the
prompt's tokens, `<|eot_id|>`, then padding up to `max_sequence_length` (256). The joint and single-stream calls
(`HunyuanVideoAttnProcessor2_0`, one `dispatch_attention_fn` call) get a boolean key mask of shape
(batch, 1, 1, video + text) that hides the text padding: the transformer keeps the first `sum(encoder_attention_mask)`
text tokens of each prompt. The refiner's calls (the stock `AttnProcessor2_0`, one `F.scaled_dot_product_attention`
call) are text over text (kind "text") with a (batch, 1, text, text) boolean mask. The pipeline passes the scheduler's timestep (0-1000) unscaled, and the guidance scale x 1000.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, SitePattern


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    latents = bound.get("hidden_states")
    if latents is None or latents.ndim != 5:
        raise AttnkitError("the HunyuanVideo transformer was called without 5-d latents `hidden_states` (batch, "
                           "channels, frames, height, width); attnkit reads the token grid from them.")
    patch, patch_t = model.config.patch_size, model.config.patch_size_t
    return Grid(latents.shape[2] // patch_t, latents.shape[3] // patch, latents.shape[4] // patch)


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    """The transformer's text starts with the prompt's first token: the pipeline tokenizes the templated prompt and
    drops the template's prefix, which ends with "\\n\\n", so the prompt's tokens are those of a plain tokenizer call
    without its begin-of-text token (at position -1)."""
    return [(pipe.tokenizer, -1, text_tokens + 1)]


FAMILY = Family(
    name="hunyuanvideo",
    model="HunyuanVideoTransformer3DModel",
    processors=("HunyuanVideoAttnProcessor2_0", "AttnProcessor2_0"),
    sites=(SitePattern(r"context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.attn", "refiner", "text"),
           SitePattern(r"transformer_blocks\.(\d+)\.attn", "double", "joint"),
           SitePattern(r"single_transformer_blocks\.(\d+)\.attn", "single", "single")),
    order="image",
    stride=2,
    grid=_grid,
    streams=_streams,
    timestep_scale=1.0,
    video=True,
    guidance="embedded",  # the guidance scale x 1000 goes in as an embedding; no CFG batch
    # `text` not described: the transformer keeps the first sum(mask) text tokens of each prompt, so the text of
    # several prompts cannot be joined with their padding inside
)
