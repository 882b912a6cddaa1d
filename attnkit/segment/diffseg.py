"""DiffSeg's unsupervised merging of self-attention maps into segments (Tian et al., "Diffuse, Attend, and Segment",
CVPR 2024; code: github google/diffseg, `diffseg/segmentor.py`), on maps recorded by `attnkit.segment.PerQuery`.

Every image query has an attention map over the image, a probability distribution; queries of one object attend
alike. From the maps of an anchor grid of queries, each anchor gathers every map within a symmetric KL distance
`threshold` and takes their mean; the means are merged again, greedily, with the same rule; optionally k-means over
all maps, started from the merged ones, tidies the proposals; each pixel takes the proposal that is largest there.

Computed in float64 throughout. The reference computes the first round's distances in float16 (to save GPU memory),
which can flip a map lying within float16 rounding of the threshold; everything else follows its code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AttnkitError
from .defaults import DEFAULT_ANCHORS, DEFAULT_KMEANS_ITERATIONS, DEFAULT_THRESHOLDS

__all__ = ["anchor_grid", "kl", "kmeans", "label_proposals", "merge", "segment_maps"]

_TINY = 1e-12  # attention probabilities are positive; this only guards the logarithm against underflow
#: scikit-learn's KMeans `tol` (relative to the data's mean variance), which DiffSeg's refinement runs with.
KMEANS_TOLERANCE = 1e-4


def kl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence / 2 between maps over their last two axes (broadcast over the others)."""
    quotient = x.clamp_min(_TINY).log() - y.clamp_min(_TINY).log()
    return ((x - y) * quotient).sum((-2, -1)) / 2


def anchor_grid(rows: int, cols: int, points: int = DEFAULT_ANCHORS) -> torch.Tensor:
    """Flat indices of up to `points` x `points` evenly spaced, centred queries of a rows x cols grid (DiffSeg's
    `generate_sampling_grid` on its 64 x 64 grid: rows and columns 1, 5, ..., 61), row-major."""

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
          refine: bool = False, kmeans_iterations: int = DEFAULT_KMEANS_ITERATIONS) -> torch.Tensor:
    """Proposals (K, rows, cols), float64, from per-query maps (rows * cols queries, rows, cols), each summing to 1:
    `thresholds` gives one merging round each; `refine` runs k-means (at most `kmeans_iterations` rounds)."""
    if maps.ndim != 3 or maps.shape[0] != maps.shape[1] * maps.shape[2]:
        raise AttnkitError(f"DiffSeg merges one map per query of the grid: (rows * cols, rows, cols), got "
                           f"{tuple(maps.shape)}.")
    if not thresholds or any(t <= 0 for t in thresholds):
        raise AttnkitError(f"thresholds={list(thresholds)}: give one positive KL threshold per merging round, "
                           f"e.g. {list(DEFAULT_THRESHOLDS)}.")
    if kmeans_iterations < 1:
        raise AttnkitError(f"kmeans_iterations={kmeans_iterations}: give at least 1 (DiffSeg's k-means runs up to "
                           f"{DEFAULT_KMEANS_ITERATIONS}).")
    maps = maps.double()
    flat = maps.reshape(maps.shape[0], -1)
    close = (_anchor_distances(flat, anchor_grid(*maps.shape[1:], anchors)) < thresholds[0]).double()
    merged = (close @ flat / close.sum(1, keepdim=True)).reshape(-1, *maps.shape[1:])
    for threshold in thresholds[1:]:
        merged = _greedy(merged, threshold)
    if refine:
        labels = kmeans(flat, merged.reshape(len(merged), -1), kmeans_iterations)
        merged = torch.stack([flat[labels == k].mean(0) for k in range(len(merged)) if (labels == k).any()])
        merged = merged.reshape(-1, *maps.shape[1:])
    return merged


def _anchor_distances(flat: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(anchors, queries) symmetric KL / 2 between each anchor's map and every query's, by matrix products:
    KL(x, y) = (x.log x - x.log y - y.log x + y.log y) / 2."""
    logs = flat.clamp_min(_TINY).log()
    own = (flat * logs).sum(1)
    chosen, chosen_logs = flat[anchors], logs[anchors]
    return (own[anchors, None] - chosen @ logs.T - chosen_logs @ flat.T + own[None]) / 2


def _greedy(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """One later round: in index order, each map not yet taken takes the mean of every map within `threshold` of it,
    taken ones included (only the choice of anchors skips them)."""
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


def kmeans(points: torch.Tensor, centres: torch.Tensor, iterations: int = DEFAULT_KMEANS_ITERATIONS,
           tolerance: float = KMEANS_TOLERANCE) -> torch.Tensor:
    """Cluster labels of `points` (N, D) by Lloyd's k-means from `centres` (K, D), as scikit-learn's
    `KMeans(init=centres, n_init=1)` runs it for DiffSeg: at most `iterations` rounds, stopping when the labels repeat
    or the centres move by at most `tolerance` x the points' mean variance (squared, summed); the labels then belong
    to the final centres. A cluster left empty keeps its centre (scikit-learn would move it to a far point; DiffSeg's
    code assumes none is empty)."""
    limit = tolerance * float(points.var(0, unbiased=False).mean())
    previous = None
    for _ in range(iterations):
        labels = _nearest(points, centres)
        updated = centres.clone()
        for k in labels.unique():
            updated[k] = points[labels == k].mean(0)
        shift = float(((updated - centres) ** 2).sum())
        centres = updated
        if previous is not None and torch.equal(labels, previous):
            return labels
        if shift <= limit:
            break
        previous = labels
    return _nearest(points, centres)


def _nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centre (squared Euclidean distance; the lowest index on a tie)."""
    distances = (points * points).sum(1, keepdim=True) - 2 * points @ centres.T + (centres * centres).sum(1)[None]
    return distances.argmin(1)


def segment_maps(maps: torch.Tensor, size: tuple[int, int], thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 anchors: int = DEFAULT_ANCHORS, refine: bool = False,
                 kmeans_iterations: int = DEFAULT_KMEANS_ITERATIONS) -> np.ndarray:
    """Segment ids (height, width), 0..K-1 in order of first appearance, from per-query maps: the proposals
    upsampled (bilinear) to `size` and each pixel given the largest."""
    return label_proposals(merge(maps, thresholds, anchors, refine, kmeans_iterations), size)


def label_proposals(proposals: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Segment ids (height, width), 0..K-1 in order of first appearance, from proposals (K, rows, cols) on the token
    grid: upsampled (bilinear) to `size`, each pixel given the largest (the lowest proposal on a tie)."""
    upsampled = F.interpolate(proposals[None].double(), size=size, mode="bilinear", align_corners=False)[0]
    winner = upsampled.argmax(0).numpy()
    _, first, ids = np.unique(winner, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber so that ids follow reading order
    return order[ids].reshape(size).astype(np.int32)
