"""AuraFlow (`AuraFlowTransformer2DModel`): MMDiT blocks (`joint_transformer_blocks.N.attn`, separate text and
image projections, one attention over both) followed by single-stream Family blocks
(`single_transformer_blocks.N.attn`, over the already concatenated sequence). Both run `AuraFlowAttnProcessor2_0`,
which calls `F.scaled_dot_product_attention` once, with no mask.

Token order, in both kinds: [8 register tokens | text | image]. The transformer prepends its 8 learned
`register_tokens` to the projected text before the first block; the joint processor concatenates
[text stream, image stream] and the single blocks run on `cat([text stream, image stream])`. Image tokens are
row-major patches (`AuraFlowPatchEmbed`). The text is the UMT5 encoding of the prompt padded to
`max_sequence_length` (256), padding embeddings zeroed but attended (no mask). Registers are reported as "pad";
text positions count from the first token after them, so a prompt's k-th T5 token is at text position k.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import Family, Grid, Kind, Parts, SitePattern, TextInput

#: `AuraFlowTransformer2DModel.register_tokens` has 8 tokens in every release (hard-coded in the class).
REGISTER_TOKENS = 8


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    height, width = bound["hidden_states"].shape[-2:]
    patch = int(model.config.patch_size)
    return Grid(1, height // patch, width // patch)


def _layout(family: Family, kind: Kind, queries: int, keys: int, grid: Grid,
            text_tokens: int | None) -> tuple[Parts, Parts]:
    registers = REGISTER_TOKENS if text_tokens is None else queries - grid.tokens - text_tokens
    sequence = (("pad", registers), ("text", queries - grid.tokens - registers), ("image", grid.tokens))
    return sequence, sequence


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    return [(pipe.tokenizer, 0, text_tokens)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """`encode_prompt` pads every prompt to `max_sequence_length` and returns a mask the pipeline only checks (it
    is the token mask expanded over the embedding width and flattened, (batch, tokens * width): joined along axis
    1 it stays the concatenation of the prompts' masks); the transformer gets no mask."""
    embeds, mask, _, _ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=max_sequence_length or 256)
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("UMT5", pipe.tokenizer, max_sequence_length or 256)]


FAMILY = Family(
    name="auraflow",
    model="AuraFlowTransformer2DModel",
    processors=("AuraFlowAttnProcessor2_0",),
    sites=(
        SitePattern(r"joint_transformer_blocks\.(\d+)\.attn", "joint", "joint"),
        SitePattern(r"single_transformer_blocks\.(\d+)\.attn", "single", "single"),
    ),
    order="text",
    stride=2,  # patch size of every AuraFlow release
    grid=_grid,
    streams=_streams,
    layout=_layout,
    guided=lambda pipe, bound: pipe.guidance_scale > 1,  # as its `__call__` decides, in a local
    timestep_scale=1000.0,  # the pipeline passes t / 1000
    text=TextInput(_encode, {"prompt_embeds": 1, "prompt_attention_mask": 1}, _limits,
                   max_sequence_length=256, negative="always"),  # guidance 3.5 by default: CFG
)
