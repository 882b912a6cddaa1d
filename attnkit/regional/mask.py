"""The regional attention mask: a pure function of (query token, key token), compiled once per token layout into a
dense reference mask and into an exact split of the masked attention into fused kernel calls.

Every token has a part (image or text) and an owner: the region whose prompt it carries or whose area it lies in,
`BASE` for the base prompt and the image tokens no region covers, `PAD` for text slots that stand in for nothing
(copies of the global negative that keep a CFG batch's text lengths equal). `allowed` decides one pair of tokens;
tokens with the same part and owner form a group whose rows and columns of the mask are identical, so the function
is evaluated once per pair of groups and the result expanded.

The split: in the grouped order (each group's tokens next to each other), the allowed keys of a query group are a
few ranges. Each query group attends all its keys of one logit bias in one fused kernel call (the ranges mapped back
to the call's order: a view where they are consecutive there, else one gather); query groups with the same keys share
the call. Keys with another bias (the base prompt at a weight other than 1) get their own call, merged exactly
through the log-sum-exps. The masked-out work is never done, so masked attention costs less than unmasked attention
over the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch

from .. import ops
from .spec import BASE

__all__ = ["Token", "Rules", "allowed", "TokenGroups", "Block", "Plan", "PAD", "SHARED", "group_matrix", "blocks", "dense"]

#: Owner of text slots that nothing may see (uncond copies that only pad the CFG batch's text to equal length).
PAD = -2
#: Owner of tokens every token sees and that see every token (e.g. AuraFlow's register tokens, a layout's "pad" part).
SHARED = -3
_NEG_INF = float("-inf")


Layout = tuple[tuple[str, int], ...]  # (part, tokens) runs in the call's order, as `TokenLayout.queries`


class Token(NamedTuple):
    part: str  # "image" or "text"
    owner: int  # region index, BASE or PAD


@dataclass(frozen=True)
class Rules:
    """Which parts of the regional mask are on for one attention call.

    `image_to_text`: image tokens see only their own region's text (and the base prompt).
    `text_to_image`: a region's text sees only its region's image tokens.
    `text_isolation`: texts of different regions (and the base prompt) do not see each other.
    `image_isolation`: image tokens see image tokens of other regions only through the logit bias `image_bias`
    (-inf: not at all; a finite bias -s divides that attention by e^s, the soft self-attention modulation of
    DenseDiffusion, Kim et al. 2023).
    `hide_pads`: padding text slots are seen by nothing but themselves.
    `base_bias`: log(base weight), added to the logits of every image token on the base prompt's tokens.
    `text_bias`: log(region weight), added to the logits of every image token on its own region's text tokens.
    """

    image_to_text: bool = True
    text_to_image: bool = True
    text_isolation: bool = True
    image_isolation: bool = False
    hide_pads: bool = True
    base_bias: float = 0.0
    image_bias: float = _NEG_INF
    text_bias: float = 0.0


def allowed(query: Token, key: Token, rules: Rules) -> float:
    """Additive logit bias of `query` attending to `key`: 0 (attend), `rules.base_bias`, `rules.text_bias` or
    `rules.image_bias`, or -inf (masked)."""
    same = query.owner == key.owner
    if rules.hide_pads and PAD in (query.owner, key.owner):
        return 0.0 if same else _NEG_INF
    if SHARED in (query.owner, key.owner):
        return 0.0
    if query.part == "image" and key.part == "image":
        return 0.0 if same or not rules.image_isolation else rules.image_bias
    if query.part == "image":
        if key.owner == BASE:
            return rules.base_bias
        if same:
            return rules.text_bias
        visible = not rules.image_to_text
    elif key.part == "image":
        visible = same or query.owner == BASE or not rules.text_to_image
    else:
        visible = same or not rules.text_isolation
    return 0.0 if visible else _NEG_INF


@dataclass(frozen=True)
class Block:
    """Queries [q0, q1) attend the keys of `keys` (ranges [k0, k1) of the grouped order, concatenated) with `bias`
    added to their logits; `first` writes the result, otherwise it is merged into what earlier blocks wrote."""

    q0: int
    q1: int
    keys: tuple[tuple[int, int], ...]
    bias: float
    first: bool


class TokenGroups:
    """The tokens of one attention call (same layout for queries and keys), grouped by (part, owner).

    `layout` gives the parts in the call's order, `owners` every token's owner. The grouped order puts image groups
    (by owner, BASE last) before text groups (as they appear); `perm` maps its positions to the call's order.
    """

    def __init__(self, layout: Layout, owners: torch.Tensor):
        owners = owners.cpu()
        is_text = torch.cat([torch.full((n,), part != "image") for part, n in layout])
        image = sorted(owners[~is_text].unique().tolist(), key=lambda o: (o < 0, o))
        text = list(dict.fromkeys(torch.unique_consecutive(owners[is_text]).tolist()))
        self.groups: tuple[Token, ...] = tuple([Token("image", o) for o in image] + [Token("text", o) for o in text])
        lookup = torch.zeros(2, int(owners.max()) - SHARED + 1, dtype=torch.long)  # [is_text, owner - SHARED]
        for i, group in enumerate(self.groups):
            lookup[int(group.part == "text"), group.owner - SHARED] = i
        self.group_of = lookup[is_text.long(), owners - SHARED]
        self.sizes = torch.bincount(self.group_of, minlength=len(self.groups)).tolist()
        self.perm = torch.argsort(self.group_of, stable=True)

    @property
    def starts(self) -> list[int]:
        """Start of every group in the grouped order, and the total at the end."""
        starts = [0]
        for size in self.sizes:
            starts.append(starts[-1] + size)
        return starts


def group_matrix(queries: TokenGroups, keys: TokenGroups, rules: Rules) -> torch.Tensor:
    """`allowed` for every pair of (query group, key group): float64 of 0 / bias / -inf."""
    return torch.tensor([[allowed(q, k, rules) for k in keys.groups] for q in queries.groups], dtype=torch.float64)


def dense(queries: TokenGroups, keys: TokenGroups, small: torch.Tensor, out: torch.Tensor) -> None:
    """Write the mask over the call's tokens (Lq, Lk) into `out`, from the group-level mask `small` (bool True =
    attend, or additive float): one gather of rows, one of columns, nothing larger than `out` on the way."""
    rows, columns = queries.group_of.to(out.device), keys.group_of.to(out.device)
    torch.gather(small.to(out.device).index_select(0, rows), 1, columns.expand(len(rows), -1), out=out)


def blocks(queries: TokenGroups, keys: TokenGroups, matrix: torch.Tensor) -> list[Block]:
    """The exact split of the masked attention into blocks of the grouped orders: per query group, the allowed keys
    of each logit bias in one call (their ranges concatenated); query groups with the same keys share it."""
    q_starts, k_starts = queries.starts, keys.starts
    n, m = matrix.shape
    shared: dict[tuple[tuple[tuple[int, int], ...], float], list[int]] = {}
    for g in range(n):
        by_bias: dict[float, list[tuple[int, int]]] = {}
        h = 0
        while h < m:
            bias = float(matrix[g, h])
            if bias == _NEG_INF:
                h += 1
                continue
            end = h + 1
            while end < m and float(matrix[g, end]) == bias:
                end += 1
            by_bias.setdefault(bias, []).append((k_starts[h], k_starts[end]))
            h = end
        for bias, ranges in by_bias.items():
            shared.setdefault((tuple(ranges), bias), []).append(g)
    spans = [(q0, q1, ranges, bias) for (ranges, bias), groups in shared.items() for q0, q1 in _runs(groups)]
    spans.sort(key=lambda s: (-(q_starts[s[1]] - q_starts[s[0]]), s[0], s[2]))
    written = [False] * n
    found = []
    for q0, q1, ranges, bias in spans:
        for a, b, done in _status_runs(written, q0, q1):
            found.append(Block(q_starts[a], q_starts[b], ranges, bias, not done))
        written[q0:q1] = [True] * (q1 - q0)
    return found


def _runs(groups: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs [a, b) of sorted group indices."""
    runs: list[tuple[int, int]] = []
    for g in groups:
        if runs and runs[-1][1] == g:
            runs[-1] = (runs[-1][0], g + 1)
        else:
            runs.append((g, g + 1))
    return runs


def _status_runs(written: list[bool], start: int, end: int) -> list[tuple[int, int, bool]]:
    """Runs [a, b) of groups in [start, end) that earlier blocks have (or have not) written."""
    runs: list[tuple[int, int, bool]] = []
    for g in range(start, end):
        if runs and runs[-1][2] == written[g]:
            runs[-1] = (runs[-1][0], g + 1, written[g])
        else:
            runs.append((g, g + 1, written[g]))
    return runs


class Plan:
    """One compiled mask for one call's batch items (the token layout and owners of each), device and dtype: the
    calls of the split kernel, per group of batch items that share a mask, and the dense mask `mask` (B or 1, 1, Lq,
    Lk) (the reference, and what `AttentionCall.probabilities` reads), built on first use: the split kernel never
    needs it.

    The keys are the queries' own tokens (self- and joint attention) unless `keys` gives their layout and owners per
    batch item (cross-attention from image tokens to text)."""

    def __init__(self, items: list[tuple[Layout, torch.Tensor]], rules: Rules, dtype: torch.dtype,
                 device: torch.device, keys: list[tuple[Layout, torch.Tensor]] | None = None):
        compiled: dict[tuple, tuple[TokenGroups, TokenGroups, torch.Tensor]] = {}
        per_item: list[tuple[TokenGroups, TokenGroups, torch.Tensor]] = []
        for (layout, owners), (k_layout, k_owners) in zip(items, keys or items, strict=True):
            key = (layout, tuple(owners.tolist()), k_layout, tuple(k_owners.tolist()))
            if key not in compiled:
                q_groups = TokenGroups(layout, owners)
                k_groups = q_groups if keys is None else TokenGroups(k_layout, k_owners)
                compiled[key] = (q_groups, k_groups, group_matrix(q_groups, k_groups, rules))
            per_item.append(compiled[key])
        self.noop = all(bool((matrix == 0).all()) for _, _, matrix in compiled.values())
        if self.noop:  # everything sees everything: the stock kernel does it
            return
        variants = list(compiled.values())
        self.tokens = len(variants[0][1].group_of)  # keys of the call's own layout
        self._dense_from = (variants if len(variants) == 1 else per_item, dtype, device)
        self._batches: list[tuple[slice | torch.Tensor, list[_Call]]] = []
        for variant in variants:
            q_groups, k_groups, matrix = variant
            rows = [i for i, item in enumerate(per_item) if item is variant]
            q_perm, k_perm = q_groups.perm.to(device), k_groups.perm.to(device)
            calls = [_Call(_index(q_perm[b.q0:b.q1]), _index(torch.cat([k_perm[k0:k1] for k0, k1 in b.keys])),
                           b.bias, b.first) for b in blocks(q_groups, k_groups, matrix)]
            batch = slice(None) if len(variants) == 1 else _index(torch.tensor(rows, device=device))
            self._batches.append((batch, calls))

    @cached_property
    def mask(self) -> torch.Tensor:
        """The dense mask: bool (True = attend) where every bias is 0 or -inf, else additive in the plan's dtype."""
        per_item, dtype, device = self._dense_from
        boolean = all(set(matrix.unique().tolist()) <= {0.0, _NEG_INF} for _, _, matrix in per_item)
        queries = len(per_item[0][0].group_of)
        mask = torch.empty(len(per_item), 1, queries, self.tokens, dtype=torch.bool if boolean else dtype,
                           device=device)
        for i, (q_groups, k_groups, matrix) in enumerate(per_item):
            dense(q_groups, k_groups, matrix == 0 if boolean else matrix.to(dtype), mask[i, 0])
        return mask

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked attention (out (B, H, L, D), lse (B, H, L)) by the split: fused calls on the allowed blocks only."""
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:3], dtype=torch.float32)
        for batch, calls in self._batches:
            if isinstance(batch, slice):
                _split(q[batch], k[batch], v[batch], scale, calls, out[batch], lse[batch])
            else:
                o, l = out[batch], lse[batch]
                _split(q[batch], k[batch], v[batch], scale, calls, o, l)
                out[batch], lse[batch] = o, l
        return out, lse


@dataclass(frozen=True)
class _Call:
    """One fused kernel call of the split, with its queries and keys as positions in the call's own order."""

    queries: slice | torch.Tensor
    keys: slice | torch.Tensor
    bias: float
    first: bool


def _index(positions: torch.Tensor) -> slice | torch.Tensor:
    """Positions as a slice where they are consecutive (a view, no copy), else as an index to gather."""
    start = int(positions[0])
    if torch.equal(positions, torch.arange(start, start + len(positions), device=positions.device)):
        return slice(start, start + len(positions))
    return positions


def _take(t: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
    return t[:, :, index] if isinstance(index, slice) else t.index_select(2, index)


def _put(t: torch.Tensor, index: slice | torch.Tensor, value: torch.Tensor) -> None:
    if isinstance(index, slice):
        t[:, :, index] = value
    else:
        t.index_copy_(2, index, value.to(t.dtype))


def _split(q, k, v, scale: float, calls: list[_Call], out: torch.Tensor, lse: torch.Tensor) -> None:
    """Run the calls of one batch group, writing (and merging by lse) into `out` and `lse` in place."""
    for c in calls:
        o, l = ops.attention(_take(q, c.queries), _take(k, c.keys), _take(v, c.keys), None, scale)
        if c.bias:
            l = l + c.bias
        if not c.first:
            o, l = ops.merge([(_take(out, c.queries), _take(lse, c.queries)), (o, l)])
        _put(out, c.queries, o)
        _put(lse, c.queries, l)


def base_bias(weight: float) -> float:
    """The logit bias that multiplies attention on the base prompt by `weight` (log 0 = -inf hides it)."""
    return math.log(weight) if weight > 0 else _NEG_INF

