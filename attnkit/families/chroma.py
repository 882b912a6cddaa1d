"""Chroma1 (HD, Base, and the Flux-schnell-derived checkpoints): FLUX.1's layout, double-stream blocks with joint
[text | image] attention, then single-stream blocks over the same sequence, all with the stock `FluxAttnProcessor`.
The pipeline packs 2x2 latent pixels into one token and passes the transformer the timestep / 1000.

Text is T5 only, padded to `max_sequence_length` (512), all text rotary positions 0 (`txt_ids` zeros). The
pipeline also passes an attention mask over [text | image] that keeps the prompt's tokens and one padding token;
the blocks turn it into a (batch, 1, tokens, tokens) *float* 0/1 tensor (mask x mask), which the attention call
adds to the logits (diffusers 0.42): padding keys lose a +1 bias rather than being masked out. attnkit's calls see
that tensor as `call.mask`. Classifier-free guidance is a second transformer call per step on the negative prompt.
"""

from __future__ import annotations

from typing import Any

from . import Family, SitePattern, TextInput
from .flux import img_ids_grid, pack_latents


def _streams(pipe: Any, text_tokens: int | None) -> list[tuple[Any, int, int | None]]:
    return [(pipe.tokenizer, 0, text_tokens)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    embeds, _, mask, *_ = pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False,
                                             max_sequence_length=max_sequence_length or 512)
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("T5", pipe.tokenizer, max_sequence_length or 512)]


FAMILY = Family(
    name="chroma",
    model="ChromaTransformer2DModel",
    processors=("FluxAttnProcessor",),
    sites=(SitePattern(r"transformer_blocks\.(\d+)\.attn", "joint", "joint"),
           SitePattern(r"single_transformer_blocks\.(\d+)\.attn", "single", "single")),
    order="text",
    stride=2,
    grid=img_ids_grid,
    streams=_streams,
    timestep_scale=1000.0,
    text=TextInput(_encode, {"prompt_embeds": 1, "prompt_attention_mask": 1}, _limits,
                   max_sequence_length=512, negative="always"),
    cfg="sequential",  # ChromaPipeline runs the negative prompt as a forward of its own after the prompt's
    pack_latents=pack_latents,
)
