"""Lumina 2 (Alpha-VLLM/Lumina-Image-2.0): `Lumina2Transformer2DModel` runs, per forward,
1. context refiner blocks (`context_refiner.N.attn`): self-attention over the Gemma 2 text only, padded to the
   pipeline's `max_sequence_length` (256) with a boolean key mask (batch, 1, 1, text) hiding the padding;
2. noise refiner blocks (`noise_refiner.N.attn`): self-attention over the image tokens only, no mask;
3. joint blocks (`layers.N.attn`): one sequence per batch item, [the item's unpadded text | image tokens], padded
   with zeros to the longest item; the boolean key mask is passed only when the items' lengths differ.
Every block uses `Lumina2AttnProcessor2_0`, which repeats the key/value heads for grouped-query attention itself and
calls `F.scaled_dot_product_attention` once, in its `__call__`, with `scale=` (attn.scale unless proportional
attention is asked for) and the mask above.

The text the transformer sees is `system prompt + " <Prompt Start> " + prompt` (`pipe.system_prompt`, unless the call
passes `system_prompt=`), `<bos>` first; the prompt's tokens come after the prefix. The classifier-free guidance
branches are separate forwards (cond, then uncond, each of the prompt batch size; the uncond one is skipped after
`cfg_trunc_ratio` of the steps), without `cache_context`: `cfg="sequential"`. The
forward's timestep is `1 - t / 1000`: 0 is noise, 1 the image (reversed against the scheduler).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, SitePattern, TextInput

_SEPARATOR = " <Prompt Start> "  # how Lumina2Pipeline.encode_prompt joins the system prompt and the prompt


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    hidden = bound.get("hidden_states")
    if hidden is None or hidden.ndim != 4:
        raise AttnkitError("the Lumina 2 transformer was called without 4-d `hidden_states` (batch, channels, "
                           "height, width); attnkit reads the token grid from them.")
    patch = int(model.config.patch_size)
    return Grid(1, hidden.shape[-2] // patch, hidden.shape[-1] // patch)


def _text_tokens(bound: Mapping[str, Any]) -> int | None:
    """The unpadded text tokens of the forward: the joint sequence holds exactly these, then the image."""
    mask = bound.get("encoder_attention_mask")
    if mask is None:
        text = bound.get("encoder_hidden_states")
        return None if text is None else int(text.shape[1])
    lengths = sorted({int(n) for n in mask.reshape(mask.shape[0], -1).sum(1).tolist()})
    if len(lengths) > 1:
        raise AttnkitError(
            f"this Lumina 2 forward holds prompts of different token lengths ({lengths}); the transformer lays out "
            "each item's joint sequence with its own text length, so one token layout does not fit the batch. "
            "Run prompts of different lengths one at a time under attnkit."
        )
    return lengths[0]


def _layout(dit: Family, kind: str, queries: int, keys: int, grid: Grid, text_tokens: int | None):
    image = grid.tokens
    if kind == "self":  # noise refiner: image tokens only
        return (("image", image),), (("image", image),)
    if kind == "text":  # context refiner: the text, padded to the pipeline's max_sequence_length
        text = min(text_tokens if text_tokens is not None else queries, queries)
        parts = (("text", text), ("pad", queries - text))
        return parts, parts
    text = text_tokens if text_tokens is not None else queries - image
    parts = (("text", text), ("image", image), ("pad", queries - text - image))
    return parts, parts


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    """The prompt's tokens start after `<bos>` and the system prompt prefix. `tokenizer(prompt)` gives `<bos>` at
    index 0 and the first word at 1, so the stream starts one position before the templated prompt's first token."""
    tokenizer = pipe.tokenizer
    prefix = (getattr(pipe, "system_prompt", None) or "") + _SEPARATOR
    probe = "a"
    encoded = tokenizer(prefix + probe, return_offsets_mapping=True)
    first = next(i for i, (start, end) in enumerate(encoded["offset_mapping"]) if end > len(prefix))
    offset = first - 1
    return [(tokenizer, offset, max(text_tokens - offset, 0))]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """Each prompt's tokens, after the system prompt, without the padding (the transformer reads a prompt's length
    from its mask)."""
    embeds, mask, _, _ = pipe.encode_prompt(prompt=list(prompts), do_classifier_free_guidance=False,
                                            device=pipe._execution_device,
                                            max_sequence_length=max_sequence_length or 256)
    return {"prompt_embeds": _unpadded(embeds, mask)}


def _encode_negative(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """Negative prompts as the pipeline encodes them: without the system prompt."""
    _, _, embeds, mask = pipe.encode_prompt(prompt=[""] * len(prompts), negative_prompt=list(prompts),
                                            do_classifier_free_guidance=True, device=pipe._execution_device,
                                            max_sequence_length=max_sequence_length or 256)
    return {"prompt_embeds": _unpadded(embeds, mask)}


def _unpadded(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [tokens[kept.bool()] for tokens, kept in zip(embeds, mask)]


def _pack(arguments: dict[str, Any]) -> dict[str, Any]:
    """The joined text (and negative) as the pipeline takes it: one tensor each, zero-padded to a common length,
    with masks marking the tokens (the pipeline wants the cond and negative masks of one shape)."""
    texts = {name: arguments[name][0] for name in ("prompt_embeds", "negative_prompt_embeds") if name in arguments}
    length = max(len(tokens) for tokens in texts.values())
    packed = dict(arguments)
    for name, tokens in texts.items():
        embeds = tokens.new_zeros(1, length, tokens.shape[-1])
        embeds[0, : len(tokens)] = tokens
        mask = torch.zeros(1, length, dtype=torch.long, device=tokens.device)
        mask[0, : len(tokens)] = 1
        packed[name] = embeds
        packed[name.replace("embeds", "attention_mask")] = mask
    return packed


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    """Gemma keeps `max_sequence_length` tokens of the system prompt, the separator and the prompt."""
    prefix = (getattr(pipe, "system_prompt", None) or "") + _SEPARATOR
    return [("Gemma", pipe.tokenizer, (max_sequence_length or 256) - len(pipe.tokenizer(prefix).input_ids))]


FAMILY = Family(
    name="lumina2",
    model="Lumina2Transformer2DModel",
    processors=("Lumina2AttnProcessor2_0",),
    sites=(SitePattern(r"context_refiner\.(\d+)\.attn", "context", "text"),
           SitePattern(r"noise_refiner\.(\d+)\.attn", "noise", "self"),
           SitePattern(r"layers\.(\d+)\.attn", "joint", "joint")),
    order="text",
    stride=lambda model: int(model.config.patch_size),  # 2 in the release
    grid=_grid,
    streams=_streams,
    text_tokens=_text_tokens,
    layout=_layout,
    cfg="sequential",
    timestep=lambda bound: 1000 * (1 - bound["timestep"]),  # the forward's timestep is 1 - t / 1000
    forward_timestep=lambda t: 1 - t / 1000,
    text=TextInput(_encode, {"prompt_embeds": 0}, _limits, max_sequence_length=256, pack=_pack,
                   encode_negative=_encode_negative),
)
