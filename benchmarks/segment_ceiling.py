"""What limits segmentation on the shapes models: the token grid, or the attention itself?

    python benchmarks/segment_ceiling.py [MODEL ...]     # writes benchmarks/results/segment-ceiling-<model>.json

On the images and noise level of `attnkit eval`'s segmentation, in one run per model:
- `grid_ceiling`: the mIoU of perfect segments that live on the model's self-attention token grid (each true region's
  area pooled onto the grid, upsampled as DiffSeg's proposals are, each pixel given the largest): the best any
  method reading that grid can do;
- `diffseg`: DiffSeg as `attnkit eval` runs it (all self-attention sites averaged);
- `known_count_per_site`: each site's per-query maps clustered into exactly as many segments as the image has
  true regions (k-means), a ceiling for any merging rule on that site's maps, and `known_count_best` the best site;
- `own_region_mass` / `own_region_share`: the attention a query inside an object gives that object's tokens, beside
  the share of the grid the object covers (what uniform attention would give it).
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

from attnkit import sites
from attnkit.segment import trace
from attnkit.segment.diffseg import label_proposals
from attnkit.shapes import MODEL_NAMES, load
from attnkit.shapes.evaluate import _phrase, generate, layouts, matched_iou, segment_options, true_regions
from per_model import per_model_main

IMAGES = 16  # as `attnkit eval` (2 x 8 seeds)


def _grid_ceiling(regions: list[np.ndarray], grid: tuple[int, int]) -> float:
    planes = F.adaptive_avg_pool2d(torch.from_numpy(np.stack(regions)).float(), grid)
    return matched_iou(label_proposals(planes, regions[0].shape), regions)


def _known_count(maps: torch.Tensor, regions: list[np.ndarray]) -> float:
    """maps: (rows * cols, rows, cols); k-means into len(regions) clusters."""
    grid = maps.shape[1:]
    _, assigned = kmeans2(maps.reshape(len(maps), -1).double().numpy(), len(regions), minit="++", seed=0)
    planes = F.one_hot(torch.from_numpy(assigned).long(), len(regions)).T.reshape(len(regions), *grid)
    return matched_iou(label_proposals(planes, regions[0].shape), regions)


def _own_mass(maps: torch.Tensor, regions: list[np.ndarray]) -> tuple[float, float]:
    """Mean attention mass of object queries on their own object's tokens, and the object's share of the grid."""
    grid = maps.shape[1:]
    flat = maps.reshape(len(maps), -1)
    mass, share = [], []
    for region in regions[:-1]:
        inside = F.adaptive_avg_pool2d(torch.from_numpy(region)[None].float(), grid)[0].flatten() > 0.5
        if inside.any():
            mass.append(float(flat[inside][:, inside].sum(1).mean()))
            share.append(float(inside.float().mean()))
    return float(np.mean(mass)) if mass else float("nan"), float(np.mean(share)) if share else float("nan")


def measure(model: str) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = load(model)
    cases = layouts(IMAGES, seed=1)  # the images `attnkit eval` segments
    prompts = [f"{_phrase(left)} and {_phrase(right)}" for left, right in cases]
    seeds = [5000 + k for k in range(IMAGES)]
    chosen = [s for s in sites(pipe) if s.kind in ("self", "self2", "joint", "single")]
    per_site: dict[str, list[torch.Tensor]] = {s.name: [] for s in chosen}
    images, diffseg = [], []
    for begin in range(0, IMAGES, 8):
        chunk = slice(begin, begin + 8)
        with ExitStack() as stack:
            together = stack.enter_context(trace(pipe, **segment_options(pipe)))
            alone = {s.name: stack.enter_context(trace(pipe, sites_=[s])) for s in chosen}
            made = generate(pipe, prompts[chunk], seeds[chunk])
        images += made
        diffseg += [matched_iou(together.segmentation(item=i).labels, true_regions(im)) for i, im in enumerate(made)]
        for name, tc in alone.items():
            grid = tc.recorder.reduction.resolution(tc.recorder, tc.latent)
            per_site[name] += [m.reshape(-1, *grid).cpu() for m in tc.maps]
    regions = [true_regions(im) for im in images]
    known = {name: float(np.mean([_known_count(m, r) for m, r in zip(maps, regions)]))
             for name, maps in per_site.items()}
    best = max(known, key=known.get)
    grid = per_site[best][0].shape[1:]
    masses = [_own_mass(m, r) for m, r in zip(per_site[best], regions)]
    return {
        "model": model, "images": IMAGES, "grid": list(grid),
        "grid_ceiling": float(np.mean([_grid_ceiling(r, grid) for r in regions])),
        "diffseg": float(np.mean(diffseg)),
        "known_count_per_site": known, "known_count_best": known[best], "best_site": best,
        "own_region_mass": float(np.nanmean([m for m, _ in masses])),
        "own_region_share": float(np.nanmean([s for _, s in masses])),
        "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    per_model_main(__doc__, measure, "segment-ceiling", MODEL_NAMES, argv,
                   shown=lambda result: {k: v for k, v in result.items() if k != "known_count_per_site"})


if __name__ == "__main__":
    sys.exit(main())
