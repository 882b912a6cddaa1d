"""Z-Image (Turbo and its fine-tunes): a single-stream Family. Before the main layers, a noise refiner runs
self-attention over the image tokens alone and a context refiner over the caption tokens alone; each is padded to a
multiple of 32 tokens with a learned pad token (`SEQ_MULTI_OF`), which is attended to like any token, not masked.
The main layers run one sequence per batch item, [image | image padding | caption | caption padding], and a batch
whose items differ in length is padded further at the end and masked (a boolean key mask, (batch, 1, 1, tokens)).

The transformer takes lists: `x` (one latent (channels, frames, rows, cols) per item), `cap_feats` (one caption
embedding (tokens, width) per item, of its own length: the second-to-last hidden state of Qwen3 over the prompt in
its chat template, padding removed) and `t` = (1000 - timestep) / 1000. Batches put every cond item first, then every
uncond item (`prompt_embeds + negative_prompt_embeds`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, Kind, Parts, SitePattern, TextInput

_MULTIPLE = 32  # diffusers' SEQ_MULTI_OF
_SENTINEL = "\x00prompt\x00"


def _padded(tokens: int) -> int:
    return tokens + (-tokens) % _MULTIPLE


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    latents = bound.get("x")
    if not latents or isinstance(latents[0], list):
        raise AttnkitError("attnkit reads the Z-Image token grid from `x`, a list of latents (c, frames, rows, cols); "
                           "the omni mode's nested lists are not supported.")
    patch, frame_patch = int(bound.get("patch_size", 2)), int(bound.get("f_patch_size", 1))
    _, frames, rows, cols = latents[0].shape
    return Grid(frames // frame_patch, rows // patch, cols // patch)


def _item_text_tokens(bound: Mapping[str, Any]) -> tuple[int, ...]:
    """Every item's caption tokens, before padding (none in the omni mode's nested lists)."""
    captions = bound.get("cap_feats")
    return () if not captions or isinstance(captions[0], list) else tuple(int(c.shape[0]) for c in captions)


def _text_tokens(bound: Mapping[str, Any]) -> int | None:
    """The first (a cond) item's caption tokens, before padding."""
    items = _item_text_tokens(bound)
    return items[0] if items else None


def _layout(family: Family, kind: Kind, queries: int, keys: int, grid: Grid, text_tokens: int | None
            ) -> tuple[Parts, Parts]:
    image, image_pad = grid.tokens, _padded(grid.tokens) - grid.tokens
    if kind == "single":  # [image | pad | caption | pad (caption and batch)]
        text = text_tokens if text_tokens is not None else queries - image - image_pad
        sequence = (("image", image), ("pad", image_pad), ("text", text), ("pad", queries - image - image_pad - text))
        return sequence, sequence
    if kind == "self":  # the noise refiner: the image, padded
        sequence = (("image", image), ("pad", image_pad))
        return sequence, sequence
    text = text_tokens if text_tokens is not None else queries  # the context refiner: the caption, padded
    sequence = (("text", text), ("pad", queries - text))
    return sequence, sequence


def _template(tokenizer: Any) -> tuple[str, str]:
    """The chat template the pipeline wraps a prompt in: (text before the prompt, text after it)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=True)
    before, after = rendered.split(_SENTINEL)
    return before, after


def _prefix_tokens(tokenizer: Any) -> int:
    """Tokens of the chat template before the prompt (`<|im_start|>user\\n`: 3)."""
    return len(tokenizer(_template(tokenizer)[0]).input_ids)


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """One caption per prompt, each of its own length (the pipeline drops the padding)."""
    embeds, _ = pipe.encode_prompt(prompt=list(prompts), device=pipe._execution_device,
                                   do_classifier_free_guidance=False, max_sequence_length=max_sequence_length or 512)
    return {"prompt_embeds": embeds}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    """Qwen3 keeps `max_sequence_length` tokens of the prompt in its chat template."""
    template = len(pipe.tokenizer("".join(_template(pipe.tokenizer))).input_ids)
    return [("Qwen3", pipe.tokenizer, (max_sequence_length or 512) - template)]


def _streams(pipe: Any, text_tokens: int | None) -> list[tuple[Any, int, int | None]]:
    start = _prefix_tokens(pipe.tokenizer)
    return [(pipe.tokenizer, start, None if text_tokens is None else text_tokens - start)]


FAMILY = Family(
    name="zimage",
    model="ZImageTransformer2DModel",
    processors=("ZSingleStreamAttnProcessor",),
    sites=(SitePattern(r"noise_refiner\.(\d+)\.attention", "noise_refiner", "self"),
           SitePattern(r"context_refiner\.(\d+)\.attention", "context_refiner", "text"),
           SitePattern(r"layers\.(\d+)\.attention", "single", "single")),
    order="image",
    stride=2,
    grid=_grid,
    streams=_streams,
    text_tokens=_text_tokens,
    item_text_tokens=_item_text_tokens,
    layout=_layout,
    timestep=lambda bound: 1000 * (1 - bound["t"]),  # the forward's `t` is (1000 - timestep) / 1000
    timestep_argument="t",
    forward_timestep=lambda t: (1000 - t) / 1000,
    latent_argument="x",
    cfg="cond-first",
    text=TextInput(_encode, {"prompt_embeds": 0}, _limits, max_sequence_length=512),
)
