"""Judge generated shapes images by colour segmentation: no detector, the pixels are the ground truth.

Each pixel takes the nearest palette colour (background included); connected blobs of one colour are objects;
shape comes from blob geometry (a triangle is narrow at the top, a square fills its box, a circle is in between).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .data import BACKGROUND, COLORS, PALETTE

__all__ = ["MIN_AREA", "Blob", "detect", "follows_prompt", "label_pixels", "region_success"]

#: Blobs smaller than this many pixels are noise (the smallest drawn object, a 12 px triangle, has ~72).
MIN_AREA = 20
_CENTERS = np.array([BACKGROUND, *(PALETTE[c] for c in COLORS)], dtype=np.float32)


@dataclass(frozen=True)
class Blob:
    """One connected object: colour, classified shape and its pixel mask."""

    color: str
    shape: str
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def label_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W) int: 0 for background, 1 + index into COLORS for each palette colour (nearest in RGB)."""
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    return np.argmin(((pixels[..., None, :] - _CENTERS) ** 2).sum(-1), axis=-1)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as boolean masks."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    found = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(mask, dtype=bool)
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp[y, x] = True
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append(comp)
    return found


def classify_shape(mask: np.ndarray) -> str:
    """'triangle' if much narrower at a quarter of its height than at three quarters, else square or circle by fill."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    height, width = bottom - top + 1, right - left + 1
    widths = mask[top:bottom + 1].sum(1)
    upper, lower = widths[int(height * 0.25)], widths[min(int(height * 0.75), height - 1)]
    if upper < 0.75 * lower:
        return "triangle"
    return "square" if mask.sum() / (height * width) > 0.86 else "circle"


def detect(image: np.ndarray, min_area: int = MIN_AREA) -> list[Blob]:
    """All objects of at least `min_area` pixels, largest first."""
    labels = label_pixels(image)
    blobs = [Blob(color, classify_shape(comp), comp)
             for k, color in enumerate(COLORS, start=1)
             for comp in _components(labels == k) if comp.sum() >= min_area]
    return sorted(blobs, key=lambda b: -b.area)


def follows_prompt(image: np.ndarray, color: str, shape: str) -> tuple[bool, bool]:
    """(right colour, right colour and shape) of the largest object, for a single-object prompt."""
    blobs = detect(image)
    if not blobs:
        return False, False
    return blobs[0].color == color, blobs[0].color == color and blobs[0].shape == shape


def region_success(image: np.ndarray, regions: list[np.ndarray], wanted: list[tuple[str, str | None]]) -> list[bool]:
    """Per region, a strict object-level rule.

    Region i (boolean mask) wanting (colour, shape or None) succeeds when a separate object of that colour (and
    shape) lies at least 80% inside it, no object of another region's colour lies mainly inside it, and no single
    connected foreground blob with several colours spreads over it and another region (a half-red, half-green blob
    across the border fails both regions, it is not two successes).
    """
    labels = label_pixels(image)
    blobs = detect(image)
    ok = []
    for region, (color, shape) in zip(regions, wanted):
        inside = [(b, (b.mask & region).sum() / b.area) for b in blobs]
        found = any(b.color == color and (shape is None or b.shape == shape) and f >= 0.8 for b, f in inside)
        others = {c for c, _ in wanted} - {color}
        intruder = any(b.color in others and f > 0.5 for b, f in inside)
        ok.append(found and not intruder)
    for comp in _components(labels > 0):
        colors = [k for k in np.unique(labels[comp]) if (labels[comp] == k).sum() >= max(MIN_AREA, 0.15 * comp.sum())]
        touched = [i for i, r in enumerate(regions) if (comp & r).sum() >= max(MIN_AREA, 0.2 * comp.sum())]
        if len(colors) > 1 and len(touched) > 1:
            for i in touched:
                ok[i] = False
    return ok
