"""The pipeline model: one description per family of diffusers pipelines, the UNet's included.

A family description holds the neutral facts about a pipeline and its denoiser that attnkit's mechanism and its
features need, so that no feature compares architecture names: where the attention sites are and what kind each is,
how a sequence of tokens is laid out, how big the image token grid is, how the pipeline encodes a prompt and guides,
how it packs latents, which tokenizer produced which text positions. Every modern diffusers attention module runs a
processor that projects, normalises and rotates q, k and v and then calls one attention function; attnkit runs that
processor's own code and takes over only that one call (`attnkit.processors.dispatch`), so a new family needs no
processor copy, only its description. The UNet's stock processors are replayed instead (`replay`).

Each module of this package declares one `FAMILY`; they are found automatically, so adding a family is adding a
module (and its tests).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import torch

from ..errors import AttnkitError

__all__ = ["Family", "Grid", "Kind", "KINDS", "Parts", "SitePattern", "TextInput", "Tokens", "call_parameters", "component_of",
           "denoiser_of", "dits", "duplicated_latents", "families", "family_of",
           # earlier names of the same things
           "DiT", "RegionalText", "dit_of"]

Kind = Literal["self", "cross", "joint", "single", "self2", "text", "linear"]
#: "text": text over text (a DiT's caption refiner); "linear": attention without a softmax (Sana's ReLU linear
#: attention), listed for completeness: no controls run there, since no attention probabilities exist.
KINDS: tuple[str, ...] = ("self", "cross", "joint", "single", "self2", "text", "linear")


@dataclass(frozen=True)
class Grid:
    """Image tokens of one denoiser forward: `frames` x `rows` x `cols` tokens, in that order along the sequence."""

    frames: int
    rows: int
    cols: int

    @property
    def tokens(self) -> int:
        return self.frames * self.rows * self.cols


@dataclass(frozen=True)
class SitePattern:
    """Attention modules whose full module name matches `pattern` (a regex whose first group, if any, is the block
    index; none: block 0) are sites of `kind` in stage `stage` ("joint", "single", "down", ...); `kind` may also be a
    function of the module (the UNet's attention says whether it is cross-attention). Sites run stage by stage, in the
    order the patterns first name the stages, and within a stage by block index (then module name)."""

    pattern: str
    stage: str
    kind: Kind | Callable[[torch.nn.Module], Kind]

    def kind_of(self, module: torch.nn.Module) -> Kind:
        return self.kind(module) if callable(self.kind) else self.kind


Parts = tuple[tuple[str, int], ...]  # (part name, tokens) in sequence order; parts are "image", "text" or "pad"


@dataclass(frozen=True)
class Tokens:
    """What one tensor of a denoiser forward holds along its token axis: its `parts` in order (none: one vector per
    batch item), and for image tokens their `grid` (rows, cols) and `stride` (latent pixels per token side)."""

    parts: Parts
    grid: tuple[int, int] | None
    stride: int | None


@dataclass(frozen=True, eq=False)
class TextInput:
    """How a family's pipeline takes prompt text as embeddings.

    `encode(pipe, prompts, max_sequence_length)` encodes each prompt on its own with the pipeline's own
    `encode_prompt` and returns pipeline keyword arguments with one entry per prompt: a tensor whose batch axis is the
    one before its token axis, or a list of per-prompt tensors (token axis 0) where the pipeline takes variable-length
    text. `sequence` names the arguments that hold token sequences, with their token axis; `pooled` those that hold
    one pooled vector per prompt. Negative prompts go to the same arguments prefixed `negative_`.
    `max_sequence_length`: the default text tokens per prompt (None: the encoder's fixed length, not settable);
    `fixed_tokens(pipe)`: the text tokens the denoiser sees before the part `max_sequence_length` sets (SD3: CLIP's).
    `negative`: "always" when the pipeline guides against a negative prompt by default, "given" when only when one
    is given (true CFG), "never" when it takes none (guidance-distilled models).
    `limits(pipe, max_sequence_length)`: (name, tokenizer, tokens kept) of each text encoder, to tell prompts that
    would be cut short. `arguments`: fixed keyword arguments a call with embeddings takes (e.g. `negative_prompt=None`
    where a pipeline's default negative prompt would clash with negative embeddings). `text_order`: the sequence
    arguments whose tokens make up the denoiser's text, in the order it sees them (default: the first of
    `sequence`), e.g. HiDream's [T5 | Llama | Llama]. `pack(arguments)`: where the pipeline takes text in another form
    than one tensor per argument (cond and `negative_` ones together), what it takes instead, e.g. Lumina 2's
    per-prompt token lists as one padded tensor with its attention mask. `encode_negative`: how negative prompts are
    encoded, where the pipeline encodes them otherwise than prompts (Lumina 2 leaves its system prompt out of the
    negative); default `encode`. `zeros_without_negative(pipe)`: whether the pipeline, given no negative prompt,
    guides against zero embeddings instead of the empty prompt's (SDXL's `force_zeros_for_empty_prompt`).
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
    fixed_tokens: Callable[[Any], int] = lambda pipe: 0
    zeros_without_negative: Callable[[Any], bool] = lambda pipe: False

    def negative_encoder(self) -> Callable[[Any, list[str], int | None], dict[str, Any]]:
        return self.encode_negative if self.encode_negative is not None else self.encode


def _text_tokens(bound: Mapping[str, Any]) -> int | None:
    text = bound.get("encoder_hidden_states")
    return None if text is None else int(text.shape[1])


def _do_classifier_free_guidance(pipe: Any, bound: Mapping[str, Any]) -> bool:
    return bool(getattr(pipe, "do_classifier_free_guidance", False))


def duplicated_latents(pipe: Any, bound: Mapping[str, Any]) -> bool:
    """`guided` for pipelines that keep no record of guiding (a local of their `__call__`): they guide exactly when
    they duplicate the latents into the [uncond, cond] halves of one batch, so a batch whose two halves hold the
    same latents is guided. (An unguided batch whose items were given identical latents would read as guided.)"""
    latents = bound["hidden_states"]
    half = latents.shape[0] // 2
    return latents.shape[0] % 2 == 0 and torch.equal(latents[:half], latents[half:])


@dataclass(frozen=True, eq=False)
class Family:
    """One family of diffusers pipelines, as attnkit needs to know it.

    - `name`: the architecture name attnkit reports (`Site.architecture`, `attnkit sites --json`).
    - `model`: the denoiser class name in `diffusers` (looked up by name, so that an older diffusers without it
      still imports attnkit).
    - `processors`: stock processor class names whose computation attnkit keeps exact around its controls.
    - `sites`: which attention modules are sites of which kind; a module with a processor that matches none is an
      error at discovery, never skipped.
    - `stride`: latent pixels per cell of `grid` (a DiT's patch size, times any packing the pipeline does), or how to
      read it from the model; `block_stride(model)`: where sites of different blocks see different token grids (the
      UNet's down- and up-sampling), the stride of each block ("down.1", "mid.0"), which `multiscale` families round
      up when a side is odd (each down-sampling convolution does); `decoder`: the stage of such a family that draws
      the image back up to the latent's resolution once the layout is set (the UNet's "up" blocks), `encoder` the
      one that draws it down to the bottleneck (the UNet's "down" blocks; its middle stage is neither).
    - `grid`: the token grid of one forward, from the denoiser forward's bound arguments and the model.
    - `streams`: (tokenizer, first position, length) of each tokenizer's stream within the text part of the
      attention calls, given the pipeline and the number of text tokens: which word is which position.
    - `order`: the order of the parts in a sequence that holds text and image tokens ("text" first or "image").
    - `text_tokens`: the text tokens in the denoiser's text sequence, from the forward's arguments;
      `item_text_tokens`: those of every batch item, for families whose pipelines give each item text of its own
      length in one forward (padded there): a CFG batch's prompt and negative prompt, for one.
    - `layout`: (query parts, key parts) of one attention call, from its kind, query and key lengths, the grid and
      the state's text length; the default knows "self" (image over image), "cross" (image over text) and
      "joint"/"single" (one sequence of text and image in `order`). A family whose sequences hold anything else
      (padding, reference images) gives its own.
    - `timestep_scale`: what the forward's timestep is multiplied by to be in the scheduler's units (0-1000);
      `timestep`: the forward's timestep in scheduler units, where it is not its `timestep` argument times that;
      `timestep_argument` and `forward_timestep`: where a forward takes its timestep and what it takes for one in
      scheduler units (default: that divided by `timestep_scale`), so that a forward can be run at a timestep of
      attnkit's choosing (`set_timestep`).
    - `latent_argument`: the forward argument that holds the (packed) latents.
    - `video`: whether the image tokens span several frames.
    - `cfg`: how the pipeline batches classifier-free guidance without naming its branches (`cache_context`):
      in one batch, "uncond-first" (diffusers' usual [uncond, cond]) or "cond-first", or "sequential" (a cond
      forward, then an uncond one, per step); `guided(pipe, bound)`: whether this forward is guided (default: the
      pipeline's `do_classifier_free_guidance`).
    - `guidance`: what `guidance_scale` does: "cfg" (classifier-free guidance, off at 1) or "embedded" (a guidance
      embedding the model was distilled with; classifier-free guidance, if any, is `true_cfg_scale`).
    - `text`: how the pipeline takes prompt embeddings (None: not described).
    - `pack_latents(pipe, latents)`: the pipeline's packing of (batch, channels, rows, cols) latents into the form its
      `latents` argument takes (None: it takes them unpacked).
    - `stream_blocks`: (attribute, stage) of the denoiser's block lists whose blocks take and return both streams
      (`forward(hidden_states, encoder_hidden_states, temb, ...) -> (encoder_hidden_states, hidden_states)`, after a
      `context_embedder`), in execution order: where another text stream can be run through the same blocks.
    - `conditioning(model, bound, pooled)`: the conditioning vector (`temb`) the stream blocks take, from a forward's
      bound arguments with `pooled` in place of its pooled text embedding (None: not described).
    - `concept_defaults`: the settings of ConceptAttention's code (github helblazer811/ConceptAttention) for this
      family's output-space concept maps, where it has code for the family (`attnkit.maps.concepts` names them).
    - `replay`: attnkit replays the stock processors (the UNet's `AttnProcessor2_0` and `AttnProcessor`) instead of
      running their own code; `restore`: how a user gets the stock processors back (`{denoiser}` is filled in).
    - `size_multiple(pipe)`: what image sides must be multiples of (default: the VAE factor times the stride).
    """

    name: str
    model: str
    processors: tuple[str, ...]
    sites: tuple[SitePattern, ...]
    stride: int | Callable[[torch.nn.Module], int]
    grid: Callable[[Mapping[str, Any], torch.nn.Module], Grid]
    streams: Callable[[Any, int], list[tuple[Any, int, int]]]
    order: Literal["text", "image"] = "image"
    block_stride: Callable[[torch.nn.Module], Mapping[str, int]] | None = None
    multiscale: bool = False
    decoder: str | None = None
    encoder: str | None = None
    text_tokens: Callable[[Mapping[str, Any]], int | None] = _text_tokens
    item_text_tokens: Callable[[Mapping[str, Any]], tuple[int, ...]] | None = None
    layout: Callable[[Family, Kind, int, int, Grid, int | None], tuple[Parts, Parts]] | None = None
    timestep_scale: float = 1.0
    timestep: Callable[[Mapping[str, Any]], Any] | None = None
    timestep_argument: str = "timestep"
    forward_timestep: Callable[[float], float] | None = None
    latent_argument: str = "hidden_states"
    video: bool = False
    cfg: Literal["uncond-first", "cond-first", "sequential"] = "uncond-first"
    guided: Callable[[Any, Mapping[str, Any]], bool] = _do_classifier_free_guidance
    guidance: Literal["cfg", "embedded"] = "cfg"
    text: TextInput | None = None
    pack_latents: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    stream_blocks: tuple[tuple[str, str], ...] = ()
    conditioning: Callable[[torch.nn.Module, Mapping[str, Any], torch.Tensor], torch.Tensor] | None = None
    concept_defaults: Mapping[str, Any] = field(default_factory=dict)
    replay: bool = False
    restore: str | None = None
    size_multiple: Callable[[Any], int] | None = None

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

    def set_timestep(self, bound: dict[str, Any], timestep: float) -> None:
        """Put `timestep` (scheduler units) into a forward's bound arguments, in the form the forward takes it."""
        value = self.forward_timestep(timestep) if self.forward_timestep is not None else timestep / self.timestep_scale
        old = bound.get(self.timestep_argument)
        bound[self.timestep_argument] = torch.full_like(old, value) if isinstance(old, torch.Tensor) else value

    def stride_of(self, model: torch.nn.Module) -> int:
        """Latent pixels per cell of `grid`."""
        return self.stride(model) if callable(self.stride) else self.stride

    def latent_of(self, bound: Mapping[str, Any], model: torch.nn.Module) -> tuple[tuple[int, int], int]:
        """(latent rows, latent cols) and token frames of one forward; a video's frames are stacked top to bottom."""
        grid = self.grid(bound, model)
        stride = self.stride_of(model)
        return (grid.frames * grid.rows * stride, grid.cols * stride), grid.frames

    def token_grid(self, latent: tuple[int, int], stride: int) -> tuple[int, int]:
        """Token grid (rows, cols) of a site of `stride` for a denoiser input of `latent` latent pixels."""
        if self.multiscale:  # each down-sampling convolution rounds odd sizes up
            return math.ceil(latent[0] / stride), math.ceil(latent[1] / stride)
        return latent[0] // stride, latent[1] // stride

    def tokens_in(self, shape: tuple[int, ...], latent: tuple[int, int], text_tokens: int | None,
                  model: torch.nn.Module) -> list[Tokens]:
        """Every reading of what a tensor of `shape` inside one denoiser forward holds along its token axis: a map
        of image cells (batch, channels, rows, cols) or a sequence (batch, tokens, channels) of image tokens at some
        stride of `latent`, of the forward's `text_tokens`, or of both in `order`; none for a vector per batch item
        (batch, channels), and none where the shape fits nothing. Modules outside attention (a LoRA's layers) learn
        their tokens this way."""
        if len(shape) == 2:
            return [Tokens((), None, None)]
        own = self.stride_of(model)
        strides = sorted({1, own, *(2 ** i for i in range(8) if self.multiscale)})
        grids = {stride: self.token_grid(latent, stride) for stride in strides}
        if len(shape) == 4:
            return [Tokens((("image", rows * cols),), (rows, cols), stride) for stride, (rows, cols) in grids.items()
                    if (rows, cols) == tuple(shape[2:])][:1]
        if len(shape) != 3:
            return []
        tokens, found = shape[1], []
        if text_tokens is not None and tokens == text_tokens:
            found.append(Tokens((("text", tokens),), None, None))
        for stride, (rows, cols) in grids.items():
            image = ("image", rows * cols)
            if tokens == rows * cols:
                found.append(Tokens((image,), (rows, cols), stride))
            elif text_tokens and tokens == rows * cols + text_tokens and self.joins_text:
                text = ("text", text_tokens)
                found.append(Tokens((text, image) if self.order == "text" else (image, text), (rows, cols), stride))
        return found

    @property
    def joins_text(self) -> bool:
        """Whether some sequence of this family holds text and image tokens together (joint or single-stream
        sites)."""
        return any(pattern.kind in ("joint", "single") for pattern in self.sites if not callable(pattern.kind))

    def pixels_per_cell(self, pipe: Any) -> int:
        """Image pixels per side of one cell of the grid region masks and sizes are laid on: one latent pixel on a
        `multiscale` family (each level averages the latent grid down), one token elsewhere."""
        stride = 1 if self.multiscale else self.stride_of(denoiser_of(pipe))
        return int(pipe.vae_scale_factor) * stride

    def multiple_of(self, pipe: Any) -> int:
        """What image sides must be multiples of for `pipe` (its pipeline would silently round other sizes down)."""
        if self.size_multiple is not None:
            return self.size_multiple(pipe)
        return int(getattr(pipe, "vae_scale_factor", 8)) * self.stride_of(denoiser_of(pipe))

    def replaces(self, processor: object) -> bool:
        """Whether attnkit can take over a site whose processor is `processor` and keep it exact."""
        return type(processor).__name__ in self.processors

    def advice(self, refused: set[str], denoiser: str) -> str:
        """How to get processors attnkit can replay, for the refused processor class names."""
        if any(name.startswith("Fused") for name in refused):
            return ("these sites have fused q/k/v projections: call `pipe.unfuse_qkv_projections()` (or "
                    f"`{denoiser}.unfuse_qkv_projections()`) before attaching, and fuse again afterwards")
        restore = self.restore or (f"give those sites back their stock {self.processors[0]} "
                                   f"(`{{denoiser}}.set_attn_processor({self.processors[0]}())` where the model has "
                                   "it, or reload the model)")
        return restore.format(denoiser=denoiser) + ", or unload the adapter that installed them (IP-Adapter: " \
            "`pipe.unload_ip_adapter()`), or select other sites"

    @property
    def model_class(self) -> type | None:
        import diffusers

        return getattr(diffusers, self.model, None)

    @property
    def dit(self) -> Family | None:
        """This family when its denoiser is a transformer (one token grid), else None: the earlier
        `Architecture.dit`."""
        return None if self.multiscale else self


@cache
def families() -> tuple[Family, ...]:
    """Every family described in this package, in module-name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(module.FAMILY)
    return tuple(found)


def dits() -> tuple[Family, ...]:
    """The transformer families (one token grid per forward): every family but the UNet's and its ControlNet's."""
    return tuple(family for family in families() if not family.multiscale)


def component_of(pipe: Any, component: str) -> torch.nn.Module:
    """The model at `component` of a pipeline: a component's name ("controlnet"), or a dotted path inside one
    ("controlnet.nets.0", a ControlNet of a `MultiControlNetModel`)."""
    components = getattr(pipe, "components", None)
    if isinstance(pipe, torch.nn.Module) or not isinstance(components, dict):
        raise AttnkitError(f"component={component!r} names a part of a pipeline; got {type(pipe).__name__}. Pass "
                           "the pipeline that holds it.")
    head, _, rest = component.partition(".")
    model = components.get(head)
    if not isinstance(model, torch.nn.Module):
        held = sorted(name for name, value in components.items() if isinstance(value, torch.nn.Module))
        raise AttnkitError(f"{type(pipe).__name__} has no model component {head!r}; it has {', '.join(held)}.")
    try:
        return model.get_submodule(rest) if rest else model
    except AttributeError as error:
        raise AttnkitError(f"{component!r} is not a module of {type(pipe).__name__}: {error}.") from None


def denoiser_of(obj: Any) -> torch.nn.Module:
    """The attention-bearing denoiser of a pipeline (its `transformer` or `unet`), or the model itself."""
    if isinstance(obj, torch.nn.Module):
        model = obj
    else:
        components = getattr(obj, "components", None)
        if not isinstance(components, dict):
            raise AttnkitError(
                f"expected a diffusers pipeline or model, got {type(obj).__name__}. "
                "Pass e.g. a StableDiffusion3Pipeline or its `transformer`."
            )
        model = next((components[k] for k in ("transformer", "unet") if components.get(k) is not None), None)
        if model is None:
            raise AttnkitError(
                f"{type(obj).__name__} has no `transformer` or `unet` component, so attnkit finds no denoiser. "
                f"Components: {sorted(k for k, v in components.items() if v is not None)}."
            )
    family_of(model)
    return model


def family_of(obj: Any) -> Family:
    """The family of a pipeline, of its denoiser, or of a denoiser model; an error naming the supported ones."""
    if isinstance(obj, Family):
        return obj
    model = obj if isinstance(obj, torch.nn.Module) else denoiser_of(obj)
    for family in families():
        cls = family.model_class
        if cls is not None and isinstance(model, cls):
            return family
    modules = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "get_processor")})
    reason = (f"it has attention modules ({', '.join(modules)}), but attnkit does not know their token layout"
              if modules else "it has no attention processors at all")
    raise AttnkitError(
        f"unsupported model {type(model).__name__}: {reason}. attnkit supports "
        f"{', '.join(f.model for f in families())}; a new family is described in one module of `attnkit.families`."
    )


def dit_of(model: torch.nn.Module) -> Family | None:
    """The transformer family of `model`, or None (a UNet, or an unsupported model)."""
    try:
        family = family_of(model)
    except AttnkitError:
        return None
    return family.dit


def call_parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of `pipe`'s `__call__`: what a feature may pass this family's pipeline, and their defaults."""
    return inspect.signature(type(pipe).__call__).parameters


#: Earlier names: a transformer family was a `DiT`, a pipeline's text input its `RegionalText`.
DiT = Family
RegionalText = TextInput
