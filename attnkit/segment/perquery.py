"""`PerQuery`: the recorder reduction DiffSeg segments with, every image query's self-attention map kept whole."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import ops
from ..errors import AttnkitError
from ..processors import AttentionCall
from ..recorders import CHUNK_BYTES, MapRecorder, Reduction, resampling, token_grid

__all__ = ["PerQuery", "resolution_weight"]


class PerQuery(Reduction):
    """image->image maps kept per query: `total` is (items, anchor rows * anchor cols, rows, cols), the attention
    map over the image of every query of an anchor grid, as DiffSeg (Tian et al., CVPR 2024) aggregates them.

    Each site's maps are averaged over heads, upsampled (bilinear) to the common grid and renormalised to sum 1;
    queries are tiled up to the anchor grid from coarser sites and area-averaged down from finer ones. The common
    grid is the finest site grid, reduced by a whole factor until its longer side is at most `max_side`, so that
    memory is bounded however large the image: (rows * cols)^2 floats per item. Sites are weighted as DiffSeg's code
    weights them (github google/diffseg, `DiffSeg.aggregate_weights`): the sites of one token grid are averaged, and
    each grid counts in proportion to its side, sqrt(rows * cols) / the sum of that over the recorded grids (SD1.5 at
    512 px: 64/120, 32/120, 16/120 and 8/120). The weights of one forward sum to 1."""

    relations = ("image->image",)

    def __init__(self, max_side: int = 64) -> None:
        if max_side < 1:
            raise AttnkitError(f"max_side={max_side}: give the longest side of the anchor grid, at least 1 token.")
        self.max_side = max_side

    def resolution(self, recorder: MapRecorder, latent: tuple[int, int]) -> tuple[int, int]:
        finest = max((s.grid(latent) for s in recorder.sites), key=lambda grid: grid[0] * grid[1])
        factor = math.ceil(max(finest) / self.max_side)
        return math.ceil(finest[0] / factor), math.ceil(finest[1] / factor)

    def reduce(self, recorder: MapRecorder, view: AttentionCall, lse: torch.Tensor, rows: slice,
               latent: tuple[int, int]) -> tuple[torch.Tensor, float]:
        grid = token_grid(view)
        out = self.resolution(recorder, latent)
        cols = view.layout.span("keys", "image")
        items, heads = view.q.shape[:2]
        to_rows, to_cols = resampling(grid[0], out[0]).to(view.q.device), resampling(grid[1], out[1]).to(view.q.device)
        row_bytes = 4 * items * grid[1] * (heads * (cols.stop - cols.start) + out[0] * out[1])
        chunk = max(1, CHUNK_BYTES // row_bytes)
        work = ops.working(view.q.dtype)
        to_rows, to_cols = to_rows.to(work), to_cols.to(work)
        total = torch.zeros(items, out[0], out[1], out[0] * out[1], device=view.q.device, dtype=work)
        tiled = out[0] >= grid[0] and out[1] >= grid[1]  # each anchor query takes its one source query's map
        source_rows, source_cols = to_rows.argmax(0), to_cols.argmax(0)
        for first in range(0, grid[0], chunk):
            last = min(first + chunk, grid[0])
            queries = slice(rows.start + first * grid[1], rows.start + last * grid[1])
            probs = view.probabilities(lse, queries, cols).mean(1)  # (items, queries, keys)
            probs = probs.reshape(-1, 1, *grid)
            if tuple(grid) != out:
                probs = F.interpolate(probs, size=out, mode="bilinear", align_corners=False)
            probs = probs / probs.sum((-2, -1), keepdim=True)
            probs = probs.reshape(items, last - first, grid[1], out[0] * out[1])
            if tiled:
                mine = (source_rows >= first) & (source_rows < last)
                total[:, mine] += probs[:, source_rows[mine] - first][:, :, source_cols]
            else:
                total += torch.einsum("nrcm,rR,cC->nRCm", probs, to_rows[first:last], to_cols)
        weight = resolution_weight([s.grid(latent) for s in recorder.sites], grid)
        return total.mul_(weight).reshape(items, out[0] * out[1], *out), weight


def resolution_weight(grids: list[tuple[int, int]], grid: tuple[int, int]) -> float:
    """The weight of one site of token grid `grid` among sites of `grids` (one per site): its grid's share of the
    grids' sides (sqrt(rows * cols)), shared equally by the sites of that grid."""
    sides = {tuple(g): math.sqrt(g[0] * g[1]) for g in grids}
    same = sum(tuple(g) == tuple(grid) for g in grids)
    return sides[tuple(grid)] / sum(sides.values()) / same
