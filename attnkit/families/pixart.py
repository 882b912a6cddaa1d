"""PixArt-alpha / PixArt-Sigma (`PixArtTransformer2DModel`): every block has an image self-attention (`attn1`) and
a cross-attention from image queries to the T5 text (`attn2`), both run by `AttnProcessor2_0`, which calls
`F.scaled_dot_product_attention` once. The cross-attention gets the text attention mask as an additive bias
(0 / -10000 on padding keys), shape (batch, heads, 1, text tokens); self-attention gets no mask.

The text is the T5 tokens of the prompt padded to `max_sequence_length` (300 for Sigma, 120 for alpha), eos
included. Before tokenizing, the pipeline lower-cases and strips the prompt (`_text_preprocessing` with
`clean_caption=False`, which is also what `clean_caption=True` falls back to without `bs4` and `ftfy`), so word
positions come from tokenizing the lower-cased prompt. With `bs4` and `ftfy` installed and `clean_caption=True`
(the `__call__` default) the pipeline rewrites the caption further (URLs, quotes, some punctuation removed) and
positions of words after a removed piece can shift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import Family, Grid, SitePattern, TextInput, duplicated_latents


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    """`PatchEmbed` turns the (batch, channels, height, width) latent into patch tokens, row-major."""
    height, width = bound["hidden_states"].shape[-2:]
    patch = int(model.config.patch_size)
    return Grid(1, height // patch, width // patch)


class _LowercasedTokenizer:
    """The pipeline's tokenizer, applied to the prompt as `_text_preprocessing` gives it to the tokenizer
    (lower-cased; character offsets stay those of the prompt as written)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str, **kwargs: Any) -> Any:
        lowered = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
        return self.tokenizer(lowered, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    return [(_LowercasedTokenizer(pipe.tokenizer), 0, text_tokens)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """Each prompt padded to `max_sequence_length` T5 tokens, with its token mask: the transformer turns the joined
    mask into the cross-attention's key bias, so every prompt's padding stays masked in the joined text."""
    embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, clean_caption=False,
                                            max_sequence_length=max_sequence_length or 300)
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("T5", pipe.tokenizer, max_sequence_length or 300)]


FAMILY = Family(
    name="pixart",
    model="PixArtTransformer2DModel",
    processors=("AttnProcessor2_0",),
    sites=(
        SitePattern(r"transformer_blocks\.(\d+)\.attn1", "blocks", "self"),
        SitePattern(r"transformer_blocks\.(\d+)\.attn2", "blocks", "cross"),
    ),
    order="text",  # no sequence holds both text and image tokens
    stride=2,  # patch size of every PixArt release
    grid=_grid,
    streams=_streams,
    guided=duplicated_latents,  # PixArt-Sigma keeps `do_classifier_free_guidance` in a local
    timestep_scale=1.0,  # the pipeline passes the scheduler's timesteps (0-999) unchanged
    # guidance 4.5 by default: CFG; `negative_prompt` defaults to "", which would clash with negative embeddings
    text=TextInput(_encode, {"prompt_embeds": 1, "prompt_attention_mask": 1}, _limits,
                   max_sequence_length=300, negative="always", arguments={"negative_prompt": None}),
)
