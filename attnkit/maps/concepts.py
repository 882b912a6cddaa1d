"""Output-space concept maps (ConceptAttention, Helbling et al., ICML 2025) for MMDiT transformers: SD3, SD3.5, Flux.1.

    with attnkit.maps.trace(pipe, prompt, space="output", concepts=["cat", "sky", "background"]) as tc:
        image = pipe(prompt).images[0]
    tc.heatmap("cat")     # (rows, cols), the share of "cat" among the concepts at every image token
    attnkit.maps.concept_maps_of_image(pipe, photo, ["cat", "sky"], prompt="a cat")   # an existing image

Concept words, absent from the prompt or not, are encoded with the pipeline's own `encode_prompt` (at the text length
the pipeline gives its prompt) and the transformer's `context_embedder`, and form an extra token stream that goes
through the same blocks as the text stream, with the blocks' own weights, adaLN and MLPs: after each block's normal
forward, a named hook (`attnkit.concepts.<id>`, from `attnkit.blocks`) calls the block's own code once more with the
block's image input and the concept stream in place of the text. attnkit's site processors see that second call
marked in the session state (`phase="concepts"`, `exclusive`: no other session's feature sees it), and
`ConceptRecorder` computes there the concept queries' attention over the image keys and the concept keys; image and
prompt tokens never attend to concepts in the normal call, so the generated image is bit-identical to a run without
the trace.

The map of one site and step compares the image tokens' attention outputs with each concept's (heads concatenated,
before the output projections; a concept of several tokens takes the mean of its tokens' outputs). The choices, each
an option, default to what ConceptAttention's code does for the family (`Family.concept_defaults`; github
helblazer811/ConceptAttention: Flux at 8c2709c, SD3 at db30c4d), else to attnkit's earlier choices (marked *):
- `encoding`: "alone"* (each concept encoded alone, within `template`, all its tokens), "first-token" (alone, its
  first token only: the Flux code's T5 first token) or "joined" (one prompt of the concepts joined by spaces, its
  first text stream from its start token through the last concept token: the SD3 code's CLIP tokens, the start token
  attending but mapping nothing);
- `pooled`: the concept stream's conditioning, "prompt"* (the block's own, as the SD3 code) or "zero" (the timestep's
  and guidance's with a zero pooled vector, as the Flux code; the image keys and values the concepts see stay the
  prompt call's);
- `image_outputs`: the image outputs the concepts are compared with, those of the "prompt"* call (the Flux code) or
  of the "concepts" call (the SD3 code: there the image queries attend to the concept keys too);
- `combine`: over sites and steps, "logits"* (softmax over the concepts of the mean dot products), "softmax" (mean
  of the per-site, per-step softmaxes: the Flux code) or "vectors" (per site, the concept and image outputs averaged
  over steps, the concept vectors L2-normalised, a softmax per site, their mean: the SD3 code).
At every image token the concepts' maps sum to 1. Sites default to ConceptAttention's layers: every SD3 joint block
(its SD3 pipeline averages all layers), on Flux the last four double-stream blocks (layers 15-18 of FLUX.1's 19),
single-stream blocks selectable with `kind="single"`; steps default to all. `concept_maps_of_image` reads an existing
image as the code's `encode_image` does: one forward at a noised step of a short schedule.

Where attnkit differs from the code: it reads the cond half of a CFG batch (the SD3 code reads the first batch item,
the uncond one, when it guides; its published runs do not guide); `concept_maps_of_image` encodes the VAE posterior
mean where the code draws an unseeded posterior sample, and draws the noise from `seed`; with "joined" a concept of
several tokens takes their mean where the SD3 code assumes one token per concept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..blocks import AfterBlocks, stream_blocks
from ..errors import AttnkitError
from ..families import denoiser_of, families, family_of
from ..files import save_safetensors
from ..pipeline import clean_latent, single_forward
from ..processors import AttentionCall, Control
from ..session import Session
from ..sites import Site, SiteList, choose, sites
from ..state import State
from ..tokens import prompt_tokens

__all__ = ["COMBINES", "ConceptOptions", "ConceptRecorder", "ConceptTrace", "ENCODINGS", "IMAGE_OUTPUTS", "PHASE",
           "POOLED", "concept_maps_of_image", "concept_trace", "default_sites", "encode_concepts"]

#: `State.phase` of the concept pass through a block.
PHASE = "concepts"
#: How per-site, per-step maps are combined (module docstring).
COMBINES = ("logits", "softmax", "vectors")
#: How concepts become tokens of the concept stream.
ENCODINGS = ("alone", "first-token", "joined")
#: What conditions the concept stream: the block's conditioning, or the timestep's with a zero pooled vector.
POOLED = ("prompt", "zero")
#: Which call's image outputs the concepts are compared with.
IMAGE_OUTPUTS = ("prompt", "concepts")
#: ConceptAttention's Flux default: the last four double-stream blocks (layers 15-18 of FLUX.1's 19).
FLUX_DEFAULT_BLOCKS = 4
#: ConceptAttention's SD3 code adds this to each concept vector's norm before dividing by it.
L2_EPSILON = 1e-8
_BRANCHES = ("cond", "uncond")
_TEXT_KINDS = frozenset({"joint", "single"})


@dataclass(frozen=True)
class ConceptOptions:
    """How concept maps are made (module docstring): `encoding`, `pooled`, `image_outputs`, `combine`, and the
    `template` concepts are encoded within ("{}": alone; "alone" and "first-token" only)."""

    encoding: str = "alone"
    pooled: str = "prompt"
    image_outputs: str = "prompt"
    combine: str = "logits"
    template: str = "{}"

    @classmethod
    def of(cls, pipe: Any, given: dict[str, Any]) -> ConceptOptions:
        """The options given, the rest from the family's `concept_defaults` (else attnkit's), checked."""
        defaults = {f.name: v for f in fields(cls) if (v := family_of(pipe).concept_defaults.get(f.name)) is not None}
        options = cls(**{**defaults, **{k: v for k, v in given.items() if v is not None}})
        for name, allowed in (("encoding", ENCODINGS), ("pooled", POOLED), ("image_outputs", IMAGE_OUTPUTS),
                              ("combine", COMBINES)):
            value = getattr(options, name)
            if value not in allowed:
                raise AttnkitError(f"{name}={value!r}: choose one of {', '.join(map(repr, allowed))} (see "
                                   "attnkit.maps.concepts).")
        if not isinstance(options.template, str) or options.template.count("{}") != 1:
            raise AttnkitError(f"template={options.template!r} must hold one '{{}}' where each concept goes, e.g. "
                               "'a {}'.")
        if options.encoding == "joined" and options.template != "{}":
            raise AttnkitError("encoding='joined' encodes the concepts as one prompt of them, without a template: "
                               "leave template out, or use encoding='alone'.")
        if options.pooled == "zero" and family_of(pipe).conditioning is None:
            raise AttnkitError(f"pooled='zero' conditions the concepts on a zero pooled vector, which "
                               f"{type(pipe).__name__}'s family does not describe how to do: use pooled='prompt'.")
        return options


class ConceptRecorder(Control):
    """Compares every selected site's concept outputs with its image outputs at every recorded step; `total`
    (items, concepts, rows, cols) sums the per-(site, step) logits or softmaxes (`combine` "logits", "softmax") or
    holds the per-site softmaxes of the step-averaged vectors ("vectors"), and `count` is what divides it into the
    mean. It also owns the concept stream between blocks of one forward."""

    name = "concept maps"
    masks = True  # supplies the concept kernel of the second call

    def __init__(self, pipe: Any, record: SiteList, concepts: Sequence[str], *, steps: Iterable[int] | None = None,
                 branch: str = "cond", options: ConceptOptions | None = None) -> None:
        if branch not in _BRANCHES:
            raise AttnkitError(f"branch={branch!r}: choose 'cond' or 'uncond'.")
        self.pipe = pipe
        self.model = denoiser_of(pipe)
        self.family = family_of(self.model)
        self.sites = record
        self.concepts = list(concepts)
        self.steps = None if steps is None else frozenset(steps)
        self.branch = branch
        self.options = options or ConceptOptions.of(pipe, {})
        self.combine = self.options.combine
        self.calls = 0  # (site, forward) pairs compared
        self.steps_recorded: set[int | None] = set()
        self.forwards: set[int] = set()
        self._record = frozenset(record.names)
        self._total: torch.Tensor | None = None
        self._count = 0
        self._vectors: dict[str, list[Any]] = {}  # "vectors": site -> [concept sum, image sum, steps, grid]
        self._embeds: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (text length, embeddings, averaging)
        self._stream: torch.Tensor | None = None
        self._rotary: Any = None
        self._temb: tuple[int, torch.Tensor] | None = None  # (forward, the concepts' conditioning)
        self._image_out: dict[str, torch.Tensor] = {}
        self._image_qkv: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def recording(self, state: State) -> bool:
        """Whether this denoiser forward gets a concept pass: a selected step with items of the branch."""
        if self.steps is not None:
            if state.step is None:
                raise AttnkitError("`steps` selects denoising steps of a pipeline run, but this denoiser call has "
                                   "no step: run the pipeline (not the bare denoiser) inside the trace.")
            if state.step not in self.steps:
                return False
        return bool(state.batch_index(self.branch))

    def before(self, call: AttentionCall) -> None:
        if call.state.phase == PHASE and call.site.kind in _TEXT_KINDS:
            call.use_kernel(self._concept_kernel, self.name)

    def _concept_kernel(self, call: AttentionCall) -> tuple[torch.Tensor, None]:
        """The concept call's attention: the concept queries' over all its keys (image and concepts), and where the
        image outputs of this call are compared, the image queries' too; rows never read stay zero. With a zero
        pooled vector the image queries, keys and values are the prompt call's."""
        q, k, v = call.q, call.k, call.v
        stored = self._image_qkv.pop(call.site.name, None)
        if stored is not None:
            image, keys = call.layout.span("queries", "image"), call.layout.span("keys", "image")
            q, k, v = q.clone(), k.clone(), v.clone()
            q[:, :, image], k[:, :, keys], v[:, :, keys] = stored
        compared = self.options.image_outputs == "concepts" and call.site.name in self._record
        rows = slice(None) if compared else call.layout.span("queries", "text")
        mask = call.mask
        if mask is not None and mask.ndim >= 2 and mask.shape[-2] != 1:
            mask = mask[..., rows, :]
        out = torch.zeros_like(q)
        out[:, :, rows] = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=mask, scale=call.scale)
        return out, None

    def after(self, call: AttentionCall, out: torch.Tensor, lse: torch.Tensor | None) -> None:
        state = call.state
        if state.phase != PHASE:
            if not self.recording(state):
                return
            items = state.batch_index(self.branch)
            image = call.layout.span("queries", "image")
            if self.options.pooled == "zero" and call.site.kind in _TEXT_KINDS:  # for this block's concept pass
                keys = call.layout.span("keys", "image")
                self._image_qkv[call.site.name] = (call.q[items][:, :, image], call.k[items][:, :, keys],
                                                   call.v[items][:, :, keys])
            if call.site.name in self._record and self.options.image_outputs == "prompt":
                self._image_out[call.site.name] = out[items][:, :, image].transpose(1, 2).flatten(2)
            return
        if call.site.name not in self._record:
            return
        if self.options.image_outputs == "prompt":
            image = self._image_out.pop(call.site.name)
        else:
            image = out[:, :, call.layout.span("queries", "image")].transpose(1, 2).flatten(2)
        if call.grid is None:
            raise AttnkitError(f"{call.site.name} has no image grid: the latent size is unknown. Run the pipeline or "
                               "the denoiser inside the trace.")
        concept = out[:, :, call.layout.span("queries", "text")].transpose(1, 2).flatten(2)
        _, average = self._embeds[1:]
        work = torch.promote_types(concept.dtype, torch.float32)
        per_concept = torch.einsum("kt,btd->bkd", average.to(work), concept.to(work))
        image = image.to(work)
        if self.combine == "vectors":
            self._add_vectors(call.site.name, per_concept, image, tuple(call.grid))
        else:
            heat = torch.einsum("bnd,bkd->bkn", image, per_concept)
            heat = heat.reshape(*heat.shape[:2], *call.grid)
            self._add(heat.softmax(1) if self.combine == "softmax" else heat, state)
        self.calls += 1
        self.forwards.add(state.forwards)
        self.steps_recorded.add(state.step)

    def _add(self, heat: torch.Tensor, state: State) -> None:
        resolution = max((s.grid(state.latent) for s in self.sites), key=lambda grid: grid[0] * grid[1])
        if tuple(heat.shape[-2:]) != resolution:
            heat = F.interpolate(heat, size=resolution, mode="bilinear", align_corners=False)
        if self._total is None:
            self._total = torch.zeros_like(heat)
        if heat.shape != self._total.shape:
            raise AttnkitError(f"this trace recorded concept maps of shape {tuple(self._total.shape)}, now gets "
                               f"{tuple(heat.shape)}: run one generation per trace.")
        self._total += heat
        self._count += 1

    def _add_vectors(self, site: str, concept: torch.Tensor, image: torch.Tensor, grid: tuple[int, int]) -> None:
        kept = self._vectors.get(site)
        if kept is None:
            self._vectors[site] = [concept.clone(), image.clone(), 1, grid]
            return
        if kept[0].shape != concept.shape or kept[1].shape != image.shape:
            raise AttnkitError(f"this trace recorded concept vectors of shapes {tuple(kept[1].shape)}, now gets "
                               f"{tuple(image.shape)}: run one generation per trace.")
        kept[0] += concept
        kept[1] += image
        kept[2] += 1

    @property
    def total(self) -> torch.Tensor | None:
        """The maps added so far (None before any); with "vectors", each site's softmax of its step-averaged
        vectors, summed over sites."""
        if self.combine != "vectors" or not self._vectors:
            return self._total
        resolution = max((grid for *_, grid in self._vectors.values()), key=lambda grid: grid[0] * grid[1])
        total = None
        for concept, image, steps, grid in self._vectors.values():
            concept, image = concept / steps, image / steps
            concept = concept / (concept.norm(dim=-1, keepdim=True) + L2_EPSILON)
            heat = torch.einsum("bnd,bkd->bkn", image, concept).softmax(1)
            heat = heat.reshape(*heat.shape[:2], *grid)
            if grid != resolution:
                heat = F.interpolate(heat, size=resolution, mode="bilinear", align_corners=False)
            total = heat if total is None else total + heat
        return total

    @property
    def count(self) -> int:
        """The maps `total` sums per batch item: (site, step) pairs, or sites with "vectors"."""
        return len(self._vectors) if self.combine == "vectors" else self._count

    def concept_pass(self, block: torch.nn.Module, first: bool, last: bool, state: State,
                     arguments: dict[str, Any]) -> None:
        """Run `block`'s own forward once more on its image input and the concept stream (the branch's items only),
        and keep the concept stream it returns for the next block."""
        if not self.recording(state):
            return
        items = state.batch_index(self.branch)
        if first:
            self._start_stream(state, len(items), arguments.get("image_rotary_emb"))
        if self._stream is None:
            raise AttnkitError("the concept stream did not reach this block: the transformer skipped its first "
                               "block or ran blocks out of order (skip-layer guidance?), which concept maps cannot "
                               "follow.")
        temb = self._conditioning(state, items) if self.options.pooled == "zero" else arguments["temb"][items]
        call = {**arguments, "hidden_states": arguments["hidden_states"][items],
                "encoder_hidden_states": self._stream, "temb": temb}
        if self._rotary is not None:
            call["image_rotary_emb"] = self._rotary
        saved = state.phase, state.exclusive, state.text_tokens
        state.phase, state.exclusive, state.text_tokens = PHASE, True, self._stream.shape[1]
        try:
            stream, _ = type(block).forward(block, **call)  # the block's own code, under no hook
        finally:
            state.phase, state.exclusive, state.text_tokens = saved
        self._stream = None if last else stream

    def _conditioning(self, state: State, items: list[int]) -> torch.Tensor:
        """The concepts' conditioning with a zero pooled vector: the family's, from this forward's arguments."""
        if self._temb is None or self._temb[0] != state.forwards:
            bound = {name: value[items] if isinstance(value, torch.Tensor) and value.ndim and
                     value.shape[0] == len(state.branches) else value for name, value in state.arguments.items()}
            pooled = next(value for name, value in bound.items() if name.startswith("pooled"))
            self._temb = (state.forwards, self.family.conditioning(self.model, bound, torch.zeros_like(pooled)))
        return self._temb[1]

    def _start_stream(self, state: State, items: int, rotary: Any) -> None:
        """The concept tokens as the first block's text input, and (Flux) their rotary embedding: the text rows', all
        at position 0, so a concept sits where every prompt token sits."""
        embeds, _ = self.embeddings(state.text_tokens)
        self._stream = self.model.context_embedder(embeds)[None].expand(items, -1, -1)
        self._rotary = None
        if rotary is not None:
            tokens, text = embeds.shape[0], state.text_tokens
            self._rotary = tuple(torch.cat([part[:1].expand(tokens, -1), part[text:]]) for part in rotary)

    def embeddings(self, text_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings (tokens, dim) of the concept stream, averaging matrix (concepts, tokens)), encoded once,
        at the text length the pipeline gave its prompt (padding changes T5 embeddings)."""
        if text_tokens is None:
            raise AttnkitError("the denoiser was called without `encoder_hidden_states`; concept maps encode their "
                               "concepts at the prompt's text length.")
        if self._embeds is None or self._embeds[0] != text_tokens:
            embeds, average = encode_concepts(self.pipe, self.concepts, text_tokens, self.options.template,
                                              self.options.encoding)
            dtype = next(self.model.context_embedder.parameters()).dtype
            self._embeds = (text_tokens, embeds.to(dtype), average.to(embeds.device))
        return self._embeds[1], self._embeds[2]

    def end_forward(self) -> None:
        """Drop what one forward left behind (a pass cut short by an exception)."""
        self._stream, self._rotary = None, None
        self._image_out.clear()
        self._image_qkv.clear()

    def check(self) -> None:
        """An error unless maps were recorded, and every selected site added one map to every recorded forward."""
        if self.calls == 0:
            raise AttnkitError(
                "no concept maps were recorded. Did you run the pipeline inside `with attnkit.maps.trace(...)`? "
                f"Check also `steps` ({sorted(self.steps) if self.steps is not None else 'all'}) and the branch "
                f"({self.branch!r}: without CFG there is no 'uncond' branch).")
        expected = len(self._record) * len(self.forwards)
        if self.calls != expected:
            raise AttnkitError(
                f"incomplete concept maps: {self.calls} site maps over {len(self.forwards)} denoiser call(s) of "
                f"{len(self._record)} selected site(s), expected {expected}. Another feature changed those processors "
                "or the model skipped layers: select only sites that run at every step.")


def encode_concepts(pipe: Any, concepts: Sequence[str], text_tokens: int, template: str = "{}",
                    encoding: str = "alone") -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of the concept stream's tokens (tokens, dim) and the (concepts, tokens) matrix that averages each
    concept's tokens, encoded as the pipeline encodes a prompt at the prompt's text length: each concept alone
    within `template`, all its tokens ("alone") or its first ("first-token"), or all concepts joined by spaces into
    one prompt ("joined"), whose first text stream the concept stream is from its start through the last concept
    token."""
    family = family_of(pipe)
    max_sequence_length = max(text_tokens - family.text.fixed_tokens(pipe), 0)
    with torch.no_grad():
        if encoding == "joined":
            return _joined(pipe, concepts, max_sequence_length)
        offset = template.index("{}")
        rows, owners = [], []
        for index, concept in enumerate(concepts):
            phrase = template.format(concept)
            embeds = family.text.encode(pipe, [phrase], max_sequence_length)["prompt_embeds"]
            positions = _positions(pipe, phrase, embeds.shape[1], offset, concept)
            positions = positions[:1] if encoding == "first-token" else positions
            rows.append(embeds[0, positions])
            owners += [index] * len(positions)
    owner = torch.tensor(owners)
    return torch.cat(rows), _averaging(owner[None] == torch.arange(len(concepts))[:, None])


def _joined(pipe: Any, concepts: Sequence[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The concepts as one prompt: its first text stream from its start up to the last concept token."""
    family = family_of(pipe)
    phrase = " ".join(concepts)
    embeds = family.text.encode(pipe, [phrase], max_sequence_length)["prompt_embeds"][0]
    _, first, length = family.streams(pipe, embeds.shape[0])[0]
    starts = [sum(len(c) + 1 for c in concepts[:i]) for i in range(len(concepts))]
    owned = [[p for p in _positions(pipe, phrase, embeds.shape[0], start, concept) if first <= p < first + length]
             for start, concept in zip(starts, concepts)]
    for concept, positions in zip(concepts, owned):
        if not positions:
            raise AttnkitError(f"concept {concept!r} has no token in the first text stream of the joined concepts "
                               f"{phrase!r}: name fewer concepts, or use encoding='alone'.")
    end = max(p for positions in owned for p in positions) + 1
    mask = torch.zeros(len(concepts), end - first, dtype=torch.bool)
    for index, positions in enumerate(owned):
        mask[index, [p - first for p in positions]] = True
    return embeds[first:end], _averaging(mask)


def _positions(pipe: Any, phrase: str, text_tokens: int, start: int, concept: str) -> list[int]:
    """The positions of the tokens of `concept`, which begins at character `start` of `phrase`."""
    words = prompt_tokens(pipe, phrase, text_tokens).words
    positions = [p for word in words if start <= word.start < start + len(concept) for p in word.positions]
    if not positions:
        raise AttnkitError(f"concept {concept!r} has no token the pipeline's text encoders see; name it with letters "
                           "or digits.")
    return positions


def _averaging(owned: torch.Tensor) -> torch.Tensor:
    """(concepts, tokens) rows that average each concept's tokens, from a boolean ownership matrix."""
    owned = owned.double()
    return owned / owned.sum(1, keepdim=True)


def default_sites(pipe: Any) -> SiteList:
    """ConceptAttention's layers: every joint block (its SD3 pipeline averages all layers), and where single-stream
    blocks follow them (Flux) the last four joint blocks only (its Flux pipeline takes layers 15-18 of FLUX.1's 19)."""
    found = sites(pipe)
    joint = found.select(kind="joint")
    if not any(site.kind == "single" for site in found):
        return joint
    blocks = list(dict.fromkeys(s.block for s in joint))[-FLUX_DEFAULT_BLOCKS:]
    return SiteList(s for s in joint if s.block in blocks)


class ConceptTrace:
    """A concept recorder and its block hooks on one pipeline for a `with` block; maps are read after it."""

    def __init__(self, pipe: Any, recorder: ConceptRecorder, prompt: Any) -> None:
        self.pipe = pipe
        self.recorder = recorder
        self.prompt = prompt
        self.concepts = recorder.concepts
        blocks = stream_blocks(recorder.model, recorder.family)
        names = [name for name, _ in blocks]
        last = max(names.index(site.block) for site in recorder.sites)
        hooked = set(names[: last + 1])
        # every site of the blocks the stream passes, so that the pass is exclusive there too (SD3.5's attn2)
        passed = SiteList(s for s in sites(pipe) if s.block in hooked)
        self.session = Session(pipe, [(recorder, passed)])
        self.hooks = AfterBlocks([block for _, block in blocks[: last + 1]], self._concept_pass,
                                 f"attnkit.concepts.{id(self):x}")
        self._failed = False

    def _concept_pass(self, index: int, block: torch.nn.Module, arguments: dict[str, Any]) -> None:
        self.recorder.concept_pass(block, index == 0, index == len(self.hooks.blocks) - 1, self.session.state,
                                   arguments)

    def __enter__(self) -> ConceptTrace:
        self.session.__enter__()
        try:
            self.hooks.__enter__()
        except BaseException:
            self.session.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        try:
            self.hooks.__exit__(None, None, None)
            self.recorder.end_forward()
        finally:
            self.session.__exit__(None, None, None)
        self._failed = exc_type is not None

    def _checked(self) -> ConceptRecorder:
        if self._failed:
            raise AttnkitError("the traced generation raised an exception, so its concept maps are incomplete.")
        self.recorder.check()
        return self.recorder

    @property
    def total(self) -> torch.Tensor:
        """(batch items, concepts, rows, cols), at least fp32: summed logits (`combine="logits"`) or softmaxes
        ("softmax": one per site and step; "vectors": one per site)."""
        return self._checked().total

    @property
    def count(self) -> int:
        """The maps summed into `total` per batch item: (site, step) pairs, or sites with "vectors"."""
        return self._checked().count

    @property
    def maps(self) -> torch.Tensor:
        """(items, concepts, rows, cols): each image token's distribution over the concepts (sums to 1)."""
        mean = self.total / self.count
        return mean.softmax(1) if self.recorder.combine == "logits" else mean

    def index(self, concept: str) -> int:
        """Position of `concept` among the traced concepts (any case)."""
        for index, name in enumerate(self.concepts):
            if name.lower() == concept.strip().lower():
                return index
        raise AttnkitError(f"{concept!r} is not one of the traced concepts ({', '.join(self.concepts)}); concepts "
                           "are encoded when the trace starts: add it to `concepts=[...]` and generate again.")

    def heatmap(self, concept: str, item: int = 0) -> torch.Tensor:
        """(rows, cols) share of `concept` among the concepts at every image token of batch item `item`."""
        index = self.index(concept)
        maps = self.maps
        if not 0 <= item < maps.shape[0]:
            raise AttnkitError(f"item={item} is out of range: this trace recorded {maps.shape[0]} batch item(s).")
        return maps[item, index]

    def word_maps(self, concepts: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """{concept: (batch items, rows, cols)} for `concepts` (default all), as `word_maps` of probability maps."""
        chosen = self.concepts if concepts is None else [self.concepts[self.index(c)] for c in concepts]
        maps = self.maps
        return {c: maps[:, self.index(c)] for c in dict.fromkeys(chosen)}

    def save(self, path: str | Path, concepts: Iterable[str] | None = None) -> None:
        """Maps as safetensors: `maps` (items, concepts, rows, cols), `concept.<c>` per concept, a JSON header."""
        tensors = {"maps": self.maps.contiguous()}
        tensors |= {f"concept.{c}": heat.contiguous() for c, heat in self.word_maps(concepts).items()}
        metadata = {
            "space": "output",
            "concepts": json.dumps(self.concepts),
            **{f.name: str(getattr(self.recorder.options, f.name)) for f in fields(ConceptOptions)},
            "architecture": self.recorder.family.name,
            "sites": json.dumps(self.recorder.sites.names),
            "steps": json.dumps(sorted(s for s in self.recorder.steps_recorded if s is not None)),
            "branch": self.recorder.branch,
            "count": str(self.count),
        }
        if isinstance(self.prompt, str) or (isinstance(self.prompt, Sequence) and self.prompt):
            metadata["prompts"] = json.dumps([self.prompt] if isinstance(self.prompt, str) else list(self.prompt))
        save_safetensors({k: v.cpu() for k, v in tensors.items()}, path, metadata)


def concept_trace(pipe: Any, prompt: Any, concepts: Sequence[str] | None, *, steps: Iterable[int] | None = None,
                  branch: str = "cond", sites_: Iterable[Site] | None = None, combine: str | None = None,
                  template: str | None = None, encoding: str | None = None, pooled: str | None = None,
                  image_outputs: str | None = None, **selection: Any) -> ConceptTrace:
    """`attnkit.maps.trace(..., space="output")`: checks the model, the concepts, the options (None: the family's
    ConceptAttention default, else attnkit's) and the sites."""
    model = denoiser_of(pipe)
    family = family_of(model)
    if not family.stream_blocks:
        streaming = ", ".join(f.name for f in families() if f.stream_blocks)
        raise AttnkitError(
            f"space='output' needs a transformer with a joint text stream ({streaming}): concept tokens run as a text "
            f"stream of their own through its blocks. {type(model).__name__} ({family.name}) has no such blocks that "
            "attnkit knows"
            + (" (it takes text only as cross-attention keys and values)" if family.multiscale else "")
            + ". Use space='probability' for word maps there.")
    names = _concept_names(concepts)
    options = ConceptOptions.of(pipe, {"combine": combine, "template": template, "encoding": encoding,
                                       "pooled": pooled, "image_outputs": image_outputs})
    chosen = choose(pipe, sites_, selection, default_sites, _TEXT_KINDS)
    unfit = [f"{s.name} ({s.kind})" for s in chosen if s.kind not in _TEXT_KINDS]
    if unfit:
        raise AttnkitError(f"concept maps need sites with a text stream (kind joint or single); {len(unfit)} selected "
                           f"site(s) have none: {', '.join(unfit[:3])}. Select kind=['joint', 'single'].")
    recorder = ConceptRecorder(pipe, chosen, names, steps=steps, branch=branch, options=options)
    return ConceptTrace(pipe, recorder, prompt)


#: ConceptAttention's existing-image protocol (`encode_image` of its Flux and SD3 pipelines): a 4-step schedule,
#: the image noised to step 2 (Flux: t = 0.5 on FLUX.1-schnell's unshifted schedule; SD3: `timestep_index=-2`).
IMAGE_STEPS, IMAGE_STEP = 4, 2


def concept_maps_of_image(pipe: Any, image: Image.Image, concepts: Sequence[str], prompt: str = "", *, seed: int = 0,
                          steps: int = IMAGE_STEPS, step: int = IMAGE_STEP, call: dict[str, Any] | None = None,
                          **options: Any) -> ConceptTrace:
    """Output-space concept maps of an existing `image`, as ConceptAttention's `encode_image` reads one: its clean
    latent (the VAE posterior mean) noised (noise from `seed`) to step `step` of a `steps`-step schedule, one denoiser
    forward with `prompt`, unguided; on Flux, as its code, with a zero pooled vector and guidance 0. `options`: those
    of `attnkit.maps.trace(space="output")` (combine, encoding, sites, ...); `call`: further pipeline arguments.
    Returns the trace, read as after a generation (`heatmap`, `maps`, `save`)."""
    if not isinstance(image, Image.Image):
        raise AttnkitError(f"image must be a PIL image, got {type(image).__name__}; open files with "
                           "`PIL.Image.open(path)`.")
    multiple = family_of(pipe).multiple_of(pipe)
    if image.width % multiple or image.height % multiple:
        raise AttnkitError(f"the image is {image.width}x{image.height} pixels (width x height); "
                           f"{type(pipe).__name__} needs sides that are multiples of {multiple}: resize or crop it.")
    trace = concept_trace(pipe, prompt, concepts, **options)
    latent = clean_latent(pipe, image)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed), dtype=latent.dtype)
    text, call = _image_conditioning(pipe, prompt, call)
    with trace, torch.inference_mode():
        single_forward(pipe, latent, text, steps=steps, step=step, noise=noise, call=call)
    return trace


def _image_conditioning(pipe: Any, prompt: str, call: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """(prompt, call) of the existing-image forward: where the family's ConceptAttention code conditions it on a zero
    pooled vector, the prompt's embeddings with one; its guidance where it sets one."""
    family = family_of(pipe)
    defaults = family.concept_defaults
    call = dict(call or {})
    if defaults.get("image_guidance") is not None and family.guidance == "embedded":
        call.setdefault("guidance_scale", defaults["image_guidance"])
    if defaults.get("image_pooled") != "zero":
        return prompt, call
    text = family.text
    embeds = text.encode(pipe, [prompt], call.pop("max_sequence_length", text.max_sequence_length))
    for name in text.pooled:
        embeds[name] = torch.zeros_like(embeds[name])
    return None, {**embeds, **call}


def _concept_names(concepts: Sequence[str] | None) -> list[str]:
    """The concepts, stripped; an error if none, not strings, empty or repeated (any case)."""
    if concepts is None or isinstance(concepts, str) or not len(concepts):
        given = "none" if not concepts else repr(concepts)
        raise AttnkitError(f"space='output' maps concepts, and got {given}: pass a list of words, e.g. "
                           "concepts=['circle', 'square', 'background'].")
    names = []
    for concept in concepts:
        if not isinstance(concept, str) or not concept.strip():
            raise AttnkitError(f"concepts must be non-empty strings, got {concept!r} in {list(concepts)!r}.")
        names.append(concept.strip())
    lowered = [n.lower() for n in names]
    repeated = sorted({n for n in lowered if lowered.count(n) > 1})
    if repeated:
        raise AttnkitError(f"concepts {', '.join(map(repr, repeated))} given more than once in {names!r}: each "
                           "concept is one map; name it once.")
    return names
