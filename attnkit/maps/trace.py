"""`attnkit.maps.trace`: the one entry for attention maps, a context manager around one generation.

    with attnkit.maps.trace(pipe, prompt="a red circle and a blue square") as tc:
        image = pipe("a red circle and a blue square").images[0]
    tc.heatmap("circle")            # (rows, cols) mean probability of attending to "circle"
    tc.word_maps(["red", "square"]) # {word: (batch items, rows, cols)}; a video's frames stacked top to bottom
    tc.frame_maps("circle")         # (frames, rows, cols): one map per frame of a video model
    tc.save("maps.safetensors")
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import AttnkitError
from ..families import family_of
from ..files import save_safetensors
from ..recorders import RELATIONS, MapRecorder, Relation
from ..session import Session
from ..sites import choose
from ..tokens import PromptSegment, PromptTokens, prompt_tokens, segment_tokens

__all__ = ["METHODS", "SPACES", "Trace", "trace", "WORD_RELATIONS"]

#: Relations whose maps have one spatial map per text token, so that words have heat maps.
WORD_RELATIONS = ("image->text", "text->image")
#: "probability": the model's attention probabilities over prompt tokens; "output": concept maps in the attention
#: output space (`attnkit.maps.concepts`).
SPACES = ("probability", "output")
#: How probability maps are aggregated: "mean" (attnkit's: the mean probability over heads, sites and steps, summed
#: over a word's tokens) or "daam" (DAAM's code: down and up cross-attention, each layer's and head's sum over steps
#: upsampled bicubic and clamped, averaged, a word's tokens averaged; `attnkit.maps.daam`).
METHODS = ("mean", "daam")


class Segmented(Protocol):
    """A prompt made of several prompts' text segments, one after another (`attnkit.regional`'s session)."""

    @property
    def prompt_segments(self) -> tuple[PromptSegment, ...]: ...


class Trace:
    """A map recorder attached to one pipeline for the span of a `with` block; results are read after it."""

    method = "mean"

    def __init__(self, pipe: Any, recorder: MapRecorder, prompt: str | Sequence[str] | Segmented | None) -> None:
        self.pipe = pipe
        self.recorder = recorder
        self.segmented = prompt if hasattr(type(prompt), "prompt_segments") else None
        self.prompts: list[str] | None = None
        if isinstance(prompt, str):
            self.prompts = [prompt]
        elif prompt is not None and self.segmented is None:
            self.prompts = list(prompt)
        self.session = Session(pipe, [(recorder, recorder.sites)])
        self._failed = False
        self._tokens: dict[Any, PromptTokens] = {}

    def __enter__(self) -> Trace:
        self.session.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.session.__exit__(exc_type, *exc_info)
        self._failed = exc_type is not None

    @property
    def total(self) -> torch.Tensor:
        """Sum over heads, sites and steps, fp32 (fp64 for a float64 model), checked complete: (batch items, text
        tokens, rows, cols) for image->text and text->image, (batch items, 1, rows, cols) for image->image, (items,
        text, text) for text->text."""
        return self._checked().total

    @property
    def count(self) -> int:
        """Head maps summed into `total` per batch item (heads x sites x steps)."""
        return self._checked().count

    @property
    def maps(self) -> torch.Tensor:
        """`total / count`: the mean attention probability (image->image: relative to uniform attention)."""
        return self.total / self.count

    def _checked(self) -> MapRecorder:
        """The recorder, once its maps are known to be complete."""
        if self._failed:
            raise AttnkitError("the traced generation raised an exception, so its maps are incomplete.")
        self.recorder.check()
        return self.recorder

    def tokens(self, item: int = 0, region: int | str | None = None) -> PromptTokens:
        """The words of batch item `item`'s prompt with their positions in the text sequence; for a regional
        prompt, those of region `region` (0-based, or "base")."""
        total = self.total
        if self.segmented is not None or region is not None:
            return self._region_tokens(region)
        if self.prompts is None:
            raise AttnkitError("word maps need the prompt: `attnkit.maps.trace(pipe, prompt=...)` with the prompt "
                               "(or list of prompts) given to the pipeline.")
        items = total.shape[0]
        if not 0 <= item < items:
            raise AttnkitError(f"item={item} is out of range: this trace recorded {items} batch item(s).")
        if items % len(self.prompts):
            raise AttnkitError(f"the pipeline ran {items} batch item(s) per branch, which is not a multiple of the "
                               f"{len(self.prompts)} prompt(s) given to the trace: give the same prompts.")
        prompt = self.prompts[item // (items // len(self.prompts))]
        if prompt not in self._tokens:
            self._tokens[prompt] = prompt_tokens(self.pipe, prompt, total.shape[1])  # the recorded text part
        return self._tokens[prompt]

    def _region_tokens(self, region: int | str | None) -> PromptTokens:
        """Words of one regional prompt, at the positions of its segment in the concatenated text."""
        if self.segmented is None:
            raise AttnkitError("`region=` labels maps of a regional prompt: pass the object of "
                               "`with attnkit.regional(pipe, spec) as regions` as the trace's prompt.")
        segments = self.segmented.prompt_segments
        regions = sorted({s.name for s in segments if isinstance(s.name, int)})
        based = any(s.name == "base" for s in segments)
        if region not in regions and not (region == "base" and based):
            raise AttnkitError(f"region={region!r} is not in this regional prompt: give 0..{len(regions) - 1}"
                               + (' or "base"' if based else "") + ".")
        if ("region", region) not in self._tokens:
            self._tokens["region", region] = segment_tokens(self.pipe, segments, region)
        return self._tokens["region", region]

    def heatmap(self, word: str, item: int = 0, occurrence: int | None = None,
                region: int | str | None = None) -> torch.Tensor:
        """(rows, cols) map of `word` in batch item `item`: the mean probability summed over the word's tokens
        (all its occurrences unless `occurrence` picks one); `region` picks the prompt of a regional trace."""
        if self.recorder.relation not in WORD_RELATIONS:
            raise AttnkitError(f"{self.recorder.relation} maps have no heat map per word; words have maps in "
                               f"{' and '.join(WORD_RELATIONS)} traces. Read `maps` instead.")
        positions = self.tokens(item, region).positions(word, occurrence)
        return self.total[item, positions].sum(0) / self.count

    def frame_maps(self, word: str, item: int = 0, occurrence: int | None = None) -> torch.Tensor:
        """(frames, rows, cols): `heatmap(word)` of a video model, one map per latent frame (token frames after the
        model's temporal patching); an image model's is one frame."""
        heat = self.heatmap(word, item, occurrence)
        frames = self.recorder.frames
        return heat.reshape(frames, heat.shape[0] // frames, heat.shape[1])

    def word_maps(self, words: Iterable[str] | None = None, region: int | str | None = None) -> dict[str, torch.Tensor]:
        """{word: (batch items, rows, cols)} for `words` (default: every word of the first prompt, or of region
        `region` of a regional trace)."""
        chosen = self.tokens(0, region).unique_words if words is None else [w.lower() for w in words]
        items = self.total.shape[0]
        return {w: torch.stack([self.heatmap(w, item, region=region) for item in range(items)])
                for w in dict.fromkeys(chosen)}

    def save(self, path: str | Path, words: Iterable[str] | None = None) -> None:
        """Raw maps as safetensors: `maps` (mean per text token), `word.<w>` per word, and a JSON header."""
        tensors = {"maps": self.maps.contiguous()}
        metadata = {
            "method": self.method,
            "relation": self.recorder.relation,
            "architecture": family_of(self.pipe).name,
            "sites": json.dumps(self.recorder.sites.names),
            "steps": json.dumps(sorted(s for s in self.recorder.steps_recorded if s is not None)),
            "branch": self.recorder.branch,
            "count": str(self.count),
        }
        if self.prompts is not None:
            metadata["prompts"] = json.dumps(self.prompts)
        if self.prompts is not None and self.recorder.relation in WORD_RELATIONS:
            for word, heat in self.word_maps(words).items():
                tensors[f"word.{word}"] = heat.contiguous()
        save_safetensors({k: v.cpu() for k, v in tensors.items()}, path, metadata)


def trace(
    pipe: Any,
    prompt: str | Sequence[str] | Segmented | None = None,
    *,
    space: str = "probability",
    method: str = "mean",
    normalize: bool = False,
    concepts: Sequence[str] | None = None,
    combine: str | None = None,
    template: str | None = None,
    encoding: str | None = None,
    pooled: str | None = None,
    image_outputs: str | None = None,
    relation: Relation = "image->text",
    steps: Iterable[int] | None = None,
    branch: str = "cond",
    exact: str = "lse",
    sites_: Iterable[Any] | None = None,
    **selection: Any,
) -> Trace:
    """Record attention maps of the generation run inside the `with` block.

    `prompt`: the prompt(s) given to the pipeline, to label tokens with words (optional for raw maps), or a prompt of
    several segments (the object of `with attnkit.regional(pipe, spec) as regions`) for maps per region prompt
    (`heatmap(word, region=i)`).
    `relation`: "image->text" (default), "text->image", "text->text" or "image->image" (see `recorder`).
    Sites: `sites_`, or `SiteList.select(**selection)` (kind, block, resolution, index, names, where) among the
    sites of the kinds that have the relation (image->text: UNet cross, SD3 joint, Flux joint and single).
    `steps`: 0-based denoising steps to record (default all). `branch`: the CFG branch ("cond").
    `exact`: "lse" (fused kernel) or "explicit" (fallback); the same numbers.
    `method="daam"` aggregates as DAAM's code does (its sites by default: a UNet's down- and up-block cross-attention;
    `normalize` divides every token's map by the prompt tokens' sum; see `attnkit.maps.daam`) and returns a
    `DaamTrace`.
    `space="output"` records output-space concept maps of `concepts` instead (SD3, SD3.5, Flux; see
    `attnkit.maps.concepts`): `encoding` ("alone", "first-token", "joined", within `template`), `pooled` ("prompt",
    "zero"), `image_outputs` ("prompt", "concepts") and `combine` ("logits", "softmax", "vectors") default to what
    ConceptAttention's code does for the family; it returns a `ConceptTrace` with the same `heatmap`, `word_maps`,
    `save`.
    """
    if space not in SPACES:
        raise AttnkitError(f"unknown space {space!r}: choose 'probability' (attention probabilities over the "
                           "prompt's words) or 'output' (concept maps, with concepts=[...]).")
    if method not in METHODS:
        raise AttnkitError(f"unknown method {method!r}: choose 'mean' (attnkit's mean probability over heads, sites "
                           "and steps) or 'daam' (DAAM's aggregation of a UNet's cross-attention).")
    if normalize and method != "daam":
        raise AttnkitError("normalize= is DAAM's division of each token's map by the prompt tokens' sum: add "
                           "method='daam'.")
    if space == "output" and method != "mean":
        raise AttnkitError(f"method={method!r} aggregates attention probabilities; space='output' maps concepts from "
                           "attention outputs (ConceptAttention): leave method out.")
    if space == "output":
        if relation != "image->text" or exact != "lse":
            raise AttnkitError("`relation` and `exact` choose probability maps; space='output' maps concepts "
                               "from attention outputs: leave them out.")
        from .concepts import concept_trace

        return concept_trace(pipe, prompt, concepts, steps=steps, branch=branch, sites_=sites_, combine=combine,
                             template=template, encoding=encoding, pooled=pooled, image_outputs=image_outputs,
                             **selection)
    given = {"concepts": concepts, "combine": combine, "template": template, "encoding": encoding, "pooled": pooled,
             "image_outputs": image_outputs}
    if any(value is not None for value in given.values()):
        raise AttnkitError(f"{', '.join(f'`{k}`' for k, v in given.items() if v is not None)} belong to output-space "
                           "maps: pass space='output' as well (probability maps read the prompt's own words).")
    if method == "daam":
        from .daam import DaamTrace, PerHead, daam_sites

        if relation != "image->text":
            raise AttnkitError(f"method='daam' maps image->text attention (each word's map over the image); "
                               f"relation={relation!r} is another part: leave relation out.")
        chosen = choose(pipe, sites_, selection, daam_sites, kinds=RELATIONS[relation][2])
        recorder = MapRecorder(chosen, relation=relation, steps=steps, branch=branch, exact=exact,
                               reduction=PerHead())
        return DaamTrace(pipe, recorder, prompt, normalize)
    # without a kind, only the kinds that have this relation; none at all: the recorder says which kinds do
    chosen = choose(pipe, sites_, selection, kinds=RELATIONS[relation][2] if relation in RELATIONS else ())
    recorder = MapRecorder(chosen, relation=relation, steps=steps, branch=branch, exact=exact)
    return Trace(pipe, recorder, prompt)
