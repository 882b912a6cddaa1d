"""CogView4 (`CogView4Transformer2DModel`): one kind of block, whose attention (`CogView4AttnProcessor`)
concatenates [text | image] and runs one `F.scaled_dot_product_attention` over the joint sequence (no mask from
the pipeline; image rotary embeddings only on the image part).

The text part is the GLM-4 encoding of [gMASK] <sop> + prompt, LEFT-padded by the pipeline with the pad token to a
multiple of 16 (`CogView4Pipeline._get_glm_embeds`); the pads are real, attended positions. Their count depends on
the prompt's token count, which an attention call cannot see, so the layout counts them as text; the word stream
below pads each prompt on the left the same way, so word positions are exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import Family, Grid, SitePattern, TextInput

_MAX_SEQUENCE_LENGTH = 1024  # the pipeline's default `max_sequence_length`


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    # CogView4PatchEmbed: (B, C, H, W) -> p x p patches, row-major (permute(0, 2, 4, ...)).
    _, _, height, width = bound["hidden_states"].shape
    patch = model.config.patch_size
    return Grid(1, height // patch, width // patch)


class _LeftPadded:
    """The pipeline's tokenizer, padding a prompt on the left as `CogView4Pipeline._get_glm_embeds` does: to the next
    multiple of 16 of its token count, or to `max_length` when that is longer. Alone, a prompt's text is its own
    multiple of 16; prompts encoded together (regional prompting) are all padded to the longest one's, and attnkit
    gives that segment length as `max_length`. For a plain trace attnkit gives the text length of the last forward
    (under CFG the negative prompt's, run after the prompt's): only a negative prompt longer than the prompt, in
    blocks of 16 tokens, would shift the prompt's positions."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, text: str, **kwargs: Any) -> Any:
        length = kwargs.pop("max_length", None) or 0
        kwargs.pop("truncation", None)
        tokens = len(self.tokenizer(text, max_length=_MAX_SEQUENCE_LENGTH, truncation=True)["input_ids"])
        padded = max(tokens + (16 - tokens % 16) % 16, length)
        return self.tokenizer(text, padding="max_length", max_length=padded, truncation=True, padding_side="left",
                              **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    return [(_LeftPadded(pipe.tokenizer), 0, text_tokens)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """All prompts in one call, as the pipeline encodes a batch: each left-padded to the longest one's multiple
    of 16, so every segment has the same length."""
    embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                   max_sequence_length=max_sequence_length or _MAX_SEQUENCE_LENGTH)
    return {"prompt_embeds": embeds}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("GLM", pipe.tokenizer, max_sequence_length or _MAX_SEQUENCE_LENGTH)]


FAMILY = Family(
    name="cogview4",
    model="CogView4Transformer2DModel",
    processors=("CogView4AttnProcessor",),
    sites=(SitePattern(r"transformer_blocks\.(\d+)\.attn1", "joint", "joint"),),
    order="text",
    stride=2,
    grid=_grid,
    streams=_streams,
    timestep_scale=1.0,  # the pipeline passes the scheduler's timesteps (0-1000) unchanged
    # CFG runs the prompt and the negative prompt ("" by default) as two forwards; their text lengths may differ.
    text=TextInput(_encode, {"prompt_embeds": 1}, _limits, max_sequence_length=_MAX_SEQUENCE_LENGTH,
                   negative="always"),
)
