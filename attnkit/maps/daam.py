"""DAAM's word maps (Tang et al., "What the DAAM: Interpreting Stable Diffusion Using Cross Attention", ACL 2023), as
its code computes them (github castorini/daam 0.2.0, commit 09564e0: `daam/trace.py`, `daam/heatmap.py`,
`daam/utils.py`).

    with attnkit.maps.trace(pipe, prompt, method="daam") as tc:
        image = pipe(prompt).images[0]
    tc.heatmap("cat")      # (rows, cols): DAAM's word heat map

DAAM reads the cross-attention of a UNet's down and up blocks (not its middle block) in the conditional half of the
CFG batch. Each layer's and head's image->text probabilities are summed over the denoising steps at the layer's own
token grid; each such sum is then upsampled (bicubic) to the finest grid of those layers and clamped at 0, and the
(layer, head) maps are averaged, every head counting once: the global heat map G (text tokens, rows, cols). With
`normalize`, every token's map is divided at each pixel by the sum of the prompt tokens' maps (start and end tokens
left out) plus 1e-6. A word's map is the mean of G over the word's tokens, in every place the word occurs (DAAM's
`compute_word_heat_map`), where attnkit's default maps sum them. Memory: one buffer per (layer, head) at its own
grid, summed over steps, as DAAM keeps them.

Where attnkit differs from the code: without CFG (a single batch item) DAAM keeps the last half of the heads of that
item, attnkit the item's every head; DAAM's 8 x 8 skip (`factor != 8`) never applies to down and up blocks of SD1.x,
SD2 or SDXL at their sizes, and its fixed 64 (or 96) output side is the finest grid of those layers there.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import AttnkitError
from ..families import family_of
from ..processors import AttentionCall
from ..recorders import CHUNK_BYTES, MapRecorder, Reduction, token_grid
from ..sites import SiteList, sites
from .trace import Trace

__all__ = ["DaamTrace", "NORMALIZE_EPSILON", "PerHead", "daam_sites"]

#: DAAM's `compute_global_heat_map(normalize=True)` divides by the prompt tokens' sum plus this.
NORMALIZE_EPSILON = 1e-6


class PerHead(Reduction):
    """image->text probabilities of every head kept per site at the site's own token grid, summed over steps:
    (items, heads, text tokens, rows, cols) per site; `total` is DAAM's global heat map of them."""

    relations = ("image->text",)
    per_site = True

    def reduce(self, recorder: MapRecorder, view: AttentionCall, lse: torch.Tensor, rows: slice,
               latent: tuple[int, int]) -> tuple[torch.Tensor, float]:
        cols = view.layout.span("keys", "text")
        items, heads = view.q.shape[:2]
        step = max(1, CHUNK_BYTES // (8 * items * heads * (cols.stop - cols.start)))
        probs = torch.cat([view.probabilities(lse, slice(start, min(start + step, rows.stop)), cols)
                           for start in range(rows.start, rows.stop, step)], dim=2)
        return probs.transpose(2, 3).reshape(items, heads, cols.stop - cols.start, *token_grid(view)), 1.0

    def combine(self, recorder: MapRecorder, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each (site, head) sum upsampled (bicubic) to the finest grid, clamped at 0, averaged over (site, head)."""
        size = max((tuple(part.shape[-2:]) for part in parts.values()), key=lambda grid: grid[0] * grid[1])
        total, heads = None, 0
        for part in parts.values():
            items, count, text = part.shape[:3]
            up = F.interpolate(part.reshape(items * count, text, *part.shape[-2:]), size=size, mode="bicubic",
                               align_corners=False).clamp_min_(0)
            summed = up.reshape(items, count, text, *size).sum(1)
            total = summed if total is None else total + summed
            heads += count
        return total / heads


def daam_sites(pipe: Any) -> SiteList:
    """DAAM's layers: the cross-attention of the denoiser's down and up blocks, not of its middle block."""
    family = family_of(pipe)
    stages = (family.encoder, family.decoder)
    found = SiteList(s for s in sites(pipe) if s.kind == "cross" and s.stage in stages)
    if None in stages or not found:
        raise AttnkitError(f"method='daam' reads the cross-attention of a UNet's down and up blocks (DAAM, Tang et "
                           f"al.); {type(pipe).__name__}'s denoiser has none: use method='mean'.")
    return found


class DaamTrace(Trace):
    """A trace whose maps are DAAM's: `maps` is the global heat map (items, text tokens, rows, cols), summed over
    steps and averaged over (layer, head), normalised over the prompt's tokens with `normalize`; `heatmap(word)` the
    mean of the word's tokens."""

    method = "daam"

    def __init__(self, pipe: Any, recorder: MapRecorder, prompt: Any, normalize: bool) -> None:
        super().__init__(pipe, recorder, prompt)
        self.normalize = normalize

    @property
    def maps(self) -> torch.Tensor:
        """DAAM's global heat map per batch item: (items, text tokens, rows, cols)."""
        heat = self.total
        if not self.normalize:
            return heat
        prompt = torch.stack([self._prompt_sum(heat, item) for item in range(heat.shape[0])])
        return heat / (prompt + NORMALIZE_EPSILON)

    def _prompt_sum(self, heat: torch.Tensor, item: int) -> torch.Tensor:
        """The sum of item `item`'s prompt-token maps (rows, cols): DAAM's `maps[1:-1]` of the tokens it keeps."""
        positions = sorted({p for word in self.tokens(item).words for p in word.positions})
        return heat[item, positions].sum(0, keepdim=True)

    def heatmap(self, word: str, item: int = 0, occurrence: int | None = None,
                region: int | str | None = None) -> torch.Tensor:
        """(rows, cols): DAAM's map of `word` in batch item `item`, the mean over its tokens (all its occurrences
        unless `occurrence` picks one)."""
        if region is not None:
            raise AttnkitError("method='daam' maps a plain prompt's words; regional prompts have maps per region with "
                               "method='mean'.")
        positions = self.tokens(item).positions(word, occurrence)
        return self.maps[item, positions].mean(0)
