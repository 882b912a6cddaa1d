"""Prompt encoding for regional prompting with the pipeline's own `encode_prompt`, one region per text segment.

Every region (and the base prompt, last) is encoded on its own and the text tokens are concatenated, so the
denoiser sees [region 1 | region 2 | ... | base] text (a UNet's cross-attention as much as a transformer's joint
attention). The CFG batch needs the negative text to be as long: with
per-region negatives each segment gets its region's negative (the same mask applies); with the global negative it is
encoded once and repeated, the copies after the first marked `PAD` so that, while the mask is on, nothing sees them
and the uncond branch is exactly plain attention on the global negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import AttnkitError
from .mask import PAD
from .spec import BASE, RegionSpec

__all__ = ["Encoded", "encode", "truncation_problems"]

Segments = tuple[tuple[int, int], ...]  # (owner, text tokens) in order


@dataclass(frozen=True)
class Encoded:
    """Embeddings for the pipeline, and which owner every text token has per CFG branch."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None  # None where the pipeline takes none (SD1.x, SD2)
    negative_prompt_embeds: torch.Tensor | None
    negative_pooled_prompt_embeds: torch.Tensor | None
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


def encode(pipe: Any, spec: RegionSpec, *, max_sequence_length: int, pooled: Literal["mean", "base"],
           negatives: Literal["auto", "regional", "global"], with_negatives: bool) -> Encoded:
    """Encode every region's prompt (and negatives when `with_negatives`) with `pipe.encode_prompt`."""
    if pooled == "base" and spec.base is None:
        raise AttnkitError("pooled='base' takes the pooled embedding of the base prompt, but the spec has no `base`.")
    regional = negatives == "regional" or (negatives == "auto" and any(r.negative for r in spec.regions))
    prompts = spec.prompts + ([spec.base.prompt] if spec.base else [])
    owners = list(range(len(spec.regions))) + ([BASE] if spec.base else [])
    embeds, pools = _encode(pipe, prompts, max_sequence_length)
    cond = tuple((owner, embeds.shape[1]) for owner in owners)
    prompt_embeds = embeds.reshape(1, -1, embeds.shape[-1])
    pooled_embeds = _pool(pools, pooled, len(spec.regions))
    if not with_negatives:
        return Encoded(prompt_embeds, pooled_embeds, None, None, cond, cond, regional)
    global_negative = spec.negative or ""
    if regional:
        negative_prompts = [r.negative if r.negative is not None else global_negative for r in spec.regions]
        negative_prompts += [global_negative] if spec.base else []
        neg, neg_pools = _encode(pipe, negative_prompts, max_sequence_length)
        uncond = cond
        neg_pooled = _pool(neg_pools, pooled, len(spec.regions))
    else:
        neg, neg_pooled = _encode(pipe, [global_negative], max_sequence_length)
        neg = neg.expand(len(owners), -1, -1)
        uncond = ((0, embeds.shape[1]), (PAD, embeds.shape[1] * (len(owners) - 1)))
    return Encoded(prompt_embeds, pooled_embeds, neg.reshape(1, -1, neg.shape[-1]), neg_pooled, cond,
                   tuple(s for s in uncond if s[1]), regional)


def _pool(pools: torch.Tensor | None, pooled: Literal["mean", "base"], regions: int) -> torch.Tensor | None:
    """The pooled embedding: the base prompt's (encoded last) or the mean over the regions'."""
    if pools is None:
        return None
    return pools[-1:] if pooled == "base" else pools[:regions].mean(0, keepdim=True)


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(text embeddings (n, T, C), pooled (n, P) or None) of `prompts`, in one batch."""
    with torch.no_grad():
        if hasattr(pipe, "unet"):
            encoded = pipe.encode_prompt(prompt=prompts, device=pipe._execution_device, num_images_per_prompt=1,
                                         do_classifier_free_guidance=False)
            return encoded[0], encoded[2] if len(encoded) == 4 else None  # SDXL also returns pooled embeddings
        if hasattr(pipe, "text_encoder_3"):
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None,
                                                      do_classifier_free_guidance=False,
                                                      max_sequence_length=max_sequence_length)
        else:
            embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None,
                                                   max_sequence_length=max_sequence_length)
    return embeds, pooled


def truncation_problems(pipe: Any, spec: RegionSpec, max_sequence_length: int) -> list[str]:
    """One line per prompt of the spec that an encoder of `pipe` would cut short."""
    encoders = [("CLIP", getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_max_length", 77))]
    if hasattr(pipe, "unet"):
        encoders.append(("CLIP-G", getattr(pipe, "tokenizer_2", None), 77))
    elif hasattr(pipe, "text_encoder_3"):
        encoders.append(("CLIP-G", getattr(pipe, "tokenizer_2", None), getattr(pipe, "tokenizer_max_length", 77)))
        if pipe.text_encoder_3 is not None:
            encoders.append(("T5", getattr(pipe, "tokenizer_3", None), max_sequence_length))
    else:
        encoders.append(("T5", getattr(pipe, "tokenizer_2", None), max_sequence_length))
    texts = [(f"region {i + 1} prompt", r.prompt) for i, r in enumerate(spec.regions)]
    texts += [(f"region {i + 1} negative", r.negative) for i, r in enumerate(spec.regions) if r.negative]
    texts += [("base prompt", spec.base.prompt)] if spec.base else []
    texts += [("global negative", spec.negative)] if spec.negative else []
    problems = []
    for where, text in texts:
        for name, tokenizer, keeps in encoders:
            if tokenizer is None:
                continue
            count = len(tokenizer(text, truncation=False, verbose=False).input_ids)
            if count > keeps:
                problems.append(f"{where} is {count} {name} tokens; {name} keeps {keeps}, so it would be truncated")
    return problems
