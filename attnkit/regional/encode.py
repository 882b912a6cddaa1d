"""Prompt encoding for regional prompting with the pipeline's own `encode_prompt`, one region per text segment.

Every region (and the base prompt, last) is encoded on its own and the text tokens are concatenated, so the
denoiser sees [region 1 | region 2 | ... | base] text (a UNet's cross-attention as much as a transformer's joint
attention). The CFG batch needs the negative text to be as long: with
per-region negatives each segment gets its region's negative (the same mask applies); with the global negative it is
encoded once and repeated, the copies after the first marked `PAD` so that, while the mask is on, nothing sees them
and the uncond branch is exactly plain attention on the global negative. How a pipeline takes embeddings is its
family's `TextInput` (`attnkit.families`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import AttnkitError
from ..families import TextInput, family_of
from .mask import PAD
from .spec import BASE, RegionSpec

__all__ = ["Encoded", "TextAdapters", "encode", "regional_text", "truncation_problems"]

Segments = tuple[tuple[int, int], ...]  # (owner, text tokens) in order
#: Given the owner of each prompt of a batch (PAD: the negative every region shares), a context under which the text
#: encoders encode each prompt with its owner's LoRA adapters.
TextAdapters = Callable[[list[int]], AbstractContextManager]


@dataclass(frozen=True)
class Encoded:
    """The pipeline's text arguments (cond and negative), and which owner every text token has per CFG branch."""

    arguments: dict[str, Any]
    cond: Segments
    uncond: Segments
    regional_negatives: bool

    def segments(self, branch: str) -> Segments:
        """(owner, text tokens) of every text segment of the CFG `branch`, in order."""
        return self.uncond if branch == "uncond" else self.cond

    def text_owners(self, branch: str) -> torch.Tensor:
        return torch.cat([torch.full((n,), owner, dtype=torch.long) for owner, n in self.segments(branch)])

    def check_text_tokens(self, where: str, tokens: int, branch: str) -> None:
        """An error if an attention call at `where` got another number of text tokens than these embeddings have:
        the pipeline was given embeddings of its own."""
        encoded = sum(n for _, n in self.segments(branch))
        if tokens != encoded:
            raise AttnkitError(
                f"{where} got {tokens} text tokens, but the region spec encodes {encoded}: pass the embeddings from "
                "`regions(...)` of the same `attnkit.regional` session, not a `prompt` of your own (a negative prompt "
                "goes in the spec's `negative`)."
            )


def encode(pipe: Any, spec: RegionSpec, *, max_sequence_length: int | None, pooled: Literal["mean", "base"],
           negatives: Literal["auto", "regional", "global"], with_negatives: bool,
           adapters: TextAdapters | None = None) -> Encoded:
    """Encode every region's prompt (and negatives when `with_negatives`) with `pipe.encode_prompt`, each under its
    owner's LoRA adapters where `adapters` is given."""
    adapters = adapters or (lambda owners: nullcontext())
    if pooled == "base" and spec.base is None:
        raise AttnkitError("pooled='base' takes the pooled embedding of the base prompt, but the spec has no `base`.")
    text = regional_text(pipe)
    regional = negatives == "regional" or (negatives == "auto" and any(r.negative for r in spec.regions))
    prompts = spec.prompts + ([spec.base.prompt] if spec.base else [])
    owners = list(range(len(spec.regions))) + ([BASE] if spec.base else [])
    with adapters(owners):
        per_prompt = _encode(text, pipe, prompts, max_sequence_length)
    cond = _segments(text, per_prompt, owners)
    arguments = _join(text, per_prompt, pooled, len(spec.regions))
    if not with_negatives:
        return Encoded(_packed(text, arguments), cond, cond, regional)
    if regional:
        negative_prompts = [r.negative if r.negative is not None else spec.negative for r in spec.regions]
        negative_prompts += [spec.negative] if spec.base else []
        with adapters(owners):
            negative = _encode_negatives(text, pipe, negative_prompts, max_sequence_length)
        uncond = _segments(text, negative, owners)
    else:
        with adapters([PAD]):
            shared = _encode_negatives(text, pipe, [spec.negative], max_sequence_length)
        negative = _repeat(text, shared, len(owners))
        uncond = tuple(segment for name in _text_order(text) for segment in (
            (0, _lengths(text, negative, name, len(owners))[0]),
            (PAD, sum(_lengths(text, negative, name, len(owners))[1:]))))
    arguments |= {f"negative_{name}": value for name, value in
                  _join(text, negative, pooled, len(spec.regions)).items()}
    return Encoded(_packed(text, arguments), cond, tuple(s for s in uncond if s[1]), regional)


def _packed(text: TextInput, arguments: dict[str, Any]) -> dict[str, Any]:
    return text.pack(arguments) if text.pack is not None else arguments


def _encode(text: TextInput, pipe: Any, prompts: list[str], max_sequence_length: int | None,
            negative: bool = False) -> dict[str, Any]:
    encoder = text.negative_encoder() if negative else text.encode
    with torch.no_grad():
        return encoder(pipe, prompts, max_sequence_length)


def _encode_negatives(text: TextInput, pipe: Any, prompts: list[str | None], max_sequence_length: int | None
                      ) -> dict[str, Any]:
    """Negative prompts as the pipeline encodes them; None (no negative given) as the pipeline takes no negative
    prompt: the empty prompt, or zero embeddings where it zeroes them (SDXL's `force_zeros_for_empty_prompt`)."""
    encoded = _encode(text, pipe, [prompt or "" for prompt in prompts], max_sequence_length, negative=True)
    if not text.zeros_without_negative(pipe):
        return encoded
    for name, value in encoded.items():
        for row in (i for i, prompt in enumerate(prompts) if prompt is None and value is not None):
            value[row] = torch.zeros_like(value[row])
    return encoded


def _text_order(text: TextInput) -> tuple[str, ...]:
    return text.text_order or (next(iter(text.sequence)),)


def _segments(text: TextInput, per_prompt: dict[str, Any], owners: list[int]) -> Segments:
    """(owner, tokens) of the denoiser's text: each prompt's segment in each joined argument of `text_order`."""
    return tuple(segment for name in _text_order(text)
                 for segment in zip(owners, _lengths(text, per_prompt, name, len(owners))))


def _lengths(text: TextInput, per_prompt: dict[str, Any], name: str, count: int) -> list[int]:
    """Text tokens of each prompt in the joined argument `name`."""
    value = per_prompt[name]
    if isinstance(value, list):
        return [int(v.shape[0]) for v in value]
    return [int(value.shape[text.sequence[name]])] * count


def _join(text: TextInput, per_prompt: dict[str, Any], pooled: Literal["mean", "base"], regions: int
          ) -> dict[str, Any]:
    """The pipeline arguments of the prompts' text in one sequence, and their pooled embedding."""
    joined: dict[str, Any] = {}
    for name, value in per_prompt.items():
        if value is None:
            continue
        if name in text.pooled:
            joined[name] = value[-1:] if pooled == "base" else value[:regions].mean(0, keepdim=True)
        elif isinstance(value, list):
            joined[name] = [torch.cat(value)]
        else:
            axis = text.sequence[name]
            joined[name] = torch.cat(value.unbind(axis - 1), dim=axis - 1).unsqueeze(axis - 1)
    return joined


def _repeat(text: TextInput, per_prompt: dict[str, Any], count: int) -> dict[str, Any]:
    """One prompt's arguments as if `count` prompts had been encoded."""
    repeated: dict[str, Any] = {}
    for name, value in per_prompt.items():
        if value is None or name in text.pooled:  # one row: its mean over copies would not be exactly itself
            repeated[name] = value
        elif isinstance(value, list):
            repeated[name] = value * count
        else:
            repeated[name] = value.repeat_interleave(count, dim=text.sequence[name] - 1)
    return repeated


def regional_text(pipe: Any) -> TextInput | None:
    """How `pipe` takes prompt embeddings, where regional prompting can join several prompts' (image families whose
    text input is described); None elsewhere."""
    family = family_of(pipe)
    return None if family.video else family.text


def truncation_problems(pipe: Any, spec: RegionSpec, max_sequence_length: int | None) -> list[str]:
    """One line per prompt of the spec that an encoder of `pipe` would cut short."""
    texts = [(f"region {i + 1} prompt", r.prompt) for i, r in enumerate(spec.regions)]
    texts += [(f"region {i + 1} negative", r.negative) for i, r in enumerate(spec.regions) if r.negative]
    texts += [("base prompt", spec.base.prompt)] if spec.base else []
    texts += [("global negative", spec.negative)] if spec.negative else []
    problems = []
    for where, prompt in texts:
        for name, tokenizer, keeps in regional_text(pipe).limits(pipe, max_sequence_length):
            if tokenizer is None:
                continue
            count = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
            if count > keeps:
                problems.append(f"{where} is {count} {name} tokens; {name} keeps {keeps}, so it would be truncated")
    return problems
