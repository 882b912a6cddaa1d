"""The regional attention mask: a pure function of (query token, key token), compiled once per token layout into a
dense reference mask and into an exact split of the masked attention into fused kernel calls.

Every token has a part (image or text) and an owner: the region whose prompt it carries or whose area it lies in,
`BASE` for the base prompt and the image tokens no region covers, `PAD` for text slots that stand in for nothing
(copies of the global negative that keep a CFG batch's text lengths equal). `allowed` decides one pair of tokens;
tokens with the same part and owner form a group whose rows and columns of the mask are identical, so the function
is evaluated once per pair of groups and the result expanded.

The split: in an order that puts each group's tokens next to each other, the allowed key groups of every query
group form a few contiguous key ranges; each (query range, key range) block is one call of the fused kernel, and
blocks over disjoint keys of the same queries are merged exactly through their log-sum-exps. The masked-out work
is never done, so masked attention costs less than unmasked attention over the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .. import ops
from .spec import BASE

__all__ = ["Token", "Rules", "allowed", "TokenGroups", "Block", "Plan", "PAD"]

#: Owner of text slots that nothing may see (uncond copies that only pad the CFG batch's text to equal length).
PAD = -2
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
    `image_isolation`: image tokens see only image tokens of their own region.
    `hide_pads`: padding text slots are seen by nothing but themselves.
    `base_bias`: log(base weight), added to the logits of every image token on the base prompt's tokens.
    """

    image_to_text: bool = True
    text_to_image: bool = True
    text_isolation: bool = True
    image_isolation: bool = False
    hide_pads: bool = True
    base_bias: float = 0.0


def allowed(query: Token, key: Token, rules: Rules) -> float:
    """Additive logit bias of `query` attending to `key`: 0 (attend), `rules.base_bias`, or -inf (masked)."""
    same = query.owner == key.owner
    if rules.hide_pads and PAD in (query.owner, key.owner):
        return 0.0 if same else _NEG_INF
    if query.part == "image" and key.part == "image":
        visible = same or not rules.image_isolation
    elif query.part == "image":
        if key.owner == BASE:
            return rules.base_bias
        visible = same or not rules.image_to_text
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

    `layout` gives the parts in the call's order, `owners` every token's owner. Groups are ordered
    image before text (image groups by owner, BASE last; text groups as they appear), which keeps every region's
    image tokens contiguous after one permutation.
    """

    def __init__(self, layout: Layout, owners: torch.Tensor):
        owners = owners.cpu()
        is_text = torch.cat([torch.full((n,), part == "text") for part, n in layout])
        image = sorted(owners[~is_text].unique().tolist(), key=lambda o: (o < 0, o))
        text = list(dict.fromkeys(torch.unique_consecutive(owners[is_text]).tolist()))
        self.groups: tuple[Token, ...] = tuple([Token("image", o) for o in image] + [Token("text", o) for o in text])
        lookup = torch.zeros(2, int(owners.max()) - PAD + 1, dtype=torch.long)  # [is_text, owner - PAD] -> group
        for i, group in enumerate(self.groups):
            lookup[int(group.part == "text"), group.owner - PAD] = i
        self.group_of = lookup[is_text.long(), owners - PAD]
        self.sizes = torch.bincount(self.group_of, minlength=len(self.groups)).tolist()
        self.perm = torch.argsort(self.group_of, stable=True)

    def matrix(self, rules: Rules) -> torch.Tensor:
        """`allowed` for every pair of groups: (groups, groups) float64 of 0 / bias / -inf."""
        return torch.tensor([[allowed(q, k, rules) for k in self.groups] for q in self.groups], dtype=torch.float64)

    def dense(self, matrix: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The mask over the call's tokens (L, L): bool (True = attend) when it has no bias, else additive float."""
        index = self.group_of.to(device)
        small = matrix == 0 if set(matrix.unique().tolist()) <= {0.0, _NEG_INF} else matrix.to(dtype)
        return torch.gather(small.to(device).index_select(0, index), 1, index.expand(len(index), -1))

    def blocks(self, matrix: torch.Tensor) -> list[Block]:
        """The exact split of the masked attention into blocks of the grouped order: per query group, the allowed
        keys of each logit bias in one call (their ranges concatenated); query groups with the same keys share it."""
        starts = [0]
        for size in self.sizes:
            starts.append(starts[-1] + size)
        n = len(self.groups)
        shared: dict[tuple[tuple[tuple[int, int], ...], float], list[int]] = {}
        for g in range(n):
            by_bias: dict[float, list[tuple[int, int]]] = {}
            h = 0
            while h < n:
                bias = float(matrix[g, h])
                if bias == _NEG_INF:
                    h += 1
                    continue
                end = h + 1
                while end < n and float(matrix[g, end]) == bias:
                    end += 1
                by_bias.setdefault(bias, []).append((starts[h], starts[end]))
                h = end
            for bias, ranges in by_bias.items():
                shared.setdefault((tuple(ranges), bias), []).append(g)
        spans = [(q0, q1, keys, bias) for (keys, bias), groups in shared.items() for q0, q1 in _runs(groups)]
        spans.sort(key=lambda s: (-(starts[s[1]] - starts[s[0]]), s[0], s[2]))
        written = [False] * n
        blocks = []
        for q0, q1, keys, bias in spans:
            for a, b, done in _status_runs(written, q0, q1):
                blocks.append(Block(starts[a], starts[b], keys, bias, not done))
            written[q0:q1] = [True] * (q1 - q0)
        return blocks


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
    runs: list[tuple[int, int, bool]] = []
    for g in range(start, end):
        if runs and runs[-1][2] == written[g]:
            runs[-1] = (runs[-1][0], g + 1, written[g])
        else:
            runs.append((g, g + 1, written[g]))
    return runs


class Plan:
    """One compiled mask for one token layout, CFG branch set, device and dtype: the dense mask (reference, and
    what `AttentionCall.probabilities` reads) and the blocks of the split kernel, per batch group."""

    def __init__(self, layout: Layout, owners_per_item: list[torch.Tensor], rules: Rules, dtype: torch.dtype,
                 device: torch.device):
        compiled: dict[tuple, tuple[TokenGroups, torch.Tensor]] = {}
        self.items: list[tuple[TokenGroups, torch.Tensor]] = []
        for owners in owners_per_item:
            key = tuple(owners.tolist())
            if key not in compiled:
                groups = TokenGroups(layout, owners)
                compiled[key] = (groups, groups.matrix(rules))
            self.items.append(compiled[key])
        self.noop = all(bool((matrix == 0).all()) for _, matrix in compiled.values())
        variants = list(compiled.values())
        masks = {id(groups): groups.dense(matrix, dtype, device) for groups, matrix in variants}
        if len(variants) == 1:
            self.mask = masks[id(variants[0][0])][None, None]
        else:
            self.mask = torch.stack([masks[id(groups)] for groups, _ in self.items])[:, None]
        self._batches = []
        for groups, matrix in variants:
            rows = [i for i, (g, _) in enumerate(self.items) if g is groups]
            blocks = groups.blocks(matrix)
            identity = bool((groups.perm == torch.arange(len(groups.perm))).all())
            whole = len(blocks) == 1 and blocks[0] == Block(0, len(groups.perm), ((0, len(groups.perm)),), 0.0, True)
            perm = None if identity or whole else groups.perm.to(device)
            inverse = None if perm is None else torch.argsort(groups.perm).to(device)
            index = None if len(variants) == 1 else _batch_index(rows, device)
            self._batches.append((index, perm, inverse, blocks))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked attention (out (B, H, L, D), lse (B, H, L)) by the split: fused calls on the allowed blocks only."""
        if len(self._batches) == 1:
            _, perm, inverse, blocks = self._batches[0]
            return _split(q, k, v, scale, perm, inverse, blocks)
        out = torch.empty_like(q)
        lse = q.new_empty(q.shape[:3], dtype=torch.float32)
        for index, perm, inverse, blocks in self._batches:
            o, l = _split(q[index], k[index], v[index], scale, perm, inverse, blocks)
            out[index], lse[index] = o, l
        return out, lse


def _batch_index(rows: list[int], device: torch.device) -> slice | torch.Tensor:
    """Batch items of one branch: a slice when contiguous (CFG batches are [uncond..., cond...]), so no copy."""
    if rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return torch.tensor(rows, device=device)


def _split(q, k, v, scale, perm, inverse, blocks: list[Block]) -> tuple[torch.Tensor, torch.Tensor]:
    if perm is not None:
        q, k, v = (t.index_select(2, perm) for t in (q, k, v))
    accumulate = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    out = q.new_empty(q.shape, dtype=accumulate)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    for b in blocks:
        if len(b.keys) == 1:
            keys, values = k[:, :, b.keys[0][0]:b.keys[0][1]], v[:, :, b.keys[0][0]:b.keys[0][1]]
        else:
            keys = torch.cat([k[:, :, k0:k1] for k0, k1 in b.keys], dim=2)
            values = torch.cat([v[:, :, k0:k1] for k0, k1 in b.keys], dim=2)
        o, l = ops.attention(q[:, :, b.q0:b.q1], keys, values, None, scale)
        if b.bias:
            l = l + b.bias
        if b.first:
            out[:, :, b.q0:b.q1], lse[:, :, b.q0:b.q1] = o, l
        else:
            merged, total = ops.merge([(out[:, :, b.q0:b.q1], lse[:, :, b.q0:b.q1]), (o, l)])
            out[:, :, b.q0:b.q1], lse[:, :, b.q0:b.q1] = merged, total
    if inverse is not None:
        out, lse = out.index_select(2, inverse), lse.index_select(2, inverse)
    return out.to(q.dtype), lse


def base_bias(weight: float) -> float:
    """The logit bias that multiplies attention on the base prompt by `weight` (log 0 = -inf hides it)."""
    return math.log(weight) if weight > 0 else _NEG_INF

