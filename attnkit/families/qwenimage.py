"""Qwen-Image (and its fine-tunes): 60 dual-stream blocks, each one joint attention over [text | image] (the text
stream first). The pipeline packs 2x2 latent pixels into one token, passes the transformer the timestep / 1000 and
the image token grid as `img_shapes` ([[(frames, rows, cols), ...]] per batch item: the generated image, then any
reference images of the Edit pipelines, whose tokens follow the image's and are marked "pad" here).

The text is the last hidden state of Qwen2.5-VL over the prompt in a chat template, without the template's first 34
tokens (`prompt_template_encode_start_idx`): the transformer sees the prompt's own tokens first (a plain
`tokenizer(prompt)` gives the same tokens, Qwen2 adds no bos), then the template's closing tokens. A batch of prompts
of different lengths is padded to the longest and masked (`encoder_hidden_states_mask`, applied as a boolean key
mask in the joint attention); one prompt has no padding and no mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, Kind, Parts, SitePattern, TextInput


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    shapes = bound.get("img_shapes")
    if not shapes:
        raise AttnkitError("the Qwen-Image transformer was called without `img_shapes`; attnkit reads the token grid "
                           "from them.")
    first = shapes[0]
    frames, rows, cols = first[0] if isinstance(first, list) else first
    return Grid(int(frames), int(rows), int(cols))


def _layout(family: Family, kind: Kind, queries: int, keys: int, grid: Grid, text_tokens: int | None
            ) -> tuple[Parts, Parts]:
    """[text | image | reference images]: the Edit pipelines append their reference images' tokens."""
    text = queries - grid.tokens if text_tokens is None else text_tokens
    sequence = (("text", text), ("image", grid.tokens), ("pad", queries - text - grid.tokens))
    return sequence, sequence


def _prefix_tokens(pipe: Any) -> int:
    """Tokens of the prompt template before the prompt that the pipeline keeps (0 for the release's template)."""
    template = getattr(pipe, "prompt_template_encode", "{}")
    drop = getattr(pipe, "prompt_template_encode_start_idx", 0)
    prefix = template.split("{}")[0]
    return len(pipe.tokenizer(prefix).input_ids) - drop if prefix else -drop


def _streams(pipe: Any, text_tokens: int | None) -> list[tuple[Any, int, int | None]]:
    """The prompt's tokens from the first text position (`text_tokens` is None once the forward is over)."""
    start = _prefix_tokens(pipe)
    return [(pipe.tokenizer, start, None if text_tokens is None else text_tokens - start)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """One row per prompt, padded to the longest with its mask (joined along the tokens, the padding of each prompt
    stays masked where it lies)."""
    embeds, mask = pipe.encode_prompt(prompt=prompts, max_sequence_length=max_sequence_length or 512)
    if mask is None:
        return {"prompt_embeds": embeds}
    return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    keeps = max_sequence_length or 512
    return [("Qwen2.5-VL", pipe.tokenizer, keeps - max(_prefix_tokens(pipe), 0))]


FAMILY = Family(
    name="qwenimage",
    model="QwenImageTransformer2DModel",
    processors=("QwenDoubleStreamAttnProcessor2_0",),
    sites=(SitePattern(r"transformer_blocks\.(\d+)\.attn", "joint", "joint"),),
    order="text",
    stride=2,
    grid=_grid,
    streams=_streams,
    layout=_layout,
    timestep_scale=1000.0,
    guidance="embedded",  # `guidance_scale` feeds guidance-distilled releases; CFG is `true_cfg_scale`
    text=TextInput(_encode, {"prompt_embeds": 1, "prompt_embeds_mask": 1}, _limits,
                   max_sequence_length=512, negative="given"),
)
