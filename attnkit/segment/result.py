"""A segmentation: segment ids per pixel, each segment's word label, area and box, and the files it is saved as."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["BACKGROUND", "Segment", "Segmentation", "describe", "palette"]

#: The label of a segment that no word of the prompt covers.
BACKGROUND = "background"


@dataclass(frozen=True)
class Segment:
    """One segment: `id` is its value in `Segmentation.labels`; `label` the prompt word it shows, "background", or
    None without a prompt; `bbox` is (left, top, right, bottom) in pixels, right and bottom exclusive."""

    id: int
    label: str | None
    area: int
    bbox: tuple[int, int, int, int]


@dataclass
class Segmentation:
    """`labels` (height, width) holds a segment id per pixel; `timestep` is the denoiser timestep that was read, and
    for a generation `step` the denoising step (0-based) of its `steps` (None for an existing image's one
    forward)."""

    labels: np.ndarray
    segments: list[Segment]
    timestep: float | None
    image: Image.Image | None = None
    step: int | None = None
    steps: int | None = None

    def mask(self, segment: int) -> np.ndarray:
        """Boolean (height, width) mask of segment `segment`."""
        return self.labels == segment

    def coloured(self) -> Image.Image:
        """The segment ids as a palette PNG image (one colour per id)."""
        picture = Image.fromarray(self.labels.astype(np.uint8), mode="P")
        picture.putpalette(palette(len(self.segments)).reshape(-1).tolist())
        return picture

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The image (grey where none is attached) blended with the segment colours, segment borders drawn dark."""
        base = self.image.convert("RGB") if self.image is not None else Image.new("RGB", self.labels.shape[::-1],
                                                                                 (128, 128, 128))
        if base.size != self.labels.shape[::-1]:
            base = base.resize(self.labels.shape[::-1], Image.Resampling.BILINEAR)
        blended = np.asarray(Image.blend(base, self.coloured().convert("RGB"), alpha)).copy()
        border = np.zeros(self.labels.shape, bool)
        border[:, 1:] |= self.labels[:, 1:] != self.labels[:, :-1]
        border[1:, :] |= self.labels[1:, :] != self.labels[:-1, :]
        blended[border] = blended[border] // 4
        return Image.fromarray(blended)

    def save(self, folder: str | Path) -> list[Path]:
        """Write labels.png (palette), overlay.png, segment-<id>.png (white = inside) per segment and segments.json
        (the timestep, step and steps read; id, label, area, bbox per segment); returns the paths written."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / "labels.png", folder / "overlay.png", folder / "segments.json"]
        self.coloured().save(written[0])
        self.overlay().save(written[1])
        written[2].write_text(json.dumps({"timestep": self.timestep, "step": self.step, "steps": self.steps,
                                          "segments": [asdict(s) for s in self.segments]}, indent=2) + "\n")
        for segment in self.segments:
            path = folder / f"segment-{segment.id}.png"
            Image.fromarray(self.mask(segment.id).astype(np.uint8) * 255).save(path)
            written.append(path)
        return written


def palette(count: int) -> np.ndarray:
    """(256, 3) uint8 palette: `count` distinct colours from matplotlib's tab20 (cycled), the rest black."""
    from matplotlib import colormaps

    colours = np.zeros((256, 3), np.uint8)
    tab = colormaps["tab20"].colors
    for i in range(min(count, 256)):
        colours[i] = np.round(np.asarray(tab[i % len(tab)]) * 255)
    return colours


def describe(labels: np.ndarray, names: list[str | None]) -> list[Segment]:
    """The segments of `labels` (ids 0..K-1), named by `names[id]`."""
    segments = []
    for index, name in enumerate(names):
        rows, cols = np.nonzero(labels == index)
        segments.append(Segment(index, name, int(rows.size),
                                (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)))
    return segments
