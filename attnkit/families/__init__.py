"""Declarative descriptions of the diffusers DiT families attnkit runs on through the generic site mechanism.

Every modern diffusers attention module runs a processor that projects, normalises and rotates q, k and v and then
calls one attention function (`dispatch_attention_fn`, or `F.scaled_dot_product_attention` in older processors).
attnkit runs that processor's own code unchanged and takes over only that one call
(`attnkit.processors.dispatch`), so a new family needs no processor copy, only the facts below: where its sites
are, what kind each is, how its token sequence is laid out, how big the image token grid is, and which tokenizer
produced which text positions. Each module of this package declares one `FAMILY`; they are found automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import torch

__all__ = ["DiT", "SitePattern", "Grid", "RegionalText", "dits", "dit_of"]

Kind = Literal["self", "cross", "joint", "single", "self2", "text", "linear"]


@dataclass(frozen=True)
class Grid:
    """Image tokens of one denoiser forward: `frames` x `rows` x `cols` tokens, in that order along the sequence,
    and the latent size in latent pixels (rows, cols) they come from."""

    frames: int
    rows: int
    cols: int

    @property
    def tokens(self) -> int:
        return self.frames * self.rows * self.cols


@dataclass(frozen=True)
class SitePattern:
    """Attention modules whose full module name matches `pattern` (a regex whose first group is the block index)
    are sites of `kind` in stage `stage` ("joint", "single", "self", "cross", ...). Sites run stage by stage, in the
    order the patterns first name the stages, and within a stage by block index (then module name)."""

    pattern: str
    stage: str
    kind: Kind


Parts = tuple[tuple[str, int], ...]  # (part name, tokens) in sequence order; parts are "image", "text" or "pad"


@dataclass(frozen=True)
class RegionalText:
    """How regional prompting gives a family's pipeline the text of several prompts as one sequence.

    `encode(pipe, prompts, max_sequence_length)` encodes each prompt on its own and returns pipeline keyword
    arguments with one entry per prompt: a tensor whose batch axis is the one before its token axis, or a list of
    per-prompt tensors (token axis 0) where the pipeline takes variable-length text. Arguments named in `sequence`
    (with their token axis) are joined along it, one prompt after the other; those in `pooled` are averaged over the
    regions or taken from the base prompt. Negative prompts go to the same arguments prefixed `negative_`.
    `max_sequence_length`: the default text tokens per prompt (None: the encoder's fixed length, not settable).
    `negative`: "always" when the pipeline guides against a negative prompt by default, "given" when only when one
    is given (true CFG), "never" when it takes none (guidance-distilled models).
    `limits(pipe, max_sequence_length)`: (name, tokenizer, tokens kept) of each text encoder,
    to refuse prompts that would be cut short. `arguments`: fixed keyword arguments every regional call of the
    pipeline takes (e.g. `negative_prompt=None` where a pipeline's default negative prompt would clash with the
    negative embeddings). `text_order`: the joined arguments whose tokens make up the denoiser's text, in the order
    it sees them (default: the first of `sequence`), e.g. HiDream's [T5 | Llama | Llama]: each prompt then owns one
    segment in each. `pack(arguments)`: where the pipeline takes text in another form than the joined arguments
    (cond and `negative_` ones together), what it takes instead, e.g. Lumina 2's per-prompt token lists as one
    padded tensor with its attention mask. `encode_negative`: how negative prompts are encoded, where the pipeline
    encodes them otherwise than prompts (Lumina 2 leaves its system prompt out of the negative); default `encode`.
    """

    encode: Callable[[Any, list[str], int | None], dict[str, Any]]
    sequence: Mapping[str, int]
    limits: Callable[[Any, int | None], list[tuple[str, Any, int]]]
    pooled: tuple[str, ...] = ()
    max_sequence_length: int | None = None
    negative: Literal["always", "given", "never"] = "always"
    arguments: Mapping[str, Any] = field(default_factory=dict)
    text_order: tuple[str, ...] = ()
    pack: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    encode_negative: Callable[[Any, list[str], int | None], dict[str, Any]] | None = None


def _text_tokens(bound: Mapping[str, Any]) -> int | None:
    text = bound.get("encoder_hidden_states")
    return None if text is None else int(text.shape[1])


@dataclass(frozen=True)
class DiT:
    """One diffusers DiT family, as attnkit needs to know it.

    - `name`: the architecture name attnkit reports (`Site.architecture`, `attnkit sites --json`).
    - `model`: the denoiser class name in `diffusers` (looked up by name, so that an older diffusers without it
      still imports attnkit).
    - `processors`: stock processor class names whose code attnkit runs unchanged around its controls.
    - `sites`: which attention modules are sites of which kind; a module with a processor that matches none is an
      error at discovery, never skipped.
    - `order`: the order of the parts in a sequence that holds text and image tokens ("text" first or "image").
    - `stride`: latent pixels per image token side (patch size, times any packing the pipeline does), or how to read
      it from the model.
    - `grid`: the image token grid of one forward, from the denoiser forward's bound arguments and the model.
    - `text_tokens`: the text tokens in the denoiser's text sequence, from the same arguments.
    - `item_text_tokens`: the text tokens of every batch item, for families whose pipelines give each item text of
      its own length in one forward (padded there): a CFG batch's prompt and negative prompt, for one.
    - `streams`: for word maps: (tokenizer, first position, length) of each tokenizer's stream within the text part
      of the attention calls, given the pipeline and the number of text tokens.
    - `layout`: (query parts, key parts) of one attention call, from its kind, query and key lengths, the grid and
      the state's text length; the default knows "self" (image over image), "cross" (image over text) and
      "joint"/"single" (one sequence of text and image in `order`, text being what is not image). A family whose
      sequences hold anything else (padding, reference images) gives its own.
    - `timestep_scale`: what the forward's timestep is multiplied by to be in the scheduler's units (0-1000).
    - `video`: whether the image tokens span several frames.
    - `cfg`: how the pipeline runs classifier-free guidance without naming its branches (`cache_context`):
      in one batch, "uncond-first" (diffusers' usual [uncond, cond]) or "cond-first", or "sequential" (a cond
      forward, then an uncond one, per step).
    - `timestep`: the forward's timestep in scheduler units, where it is not its `timestep` argument times
      `timestep_scale`.
    - `regional`: how regional prompting feeds the pipeline (None: regional prompting is not available, e.g. where
      image tokens never attend to text tokens jointly).
    """

    name: str
    model: str
    processors: tuple[str, ...]
    sites: tuple[SitePattern, ...]
    order: Literal["text", "image"]
    stride: int | Callable[[torch.nn.Module], int]
    grid: Callable[[Mapping[str, Any], torch.nn.Module], Grid]
    streams: Callable[[Any, int], list[tuple[Any, int, int]]]
    text_tokens: Callable[[Mapping[str, Any]], int | None] = _text_tokens
    item_text_tokens: Callable[[Mapping[str, Any]], tuple[int, ...]] | None = None
    layout: Callable[[DiT, Kind, int, int, Grid, int | None], tuple[Parts, Parts]] | None = None
    timestep_scale: float = 1.0
    video: bool = False
    cfg: Literal["uncond-first", "cond-first", "sequential"] = "uncond-first"
    timestep: Callable[[Mapping[str, Any]], Any] | None = None
    regional: RegionalText | None = None

    def parts(self, kind: Kind, queries: int, keys: int, grid: Grid, text_tokens: int | None) -> tuple[Parts, Parts]:
        """(query parts, key parts) of one attention call at a site of `kind`."""
        if self.layout is not None:
            return self.layout(self, kind, queries, keys, grid, text_tokens)
        image = ("image", grid.tokens)
        if kind in ("self", "self2"):
            return (image,), (image,)
        if kind == "text":
            return (("text", queries),), (("text", keys),)
        if kind == "cross":
            return (image,), (("text", keys),)
        sequence = (("text", queries - grid.tokens), image)
        sequence = sequence if self.order == "text" else sequence[::-1]
        return sequence, sequence

    def scheduler_timestep(self, bound: Mapping[str, Any]) -> Any:
        """The forward's timestep in the scheduler's units, from its bound arguments (None if it has none)."""
        if self.timestep is not None:
            return self.timestep(bound)
        timestep = bound.get("timestep")
        return None if timestep is None else timestep * self.timestep_scale

    def stride_of(self, model: torch.nn.Module) -> int:
        return self.stride(model) if callable(self.stride) else self.stride

    @property
    def model_class(self) -> type | None:
        import diffusers

        return getattr(diffusers, self.model, None)


@cache
def dits() -> tuple[DiT, ...]:
    """Every family described in this package, in module-name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(module.FAMILY)
    return tuple(found)


def dit_of(model: torch.nn.Module) -> DiT | None:
    """The family of `model`, or None if no description covers its class."""
    for family in dits():
        cls = family.model_class
        if cls is not None and isinstance(model, cls):
            return family
    return None
