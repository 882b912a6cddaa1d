"""The shapes world: flat-coloured circles, squares and triangles on a plain background, with exact masks.

Everything is drawn on the fly from a seed, so tests, training and the quality benchmark share one ground truth
and no data files exist. Objects are hard-edged (no anti-aliasing), so a mask is exactly the pixels of its colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AttnkitError

__all__ = [
    "BACKGROUND", "COLORS", "PALETTE", "SHAPES", "SIZE", "Scene", "ShapeObject", "Video", "caption_for",
    "random_scene", "random_video", "render",
]

SIZE = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: RGB of each colour. A dark grey background keeps every colour, yellow included, well apart from it.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 240),
    "yellow": (245, 220, 40),
}
BACKGROUND: tuple[int, int, int] = (80, 80, 80)
#: Object side / diameter range in pixels at `SIZE`: small enough that two fit side by side with room to spare.
#: Scenes of another size scale these (and the gap) with it: the same world at another resolution.
MIN_EXTENT, MAX_EXTENT = 12, 22
_GAP = 3  # free pixels between objects, so each is its own connected blob


def extents(size: int) -> tuple[int, int, int]:
    """(smallest extent, largest extent, gap) in pixels of a `size` px scene."""
    return MIN_EXTENT * size // SIZE, MAX_EXTENT * size // SIZE, _GAP * size // SIZE


@dataclass(frozen=True)
class ShapeObject:
    """One object: its kind, colour and bounding box (top, left, extent) in pixels."""

    shape: str
    color: str
    top: int
    left: int
    extent: int

    @property
    def phrase(self) -> str:
        return f"a {self.color} {self.shape}"

    def mask(self, size: int = SIZE) -> np.ndarray:
        """Boolean (size, size) mask of the pixels this object covers."""
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
        y, x = rows - self.top, cols - self.left
        e = float(self.extent)
        inside = (y >= 0) & (y < e) & (x >= 0) & (x < e)
        if self.shape == "square":
            return inside
        if self.shape == "circle":
            r = e / 2
            return (y + 0.5 - r) ** 2 + (x + 0.5 - r) ** 2 <= r * r
        if self.shape == "triangle":  # apex up, base on the bottom row
            half = (y + 1) / e * (e / 2)
            return inside & (np.abs(x + 0.5 - e / 2) <= half)
        raise AttnkitError(f"unknown shape {self.shape!r}; shapes are {', '.join(SHAPES)}")


@dataclass(frozen=True)
class Scene:
    """An image with its caption and one exact mask per object (masks in the order of `objects`)."""

    image: np.ndarray  # (H, W, 3) uint8
    objects: tuple[ShapeObject, ...]
    caption: str
    masks: np.ndarray  # (N, H, W) bool


@dataclass(frozen=True)
class Video:
    """Frames of one object moving in a straight line over a static scene; `masks[t]` is the mover in frame t."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    masks: np.ndarray  # (T, H, W) bool
    caption: str
    path: tuple[ShapeObject, ...]


def caption_for(objects: tuple[ShapeObject, ...] | list[ShapeObject]) -> str:
    """'a red circle and a blue square': objects joined by 'and', in the given order."""
    return " and ".join(o.phrase for o in objects)


def render(objects: tuple[ShapeObject, ...] | list[ShapeObject], size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Image (size, size, 3) uint8 and masks (N, size, size): later objects are drawn over earlier ones."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    masks = np.zeros((len(objects), size, size), dtype=bool)
    for i, obj in enumerate(objects):
        m = obj.mask(size)
        image[m] = PALETTE[obj.color]
        masks[:i, m] = False
        masks[i] = m
    return image, masks


def _place(rng: np.random.Generator, count: int, size: int, tries: int = 200) -> list[tuple[int, int, int]]:
    """`count` non-overlapping boxes (top, left, extent) with a gap between them; fewer if space runs out."""
    smallest, largest, gap = extents(size)
    boxes: list[tuple[int, int, int]] = []
    for _ in range(tries):
        if len(boxes) == count:
            break
        e = int(rng.integers(smallest, largest + 1))
        top, left = (int(v) for v in rng.integers(1, size - e, size=2))
        if all(top + e + gap <= t or t + s + gap <= top or left + e + gap <= l or l + s + gap <= left
               for t, l, s in boxes):
            boxes.append((top, left, e))
    return boxes


def random_scene(rng: np.random.Generator | int, count: int | None = None, size: int = SIZE) -> Scene:
    """A random scene of `count` objects (default: 1, 2 or 3 with probabilities 0.5/0.35/0.15), seeded by `rng`.

    Single objects are the most common because single-object prompt following is the bar the models must meet;
    caption order is random so that word order carries no position.
    """
    rng = np.random.default_rng(rng)
    if count is None:
        count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    if not 1 <= count <= 3:
        raise AttnkitError(f"a scene has 1 to 3 objects, got count={count}")
    objects = tuple(
        ShapeObject(SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))], t, l, e)
        for t, l, e in _place(rng, count, size)
    )
    image, masks = render(objects, size)
    return Scene(image, objects, caption_for(objects), masks)


def random_video(rng: np.random.Generator | int, frames: int = 8, size: int = SIZE) -> Video:
    """One object sliding in a straight line over a static background object, `frames` frames.

    The static object is placed out of the mover's way so masks never overlap.
    """
    rng = np.random.default_rng(rng)
    if frames < 2:
        raise AttnkitError(f"a video needs at least 2 frames, got {frames}")
    smallest, largest, gap = extents(size)
    while True:
        e = int(rng.integers(smallest, largest + 1))
        (t0, l0), (t1, l1) = rng.integers(1, size - e, size=(2, 2))
        shape, color = SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))]
        path = tuple(ShapeObject(shape, color, int(round(t0 + (t1 - t0) * k / (frames - 1))),
                                 int(round(l0 + (l1 - l0) * k / (frames - 1))), e) for k in range(frames))
        swept = np.any([o.mask(size) for o in path], axis=0)
        static = _place(rng, 1, size)
        if not static:
            continue
        t, l, s = static[0]
        still = ShapeObject(SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))], t, l, s)
        grown = np.zeros_like(swept)
        grown[max(t - gap, 0):t + s + gap, max(l - gap, 0):l + s + gap] = True
        if not (grown & swept).any():
            break
    images, masks = zip(*(render((still, obj), size) for obj in path))
    return Video(np.stack(images), np.stack([m[1] for m in masks]), caption_for((path[0], still)), path)
