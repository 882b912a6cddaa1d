"""FLUX.2 [dev]: double-stream blocks (`Flux2Attention`, joint [text | image] attention over the two streams'
concatenated q, k, v), then single-stream blocks (`Flux2ParallelSelfAttention`, fused qkv + MLP) over the same
[text | image] sequence. The pipeline patchifies 2x2 latent pixels into one token and passes the transformer the
timestep / 1000.

Text is Mistral-Small's hidden states (layers 10, 20, 30 stacked) over the chat-templated prompt,
`<s>[SYSTEM_PROMPT]<system message>[/SYSTEM_PROMPT][INST]<prompt>[/INST]`, padded on the right to
`max_sequence_length` (512) and fed to the transformer without a mask; its rotary positions are 0..L-1 along the
text axis. Image-to-image appends reference-image tokens after the image tokens (`img_ids` time coordinate 10, 20,
...): they are neither the generated image nor text, so the layout calls them "pad".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import AttnkitError
from . import Family, Grid, Kind, Parts, SitePattern, TextInput


def _generated_ids(bound: Mapping[str, Any]) -> torch.Tensor:
    ids = bound.get("img_ids")
    if ids is None:
        raise AttnkitError("the Flux.2 transformer was called without `img_ids`; attnkit reads the token grid from "
                           "them.")
    ids = ids[0] if ids.ndim == 3 else ids
    return ids[ids[:, 0] == ids[0, 0]]  # the generated image: the leading tokens with its time coordinate


def _grid(bound: Mapping[str, Any], model: torch.nn.Module) -> Grid:
    ids = _generated_ids(bound)
    rows = int(ids[:, 1].max() - ids[:, 1].min()) + 1
    cols = int(ids[:, 2].max() - ids[:, 2].min()) + 1
    return Grid(1, rows, cols)


def _layout(dit: Family, kind: Kind, queries: int, keys: int, grid: Grid, text_tokens: int | None
            ) -> tuple[Parts, Parts]:
    """[text | image | reference images]; the reference tokens (image-to-image) are "pad"."""
    text = queries - grid.tokens if text_tokens is None else text_tokens
    sequence: Parts = (("text", text), ("image", grid.tokens))
    extra = queries - text - grid.tokens
    if extra:
        sequence += (("pad", extra),)
    return sequence, sequence


def _tokenizer(pipe: Any) -> Any:
    """The text tokenizer: the release's `tokenizer` component is a PixtralProcessor around it."""
    return getattr(pipe.tokenizer, "tokenizer", pipe.tokenizer)


def _leading_specials(tokenizer: Any) -> int:
    """Tokens the tokenizer puts before a plain prompt (`<s>`)."""
    mask = tokenizer("a", return_special_tokens_mask=True)["special_tokens_mask"]
    return next((i for i, special in enumerate(mask) if not special), len(mask))


def _prefix_tokens(pipe: Any) -> int:
    """Tokens of the chat template before the prompt: `<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]`."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    messages = format_input(prompts=[""], system_message=getattr(pipe, "system_message", None) or "")
    rendered = pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    rendered = rendered[0] if isinstance(rendered, list) else rendered
    end = rendered.rfind("[/INST]")
    if end < 0:
        raise AttnkitError(f"attnkit cannot find `[/INST]` in the chat template of {type(pipe).__name__}'s "
                           "tokenizer, so it cannot tell where the prompt's tokens are: attnkit knows FLUX.2 [dev]'s "
                           "Mistral template (Flux2Pipeline), not others (e.g. FLUX.2 [klein]'s Qwen3 template).")
    return len(_tokenizer(pipe)(rendered[:end], add_special_tokens=False)["input_ids"])


def _streams(pipe: Any, text_tokens: int | None) -> list[tuple[Any, int, int | None]]:
    """The prompt follows the template's prefix; `tokenizer(prompt)` starts with `<s>`, so its stream starts that
    many positions earlier (the `<s>` position is special and never labelled)."""
    tokenizer = _tokenizer(pipe)
    first = _prefix_tokens(pipe) - _leading_specials(tokenizer)
    return [(tokenizer, first, None if text_tokens is None else text_tokens - first)]


def _encode(pipe: Any, prompts: list[str], max_sequence_length: int | None) -> dict[str, Any]:
    embeds, _ = pipe.encode_prompt(prompt=prompts, max_sequence_length=max_sequence_length or 512)
    return {"prompt_embeds": embeds}


def _limits(pipe: Any, max_sequence_length: int | None) -> list[tuple[str, Any, int]]:
    """`tokenizer(prompt)` (with its `<s>`) must fit what the template leaves of `max_sequence_length`."""
    tokenizer = _tokenizer(pipe)
    keeps = (max_sequence_length or 512) - _prefix_tokens(pipe) + _leading_specials(tokenizer) - 1  # - [/INST]
    return [("Mistral", tokenizer, keeps)]


FAMILY = Family(
    name="flux2",
    model="Flux2Transformer2DModel",
    processors=("Flux2AttnProcessor", "Flux2ParallelSelfAttnProcessor"),
    sites=(SitePattern(r"transformer_blocks\.(\d+)\.attn", "joint", "joint"),
           SitePattern(r"single_transformer_blocks\.(\d+)\.attn", "single", "single")),
    order="text",
    stride=2,
    grid=_grid,
    streams=_streams,
    layout=_layout,
    timestep_scale=1000.0,
    # Flux2Pipeline has no negative prompt (guidance-distilled: `guidance_scale` is embedded, no CFG batch).
    guidance="embedded",
    text=TextInput(_encode, {"prompt_embeds": 1}, _limits, max_sequence_length=512, negative="never"),
)
