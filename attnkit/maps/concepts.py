"""Output-space concept maps (ConceptAttention, Helbling et al., ICML 2025) for MMDiT transformers: SD3, SD3.5, Flux.1.

    with attnkit.maps.trace(pipe, prompt, space="output", concepts=["cat", "sky", "background"]) as tc:
        image = pipe(prompt).images[0]
    tc.heatmap("cat")     # (rows, cols), the share of "cat" among the concepts at every image token

Concept words, absent from the prompt or not, are encoded one by one with the pipeline's own `encode_prompt` (at the
text length the pipeline gives its prompt) and the transformer's `context_embedder`, and form an extra token stream
that goes through the same blocks as the text stream, with the blocks' own weights, adaLN and MLPs: after each
block's normal forward, a named hook (`attnkit.concepts.<id>`, from `attnkit.blocks`) calls the block's own code once
more with the block's image input and the concept stream in place of the text. attnkit's site processors see that
second call marked in the session state (`phase="concepts"`, `exclusive`: no other session's feature sees it), and
`ConceptRecorder` computes only the concept queries' attention there, over the image keys and the concept keys;
image and prompt tokens never attend to concepts, so the generated image is bit-identical to a run without the
trace.

The map of one site and step is o_x . o_c: the image tokens' attention outputs of the normal call (heads
concatenated, before the output projection) against each concept's attention output of the second call. A concept of
several tokens (a word split by the tokenizer, several words, SD3's CLIP and T5 tokens of the same word) takes the
mean of its tokens' outputs. These logits are summed over sites and steps into one fp32 buffer (items, concepts, rows,
cols), so memory stays flat however many steps run; maps are the softmax over concepts of their mean, so at every
image token the concepts' maps sum to 1. `combine="softmax"` instead averages the per-site, per-step softmax, as
ConceptAttention's own code does. `template` (default "{}", the concept alone) encodes each concept within a phrase,
e.g. "a {}": its other words give context, only the concept's own tokens enter the stream.

Defaults follow ConceptAttention's code (github helblazer811/ConceptAttention): every denoising step; on SD3/SD3.5
every joint block (its SD3 pipeline averages all layers); on Flux the last four double-stream blocks (its Flux pipeline
takes layers 15-18 of FLUX.1's 19), single-stream blocks selectable with `kind="single"`. Concepts take the image
stream's adaLN conditioning (the timestep and pooled prompt embedding of the block's call), as its SD3 code does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..blocks import AfterBlocks, stream_blocks
from ..errors import AttnkitError
from ..families import denoiser_of, families, family_of
from ..files import save_safetensors
from ..processors import AttentionCall, Control
from ..session import Session
from ..sites import Site, SiteList, choose, sites
from ..state import State
from ..tokens import prompt_tokens

__all__ = ["ConceptRecorder", "ConceptTrace", "COMBINES", "PHASE", "concept_trace", "default_sites"]

#: `State.phase` of the concept pass through a block.
PHASE = "concepts"
#: How per-site, per-step maps are combined: mean logits then softmax, or mean of softmaxes.
COMBINES = ("logits", "softmax")
Combine = Literal["logits", "softmax"]
#: ConceptAttention's Flux default: the last four double-stream blocks (layers 15-18 of FLUX.1's 19).
FLUX_DEFAULT_BLOCKS = 4
_BRANCHES = ("cond", "uncond")
_TEXT_KINDS = frozenset({"joint", "single"})


class ConceptRecorder(Control):
    """Sums o_x . o_c per concept over sites and steps into `total` (items, concepts, rows, cols); `count` is the
    number of (site, step) maps added per item. It also owns the concept stream between blocks of one forward."""

    name = "concept maps"
    masks = True  # supplies the concept-only kernel of the second call

    def __init__(self, pipe: Any, record: SiteList, concepts: Sequence[str], *, steps: Iterable[int] | None = None,
                 branch: str = "cond", combine: Combine = "logits", template: str = "{}") -> None:
        if branch not in _BRANCHES:
            raise AttnkitError(f"branch={branch!r}: choose 'cond' or 'uncond'.")
        if combine not in COMBINES:
            raise AttnkitError(f"combine={combine!r}: choose 'logits' (softmax of the mean logits) or 'softmax' "
                               "(mean of per-site, per-step softmaxes).")
        self.pipe = pipe
        self.model = denoiser_of(pipe)
        self.family = family_of(self.model)
        self.sites = record
        self.concepts = list(concepts)
        self.steps = None if steps is None else frozenset(steps)
        self.branch = branch
        self.combine = combine
        self.template = template
        self.total: torch.Tensor | None = None
        self.count = 0
        self.steps_recorded: set[int | None] = set()
        self.forwards: set[int] = set()
        self._record = frozenset(record.names)
        self._embeds: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (text length, embeddings, averaging)
        self._stream: torch.Tensor | None = None
        self._rotary: Any = None
        self._image_out: dict[str, torch.Tensor] = {}

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
            call.use_kernel(_concept_queries_only, self.name)

    def after(self, call: AttentionCall, out: torch.Tensor, lse: torch.Tensor | None) -> None:
        if call.site.name not in self._record:
            return
        state = call.state
        if state.phase != PHASE:
            if self.recording(state):  # the image tokens' outputs wait for this block's concept pass
                image = out[state.batch_index(self.branch)][:, :, call.layout.span("queries", "image")]
                self._image_out[call.site.name] = image.transpose(1, 2).flatten(2)
            return
        image = self._image_out.pop(call.site.name)
        concept = out[:, :, call.layout.span("queries", "text")].transpose(1, 2).flatten(2)
        _, average = self._embeds[1:]
        per_concept = torch.einsum("kt,btd->bkd", average, concept.float())
        heat = torch.einsum("bnd,bkd->bkn", image.float(), per_concept)
        if call.grid is None:
            raise AttnkitError(f"{call.site.name} has no image grid: the latent size is unknown. Run the pipeline or "
                               "the denoiser inside the trace.")
        heat = heat.reshape(*heat.shape[:2], *call.grid)
        if self.combine == "softmax":
            heat = heat.softmax(1)
        resolution = max((s.grid(state.latent) for s in self.sites), key=lambda grid: grid[0] * grid[1])
        if tuple(heat.shape[-2:]) != resolution:
            heat = F.interpolate(heat, size=resolution, mode="bilinear", align_corners=False)
        if self.total is None:
            self.total = torch.zeros_like(heat)
        if heat.shape != self.total.shape:
            raise AttnkitError(f"this trace recorded concept maps of shape {tuple(self.total.shape)}, now gets "
                               f"{tuple(heat.shape)}: run one generation per trace.")
        self.total += heat
        self.count += 1
        self.forwards.add(state.forwards)
        self.steps_recorded.add(state.step)

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
        call = {**arguments, "hidden_states": arguments["hidden_states"][items],
                "encoder_hidden_states": self._stream, "temb": arguments["temb"][items]}
        if self._rotary is not None:
            call["image_rotary_emb"] = self._rotary
        saved = state.phase, state.exclusive, state.text_tokens
        state.phase, state.exclusive, state.text_tokens = PHASE, True, self._stream.shape[1]
        try:
            stream, _ = type(block).forward(block, **call)  # the block's own code, under no hook
        finally:
            state.phase, state.exclusive, state.text_tokens = saved
        self._stream = None if last else stream

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
        """(token embeddings (tokens, dim) of all concepts, averaging matrix (concepts, tokens)), encoded once, at
        the text length the pipeline gave its prompt (padding changes T5 embeddings)."""
        if text_tokens is None:
            raise AttnkitError("the denoiser was called without `encoder_hidden_states`; concept maps encode their "
                               "concepts at the prompt's text length.")
        if self._embeds is None or self._embeds[0] != text_tokens:
            embeds, average = encode_concepts(self.pipe, self.concepts, text_tokens, self.template)
            dtype = next(self.model.context_embedder.parameters()).dtype
            self._embeds = (text_tokens, embeds.to(dtype), average.to(embeds.device))
        return self._embeds[1], self._embeds[2]

    def end_forward(self) -> None:
        """Drop what one forward left behind (a pass cut short by an exception)."""
        self._stream, self._rotary = None, None
        self._image_out.clear()

    def check(self) -> None:
        """An error unless maps were recorded, and every selected site added one map to every recorded forward."""
        if self.total is None:
            raise AttnkitError(
                "no concept maps were recorded. Did you run the pipeline inside `with attnkit.maps.trace(...)`? "
                f"Check also `steps` ({sorted(self.steps) if self.steps is not None else 'all'}) and the branch "
                f"({self.branch!r}: without CFG there is no 'uncond' branch).")
        expected = len(self._record) * len(self.forwards)
        if self.count != expected:
            raise AttnkitError(
                f"incomplete concept maps: {self.count} site maps over {len(self.forwards)} denoiser call(s) of "
                f"{len(self._record)} selected site(s), expected {expected}. Another feature changed those processors "
                "or the model skipped layers: select only sites that run at every step.")


def _concept_queries_only(call: AttentionCall) -> tuple[torch.Tensor, None]:
    """Attention of the concept queries over all keys of the second call (image and concepts); the image rows of
    that call are never used, so they stay zero instead of being computed."""
    rows = call.layout.span("queries", "text")
    mask = call.mask
    if mask is not None and mask.ndim >= 2 and mask.shape[-2] != 1:
        mask = mask[..., rows, :]
    out = torch.zeros_like(call.q)
    out[:, :, rows] = F.scaled_dot_product_attention(call.q[:, :, rows], call.k, call.v, attn_mask=mask,
                                                     scale=call.scale)
    return out, None


def encode_concepts(pipe: Any, concepts: Sequence[str], text_tokens: int,
                    template: str = "{}") -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of every concept's own tokens, each concept encoded alone as the pipeline encodes a prompt (within
    `template`) at the prompt's text length, and the (concepts, tokens) matrix that averages each concept's tokens."""
    text = family_of(pipe).text
    max_sequence_length = max(text_tokens - text.fixed_tokens(pipe), 0)
    offset = template.index("{}")
    rows, owners = [], []
    with torch.no_grad():
        for index, concept in enumerate(concepts):
            phrase = template.format(concept)
            embeds = text.encode(pipe, [phrase], max_sequence_length)["prompt_embeds"]
            words = prompt_tokens(pipe, phrase, embeds.shape[1]).words
            positions = [p for word in words if offset <= word.start < offset + len(concept) for p in word.positions]
            if not positions:
                raise AttnkitError(f"concept {concept!r} has no token the pipeline's text encoders see; name it "
                                   "with letters or digits.")
            rows.append(embeds[0, positions])
            owners += [index] * len(positions)
    owner = torch.tensor(owners)
    average = (owner[None] == torch.arange(len(concepts))[:, None]).float()
    return torch.cat(rows), average / average.sum(1, keepdim=True)


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
        """Summed logits (or softmaxes, `combine="softmax"`), fp32: (batch items, concepts, rows, cols)."""
        return self._checked().total

    @property
    def count(self) -> int:
        """(site, step) maps summed into `total` per batch item."""
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
            "combine": self.recorder.combine,
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
                  branch: str = "cond", combine: Combine = "logits", template: str = "{}",
                  sites_: Iterable[Site] | None = None, **selection: Any) -> ConceptTrace:
    """`attnkit.maps.trace(..., space="output")`: checks the model, the concepts and the sites."""
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
    if not isinstance(template, str) or template.count("{}") != 1:
        raise AttnkitError(f"template={template!r} must hold one '{{}}' where each concept goes, e.g. 'a {{}}'.")
    chosen = choose(pipe, sites_, selection, default_sites, _TEXT_KINDS)
    unfit = [f"{s.name} ({s.kind})" for s in chosen if s.kind not in _TEXT_KINDS]
    if unfit:
        raise AttnkitError(f"concept maps need sites with a text stream (kind joint or single); {len(unfit)} selected "
                           f"site(s) have none: {', '.join(unfit[:3])}. Select kind=['joint', 'single'].")
    recorder = ConceptRecorder(pipe, chosen, names, steps=steps, branch=branch, combine=combine, template=template)
    return ConceptTrace(pipe, recorder, prompt)


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
