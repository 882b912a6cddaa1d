"""LTX-Video (`LTXVideoTransformer3DModel`, 0.9.x): every block runs a self-attention over the video tokens of all
frames (`attn1`, 3D rotary embeddings, no mask) and a cross-attention from the video tokens to the T5 text
(`attn2`), both with `LTXVideoAttnProcessor`, which calls `dispatch_attention_fn` once. The cross-attention gets the
text mask as an additive bias (0 / -10000 on padding keys), shape (batch, heads, 1, text tokens).

The text is T5's tokens of the prompt, eos, then pads up to `max_sequence_length` (128), the pads masked. The
pipeline packs the latent into tokens frame-major, then row-major (`_pack_latents`), and gives the transformer the
token grid as `num_frames`, `height` and `width` (latent frames, rows and cols; patch 1 in every 0.9 release). The
conditional and unconditional halves run as one batch ([uncond | cond]). With `output_type="latent"` the pipeline
returns the packed latents, (batch, tokens, channels), not a 5-d video latent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, SitePattern, TextInput


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    frames, height, width = (bound.get(name) for name in ("num_frames", "height", "width"))
    if frames is None or height is None or width is None:
        raise AttnkitError("the LTX-Video transformer was called without `num_frames`, `height` and `width` (e.g. "
                           "with `video_coords`, as LTXConditionPipeline does); attnkit reads the token grid from "
                           "them.")
    grid = Grid(int(frames), int(height), int(width))
    tokens = bound["hidden_states"].shape[1]
    if grid.tokens != tokens:  # a patch size above 1 (no 0.9 release has one) would give fewer tokens
        raise AttnkitError(f"the LTX-Video transformer got {tokens} video tokens for a {frames}x{height}x{width} "
                           "grid; attnkit does not know this layout.")
    return grid


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    return [(pipe.tokenizer, 0, text_tokens)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """Each prompt padded to `max_sequence_length` T5 tokens, with its mask: the transformer turns the joined mask
    into the cross-attention's key bias, so every prompt's padding stays masked in the joined text."""
    embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=max_sequence_length or 128)
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("T5", pipe.tokenizer, max_sequence_length or 128)]


FAMILY = Family(
    name="ltx",
    model="LTXVideoTransformer3DModel",
    processors=("LTXVideoAttnProcessor",),
    sites=(
        SitePattern(r"transformer_blocks\.(\d+)\.attn1", "blocks", "self"),
        SitePattern(r"transformer_blocks\.(\d+)\.attn2", "blocks", "cross"),
    ),
    order="text",  # no sequence holds both text and video tokens
    stride=1,  # patch 1: one latent pixel per token (the VAE compresses 32x)
    grid=_grid,
    streams=_streams,
    timestep_scale=1.0,  # the pipeline passes the scheduler's timesteps (0-1000) unchanged
    video=True,
    text=TextInput(_encode, {"prompt_embeds": 1, "prompt_attention_mask": 1}, _limits,
                   max_sequence_length=128, negative="always"),  # guidance 3 by default: CFG
)
