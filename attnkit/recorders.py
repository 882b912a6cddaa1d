"""Attention maps recorded while generating: exact probabilities, aggregated on the fly into one fixed-size buffer.

`MapRecorder` is an attnkit `Control`. At every selected site and step it takes one block of the attention
probabilities, normalised as the model normalises them: over all keys of the call, so in joint attention e.g. the
text columns of a softmax over image and text keys. It sums the block over heads, upsamples the site's token grid to
one common resolution, and adds it to one fp32 buffer (fp64 for a float64 model, which keeps its precision) per batch
item of the chosen CFG branch. Nothing per layer or per step is kept, and the block is computed in query chunks:
memory is O(text tokens x image tokens) however many steps and sites are recorded.

Relations and the map each adds per call (summed over heads):
- "image->text": for every text token, its probability at each image query: (text, rows, cols);
- "text->image": for every text token (query), its probability over the image keys: (text, rows, cols);
- "text->text": (text queries, text keys), joint attention only;
- "image->image": attention each image key receives, summed over image queries: (1, rows, cols); 1 is uniform.

What is added per call is the recorder's `reduction`, chosen by the feature: `Summed` (the default) gives the maps
above; a feature may give its own (`attnkit.segment.PerQuery` keeps every image query's whole map over the image keys,
as DiffSeg segments them). A reduction may keep one buffer per site (`per_site`), summed over steps, and combine them
into `total` when it is read (DAAM's maps, `attnkit.maps.daam`, upsample and clamp each site's sum over steps).

Two exact paths give the same numbers: `exact="lse"` rebuilds p = exp(q . k * scale - lse) for the wanted keys from
the log-sum-exp that the fused kernel returns with the model's own output (the full matrix is never formed);
`exact="explicit"` leaves the model's kernel alone and recomputes the normalisation with
`attnkit.ops.explicit_attention`, chunked over queries, for devices or inputs where no fused kernel gives an lse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F

from . import ops
from .errors import AttnkitError
from .processors import AttentionCall, Control
from .sites import Site, SiteList
from .state import State

__all__ = ["CHUNK_BYTES", "Exact", "MapRecorder", "RELATIONS", "Reduction", "Relation", "Summed", "resampling",
           "token_grid"]

Relation = Literal["image->text", "text->image", "text->text", "image->image"]
Exact = Literal["lse", "explicit"]
#: (query part, key part) of each relation, and the site kinds that have both parts.
RELATIONS: dict[str, tuple[str, str, frozenset[str]]] = {
    "image->text": ("image", "text", frozenset({"cross", "joint", "single"})),
    "text->image": ("text", "image", frozenset({"joint", "single"})),
    "text->text": ("text", "text", frozenset({"joint", "single", "text"})),
    "image->image": ("image", "image", frozenset({"self", "joint", "single", "self2"})),
}
_BRANCHES = ("cond", "uncond")
_GAPS_SHOWN = 5
#: Bytes of the transient probability block a reduction computes per query chunk.
CHUNK_BYTES = 64 * 2**20


class Reduction:
    """How one call's block of probabilities becomes the map a recorder adds to its buffer: `reduce` returns that
    map for the chosen batch items and the weight it counts with (the recorder's `total / count` is the mean).
    With `per_site`, the recorder keeps one buffer per site (`parts`, summed over steps), and `total` is what
    `combine` makes of them."""

    relations: tuple[str, ...] = tuple(RELATIONS)
    per_site = False

    def reduce(self, recorder: MapRecorder, view: AttentionCall, lse: torch.Tensor, rows: slice,
               latent: tuple[int, int]) -> tuple[torch.Tensor, float]:
        raise NotImplementedError

    def combine(self, recorder: MapRecorder, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """`total` from the per-site buffers (reductions with `per_site` only)."""
        raise NotImplementedError


class Summed(Reduction):
    """Each relation's map summed over queries or keys as the module docstring lists, summed over heads (weight:
    heads), image maps upsampled to the finest grid among the recorded sites."""

    def reduce(self, recorder: MapRecorder, view: AttentionCall, lse: torch.Tensor, rows: slice,
               latent: tuple[int, int]) -> tuple[torch.Tensor, float]:
        relation = recorder.relation
        cols = view.layout.span("keys", recorder.keys)
        items, heads = view.q.shape[:2]
        step = max(1, CHUNK_BYTES // (4 * items * heads * (cols.stop - cols.start)))
        parts = []
        for start in range(rows.start, rows.stop, step):
            probs = view.probabilities(lse, slice(start, min(start + step, rows.stop)), cols).sum(1)
            parts.append(probs.sum(1, keepdim=True) if relation == "image->image" else probs)
        if relation == "image->image":
            heat = torch.stack(parts).sum(0)
        else:
            heat = torch.cat(parts, dim=1)
            heat = heat.transpose(1, 2) if relation == "image->text" else heat
        if relation == "text->text":
            return heat, heads
        heat = heat.reshape(*heat.shape[:2], *token_grid(view))
        resolution = max((s.grid(latent) for s in recorder.sites), key=lambda grid: grid[0] * grid[1])
        if tuple(heat.shape[-2:]) != resolution:
            heat = F.interpolate(heat, size=resolution, mode="bilinear", align_corners=False)
        return heat, heads


def resampling(size: int, out: int) -> torch.Tensor:
    """(size, out) weights taking a 1-D axis of `size` cells to `out` cells: nearest (tiling) up, area average down."""
    mode = "nearest" if out >= size else "area"
    return F.interpolate(torch.eye(size)[None], size=out, mode=mode)[0]


def token_grid(view: AttentionCall) -> tuple[int, int]:
    if view.grid is None:
        raise AttnkitError(f"{view.site.name} has no image grid: the latent size is unknown. Run the "
                           "pipeline or the denoiser inside the trace.")
    return view.grid


class MapRecorder(Control):
    """Adds one relation's attention probabilities, reduced by `reduction` (default `Summed`: summed over heads),
    over sites and steps into `total`: with `Summed`, (items, channels, rows, cols), channels being text tokens (or 1
    for image->image); (items, text, text) for text->text.

    `count` is the weight added per batch item (heads x sites x steps with `Summed`), so `total / count` is the
    mean. `steps` selects denoising steps by index, or by a predicate on the session's `State` (e.g. its timestep).
    Every selected site must contribute to every recorded denoiser forward; `check()` raises otherwise.
    """

    name = "maps"

    def __init__(
        self,
        sites: Iterable[Site],
        *,
        relation: Relation = "image->text",
        steps: Iterable[int] | Callable[[State], bool] | None = None,
        branch: str = "cond",
        exact: Exact = "lse",
        reduction: Reduction | None = None,
    ) -> None:
        if relation not in RELATIONS:
            raise AttnkitError(f"unknown relation {relation!r}: choose one of {', '.join(RELATIONS)}.")
        if exact not in ("lse", "explicit"):
            raise AttnkitError(f"exact={exact!r}: choose 'lse' (fused kernel) or 'explicit' (fallback).")
        if branch not in _BRANCHES:
            raise AttnkitError(f"branch={branch!r}: choose 'cond' or 'uncond'.")
        self.reduction = Summed() if reduction is None else reduction
        if relation not in self.reduction.relations:
            raise AttnkitError(f"{type(self.reduction).__name__} reduces {' and '.join(self.reduction.relations)} "
                               f"maps, not {relation}: give relation={self.reduction.relations[0]!r}.")
        self.sites = SiteList(sites)
        queries, keys, kinds = RELATIONS[relation]
        unfit = [f"{s.name} ({s.kind})" for s in self.sites if s.kind not in kinds]
        if unfit:
            raise AttnkitError(
                f"{relation} maps need {queries} queries and {keys} keys, found at sites of kind "
                f"{', '.join(sorted(kinds))}; {len(unfit)} selected site(s) have none: {', '.join(unfit[:3])}"
                f"{' ...' if len(unfit) > 3 else ''}. Select kind={sorted(kinds)}."
            )
        self.relation, self.queries, self.keys = relation, queries, keys
        self.when = steps if callable(steps) else None
        self.steps = None if steps is None or callable(steps) else frozenset(steps)
        self.branch = branch
        self.exact = exact
        self.needs_lse = exact == "lse"
        self.parts: dict[str, torch.Tensor] = {}  # per site, for reductions that keep them
        self.count = 0
        self._total: torch.Tensor | None = None
        self.steps_recorded: set[int | None] = set()
        self.frames = 1  # token frames of the recorded forwards (a video model's), stacked top to bottom in the maps
        self._expected = frozenset(self.sites.names)
        self._forward: int | None = None
        self._step: int | None = None
        self._num_steps: int | None = None
        self._seen: set[str] = set()
        self._gaps: list[str] = []

    def after(self, call: AttentionCall, out: torch.Tensor, lse: torch.Tensor | None) -> None:
        state = call.state
        self._num_steps = state.num_steps
        if self.steps is not None:
            if state.step is None:
                raise AttnkitError("`steps` selects denoising steps of a pipeline run, but this denoiser call has "
                                   "no step: run the pipeline (not the bare denoiser) inside the trace.")
            if state.step not in self.steps:
                return
        if self.when is not None and not self.when(state):
            return
        items = state.batch_index(self.branch)
        if not items:
            return
        if state.forwards != self._forward:
            self._close_forward()
            self._forward, self._step = state.forwards, state.step
        self._seen.add(call.site.name)
        view, lse = _batch_items(call, items, lse)
        rows = view.layout.span("queries", self.queries)
        if self.exact == "explicit":
            lse = _explicit_lse(view, rows)
        if state.latent is None:
            raise AttnkitError(f"{call.site.name}: the latent size is unknown. Run the pipeline or the denoiser "
                               "inside the trace.")
        heat, weight = self.reduction.reduce(self, view, lse, rows, state.latent)
        self._add(heat, weight, call.site.name)
        self.steps_recorded.add(state.step)
        self.frames = state.frames or 1

    @property
    def total(self) -> torch.Tensor | None:
        """The maps added so far (None before any): the buffer, or what the reduction combines its sites' into."""
        if self.reduction.per_site and self.parts and self._total is None:
            self._total = self.reduction.combine(self, self.parts)
        return self._total

    def _add(self, heat: torch.Tensor, weight: float, site: str) -> None:
        if self.reduction.per_site:
            self._total = None  # combined again when read
            buffer = self.parts.get(site)
            if buffer is None:
                buffer = self.parts[site] = torch.zeros_like(heat, dtype=ops.working(heat.dtype))
        else:
            if self._total is None:
                self._total = torch.zeros_like(heat, dtype=ops.working(heat.dtype))
            buffer = self._total
        if heat.shape != buffer.shape:
            raise AttnkitError(f"this trace recorded maps of shape {tuple(buffer.shape)}, now gets "
                               f"{tuple(heat.shape)}: run one generation per trace.")
        buffer += heat
        self.count += weight

    def _close_forward(self) -> None:
        if self._seen and self._seen != self._expected:
            missing = sorted(self._expected - self._seen)
            self._gaps.append(f"step {self._step}: {len(missing)} site(s) missing, e.g. {missing[0]}")
        self._seen = set()

    def check(self) -> None:
        """An error unless something was recorded, every selected step of the run was, and every selected site
        contributed to every recorded denoiser forward."""
        self._close_forward()
        self._forward = None
        gaps = list(self._gaps)
        recorded = self._total is not None or bool(self.parts)
        if self._num_steps is not None and recorded and self.when is None:
            run = set(range(self._num_steps))
            missing = sorted((run if self.steps is None else self.steps & run) - self.steps_recorded)
            if missing:
                gaps.append(f"steps {missing} of {self._num_steps}: no site at all")
        if gaps:
            raise AttnkitError(
                f"incomplete attention maps: {len(gaps)} recorded denoiser call(s) or steps did not pass through every "
                f"selected site ({'; '.join(gaps[:_GAPS_SHOWN])}{' ...' if len(gaps) > _GAPS_SHOWN else ''}). "
                "Another feature changed those processors or the model skipped layers (skip-layer guidance?): "
                "select only sites that run at every step."
            )
        if not recorded:
            raise AttnkitError(
                "no attention maps were recorded. Did you run the pipeline inside `with attnkit.maps.trace(...)`? "
                f"Check also `steps` ({self._steps_text()}) and the "
                f"branch ({self.branch!r}: without CFG there is no 'uncond' branch)."
            )

    def _steps_text(self) -> str:
        if self.when is not None:
            return "chosen by a predicate on the state"
        return "all" if self.steps is None else str(sorted(self.steps))


def _batch_items(
    call: AttentionCall, items: list[int], lse: torch.Tensor | None
) -> tuple[AttentionCall, torch.Tensor | None]:
    """The call restricted to the batch items of one CFG branch, so that nothing is computed for the others (views,
    not copies, when the items are consecutive, as CFG batches [uncond..., cond...] have them)."""
    if len(items) == call.q.shape[0]:
        return call, lse
    consecutive = items == list(range(items[0], items[-1] + 1))
    index = slice(items[0], items[-1] + 1) if consecutive else torch.tensor(items, device=call.q.device)
    mask = call.mask
    if mask is not None and mask.ndim == 4 and mask.shape[0] != 1:
        mask = mask[index]
    view = replace(call, q=call.q[index], k=call.k[index], v=call.v[index], mask=mask)
    return view, None if lse is None else lse[index]


def _explicit_lse(call: AttentionCall, rows: slice) -> torch.Tensor:
    """Log-sum-exp of the query `rows` over all keys by the explicit, query-chunked computation (zeros elsewhere)."""
    mask = call.mask
    if mask is not None and mask.ndim >= 2 and mask.shape[-2] != 1:
        mask = mask[..., rows, :]
    _, lse_rows = ops.explicit_attention(call.q[:, :, rows], call.k, call.v, mask, call.scale)
    lse = lse_rows.new_zeros(call.q.shape[:3])
    lse[:, :, rows] = lse_rows
    return lse
