"""HiDream-I1 (Full, Dev, Fast): double-stream blocks with joint attention over [image | text], then single-stream
blocks over the same sequence, each block with its own text.

The text of every block is [T5 | Llama layer `llama_layers[-1]` | Llama layer `llama_layers[block]`]: the T5 and the
last listed Llama layer's states are carried through the double-stream blocks (and into the single-stream sequence),
the block's own Llama layer is appended afresh before each block and cut off after it. At the default
`max_sequence_length` of 128 that is 128 + 128 + 128 text tokens after the image tokens, padding included (T5 pads
with `<pad>`, Llama with `<|eot_id|>`; no text mask reaches the transformer: padding is attended to).

A non-square image is patchified into `max_resolution` tokens (4096 in the release): the image tokens, row-major,
then zero "pad" tokens whose keys are multiplied by 0 (not masked: they still take softmax mass). The processor
(`HiDreamAttnProcessor`) calls `F.scaled_dot_product_attention` once, without a mask. The pipeline passes the
scheduler's timestep (0-1000) unscaled, as the forward's `timesteps` argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, SitePattern, TextInput

_DEFAULT_MAX_SEQUENCE_LENGTH = 128


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    sizes = bound.get("img_sizes")
    if sizes is not None and bound.get("hidden_states_masks") is not None:  # pre-patchified input
        rows, cols = (int(s) for s in torch.as_tensor(sizes).reshape(-1, 2)[0])
        return Grid(1, rows, cols)
    latents = bound.get("hidden_states")
    if latents is None or latents.ndim != 4:
        raise AttnkitError("the HiDream transformer was called without 4-d latents `hidden_states` (or with "
                           "patchified ones but no `img_sizes`); attnkit reads the token grid from them.")
    patch = model.config.patch_size
    return Grid(1, latents.shape[-2] // patch, latents.shape[-1] // patch)


def _text_tokens(bound: Mapping[str, Any]) -> int | None:
    t5, llama = bound.get("encoder_hidden_states_t5"), bound.get("encoder_hidden_states_llama3")
    if t5 is None or llama is None:
        return None
    llama_tokens = llama[0].shape[1] if isinstance(llama, (list, tuple)) else llama.shape[2]
    return int(t5.shape[1]) + 2 * int(llama_tokens)


def _layout(family: Family, kind: str, queries: int, keys: int, grid: Grid, text_tokens: int | None):
    text = text_tokens if text_tokens is not None else queries - grid.tokens
    pad = queries - grid.tokens - text
    if pad < 0:
        raise AttnkitError(f"a HiDream attention call of {queries} tokens cannot hold {grid.tokens} image and "
                           f"{text} text tokens.")
    sequence = (("image", grid.tokens),) + ((("pad", pad),) if pad else ()) + (("text", text),)
    return sequence, sequence


def _streams(pipe: Any, text_tokens: int) -> list[tuple[Any, int, int]]:
    """T5 first, then the same Llama tokens twice (two layers' states). T5 and Llama are padded to the same
    `max_sequence_length` (both tokenizers accept more than the pipeline's 128), so each is a third of the text."""
    if text_tokens % 3:
        raise AttnkitError(f"HiDream's text of {text_tokens} tokens is not T5 + 2 x Llama of one length; attnkit "
                           "labels its words only where T5 and Llama are padded to the same length.")
    length = text_tokens // 3
    return [(pipe.tokenizer_3, 0, length), (pipe.tokenizer_4, length, length), (pipe.tokenizer_4, 2 * length, length)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    t5, _, llama, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, do_classifier_free_guidance=False,
        max_sequence_length=max_sequence_length or _DEFAULT_MAX_SEQUENCE_LENGTH)
    return {"prompt_embeds_t5": t5, "prompt_embeds_llama3": llama, "pooled_prompt_embeds": pooled}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    length = max_sequence_length or _DEFAULT_MAX_SEQUENCE_LENGTH
    return [("CLIP-L", pipe.tokenizer, min(length, 218)), ("CLIP-G", pipe.tokenizer_2, min(length, 218)),
            ("T5", pipe.tokenizer_3, min(length, pipe.tokenizer_3.model_max_length)),
            ("Llama", pipe.tokenizer_4, min(length, pipe.tokenizer_4.model_max_length))]


FAMILY = Family(
    name="hidream",
    model="HiDreamImageTransformer2DModel",
    processors=("HiDreamAttnProcessor",),
    sites=(SitePattern(r"double_stream_blocks\.(\d+)\.block\.attn1", "double", "joint"),
           SitePattern(r"single_stream_blocks\.(\d+)\.block\.attn1", "single", "single")),
    order="image",
    stride=2,
    grid=_grid,
    streams=_streams,
    text_tokens=_text_tokens,
    layout=_layout,
    timestep_scale=1.0,
    timestep=lambda bound: bound.get("timesteps"),  # the forward's argument is `timesteps` (scheduler units)
    timestep_argument="timesteps",
    # several prompts' text: `prompt_embeds_t5` joined on its token axis 1, `prompt_embeds_llama3` (layers, batch,
    # tokens, width) on axis 2; every block's text is [T5 | Llama | Llama] of the joined arguments
    text=TextInput(_encode, {"prompt_embeds_t5": 1, "prompt_embeds_llama3": 2}, _limits,
                   pooled=("pooled_prompt_embeds",), max_sequence_length=_DEFAULT_MAX_SEQUENCE_LENGTH,
                   negative="always",
                   text_order=("prompt_embeds_t5", "prompt_embeds_llama3", "prompt_embeds_llama3")),
)
