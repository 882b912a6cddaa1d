"""DiffSeg's unsupervised merging of self-attention maps into segments (Tian et al., "Diffuse, Attend, and Segment",
CVPR 2024), on maps recorded by `attnkit.segment.PerQuery`.

Every image query has an attention map over the image, a probability distribution; queries of one object attend
alike. From the maps of an anchor grid of queries, each anchor gathers every map within a symmetric KL distance
`threshold` and takes their mean; the means are merged again, greedily, with the same rule; k-means over all maps,
started from the merged ones, tidies the proposals; each pixel takes the proposal that is largest there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

from ..errors import AttnkitError
from .defaults import DEFAULT_ANCHORS, DEFAULT_THRESHOLDS

__all__ = ["anchor_grid", "kl", "label_proposals", "merge", "segment_maps"]

_TINY = 1e-12  # attention probabilities are positive; this only guards the logarithm against underflow


def kl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence / 2 between maps over their last two axes (broadcast over the others)."""
    quotient = x.clamp_min(_TINY).log() - y.clamp_min(_TINY).log()
    return ((x - y) * quotient).sum((-2, -1)) / 2


def anchor_grid(rows: int, cols: int, points: int = DEFAULT_ANCHORS) -> torch.Tensor:
    """Flat indices of up to `points` x `points` evenly spaced, centred queries of a rows x cols grid."""

    def axis(size: int) -> np.ndarray:
        count = min(points, size)
        if count == 1:
            return np.array([(size - 1) // 2])
        spacing = (size - 1) // (count - 1)
        start = (size - 1 - spacing * (count - 1)) // 2
        return start + spacing * np.arange(count)

    r, c = np.meshgrid(axis(rows), axis(cols), indexing="ij")
    return torch.from_numpy((r * cols + c).reshape(-1))


def merge(maps: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, anchors: int = DEFAULT_ANCHORS,
          refine: bool = True) -> torch.Tensor:
    """Proposals (K, rows, cols) from per-query maps (rows * cols queries, rows, cols), each map summing to 1."""
    if maps.ndim != 3 or maps.shape[0] != maps.shape[1] * maps.shape[2]:
        raise AttnkitError(f"DiffSeg merges one map per query of the grid: (rows * cols, rows, cols), got "
                           f"{tuple(maps.shape)}.")
    if not thresholds or any(t <= 0 for t in thresholds):
        raise AttnkitError(f"thresholds={list(thresholds)}: give one positive KL threshold per merging round, "
                           f"e.g. {list(DEFAULT_THRESHOLDS)}.")
    maps = maps.double()
    flat = maps.reshape(maps.shape[0], -1)
    chosen = maps[anchor_grid(*maps.shape[1:], anchors)]
    close = torch.stack([kl(anchor, maps) < thresholds[0] for anchor in chosen]).double()  # (anchors, queries)
    merged = (close @ flat / close.sum(1, keepdim=True)).reshape(-1, *maps.shape[1:])
    for threshold in thresholds[1:]:
        merged = _greedy(merged, threshold)
    if refine:
        merged = _refine(flat, merged)
    return merged.float()


def _greedy(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """One later round: each map not yet taken takes the mean of every map within `threshold` of it."""
    taken = torch.zeros(len(maps), dtype=torch.bool)
    out = []
    for i in range(len(maps)):
        if taken[i]:
            continue
        close = kl(maps[i], maps) < threshold
        close[i] = True
        taken |= close
        out.append(maps[close].mean(0))
    return torch.stack(out)


def _refine(flat: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """k-means over every query's map, started from the merged proposals; empty clusters are dropped."""
    _, assigned = kmeans2(flat.numpy(), merged.reshape(len(merged), -1).numpy(), minit="matrix", seed=0)
    assigned = torch.from_numpy(assigned)
    kept = [flat[assigned == k].mean(0) for k in range(len(merged)) if (assigned == k).any()]
    return torch.stack(kept).reshape(-1, *merged.shape[1:])


def segment_maps(maps: torch.Tensor, size: tuple[int, int], thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 anchors: int = DEFAULT_ANCHORS, refine: bool = True) -> np.ndarray:
    """Segment ids (height, width), 0..K-1 in order of first appearance, from per-query maps: the proposals
    upsampled (bilinear) to `size` and each pixel given the largest."""
    return label_proposals(merge(maps, thresholds, anchors, refine), size)


def label_proposals(proposals: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Segment ids (height, width), 0..K-1 in order of first appearance, from proposals (K, rows, cols) on the token
    grid: upsampled (bilinear) to `size`, each pixel given the largest."""
    upsampled = F.interpolate(proposals[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    winner = upsampled.argmax(0).numpy()
    _, first, ids = np.unique(winner, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber so that ids follow reading order
    return order[ids].reshape(size).astype(np.int32)
