"""Sana (Efficient-Large-Model Sana 600M/1.6B, 512-4096 px): `SanaTransformer2DModel` blocks of self-attention over
the image tokens followed by cross-attention from the image tokens to the Gemma 2 prompt tokens.

Only the cross-attention is softmax attention. The self-attention (`attn1`, `SanaLinearAttnProcessor2_0`) is ReLU
linear attention: out_i = sum_j (relu(q_i) . relu(k_j)) v_j / sum_j relu(q_i) . relu(k_j), computed as
relu(K)^T V first, so no (queries x keys) score matrix is ever formed and there is no softmax, no
`dispatch_attention_fn` and no `F.scaled_dot_product_attention` call. attnkit cannot show attention maps, mask,
reweight or swap keys/values there: those sites are listed with kind "linear" so that discovery covers every
attention module, and attnkit refuses any control there by that kind.

The cross-attention (`attn2`, `SanaAttnProcessor2_0`) calls `F.scaled_dot_product_attention` once, in its
`__call__`, with an additive float mask (batch, heads, 1, text tokens): 0 for prompt tokens, -10000 for padding
(the transformer turns the pipeline's `encoder_attention_mask` into that bias).

Text: the pipeline prepends its long "complex human instruction" to the prompt, pads to instruction + 298 tokens
and keeps `<bos>` plus the last 299 positions, so the transformer sees 300 text tokens: `<bos>`, the prompt's
tokens, padding — the same positions as a plain `tokenizer(prompt)`, whose first word merely lacks the leading "▁".
The pipeline lower-cases and strips the prompt first (without `clean_caption`); the stream tokenizes it the same way.
The timestep is passed in scheduler units (times `config.timestep_scale`, 1.0 in the Sana releases); patch size 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, SitePattern, TextInput, call_parameters


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    hidden = bound.get("hidden_states")
    if hidden is None or hidden.ndim != 4:
        raise AttnkitError("the Sana transformer was called without 4-d `hidden_states` (batch, channels, height, "
                           "width); attnkit reads the token grid from them.")
    patch = int(model.config.patch_size)
    return Grid(1, hidden.shape[-2] // patch, hidden.shape[-1] // patch)


class _AsSanaTokenizes:
    """The pipeline's tokenizer on the prompt as `SanaPipeline._text_preprocessing` leaves it without
    `clean_caption` (lower-cased, stripped), with character offsets into the prompt as given."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, prompt: str, **options: Any) -> Any:
        text = prompt.lower()
        if len(text) != len(prompt):  # a character whose lower case is longer: offsets would not line up
            text = prompt
        lead = len(text) - len(text.lstrip())
        encoded = self.tokenizer(text.strip(), **options)
        if "offset_mapping" in encoded:
            encoded["offset_mapping"] = [(start + lead, end + lead) if end > start else (start, end)
                                         for start, end in encoded["offset_mapping"]]
        return encoded

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    """`<bos>` then the prompt's tokens from position 0, as `tokenizer(prompt)` gives them (see the module doc), on
    the lower-cased prompt the pipeline encodes (`clean_caption=True` would clean it further: not followed)."""
    return [(_AsSanaTokenizes(pipe.tokenizer), 0, text_tokens)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """Each prompt after the pipeline's default complex human instruction, as 300 tokens with its token mask: the
    transformer turns the joined mask into the cross-attention's key bias, so every prompt's padding stays masked in
    the joined text."""
    instruction = call_parameters(pipe)["complex_human_instruction"].default
    embeds, mask, _, _ = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                            device=pipe._execution_device, complex_human_instruction=instruction,
                                            max_sequence_length=max_sequence_length or 300)
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _encode_negative(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    """Negative prompts as the pipeline encodes them: without the complex human instruction."""
    _, _, embeds, mask = pipe.encode_prompt([""] * len(prompts), negative_prompt=list(prompts),
                                            do_classifier_free_guidance=True, device=pipe._execution_device,
                                            max_sequence_length=max_sequence_length or 300)
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    return [("Gemma", pipe.tokenizer, (max_sequence_length or 300) - 1)]  # `<bos>` is one of them


FAMILY = Family(
    name="sana",
    model="SanaTransformer2DModel",
    processors=("SanaAttnProcessor2_0",),
    sites=(SitePattern(r"transformer_blocks\.(\d+)\.attn1", "blocks", "linear"),
           SitePattern(r"transformer_blocks\.(\d+)\.attn2", "blocks", "cross")),
    order="image",
    stride=lambda model: int(model.config.patch_size),  # 1 in every Sana release
    grid=_grid,
    streams=_streams,
    timestep_scale=1.0,
    text=TextInput(_encode, {"prompt_embeds": 1, "prompt_attention_mask": 1}, _limits,
                   max_sequence_length=300, arguments={"negative_prompt": None},
                   encode_negative=_encode_negative),
)
