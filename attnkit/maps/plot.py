"""Pictures of attention maps: a heat map over the generated image, and a labelled grid of all words.

matplotlib is imported inside the functions (an optional dependency, `attnkit[plot]`), and only its object API is
used (no pyplot), so plotting sets no global backend or figure state.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["overlay", "grid"]

_PANEL_INCHES = 2.0
_DPI = 100


def overlay(image: Image.Image, heat: torch.Tensor, cmap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """`image` blended with `heat` (rows, cols), upsampled to the image, scaled to [0, 1] and coloured by `cmap`."""
    from matplotlib import colormaps

    colours = colormaps[cmap](_normalised(heat, image.size[::-1]).numpy())[..., :3]
    coloured = Image.fromarray((colours * 255).round().astype("uint8"))
    return Image.blend(image.convert("RGB"), coloured, alpha)


def grid(image: Image.Image, maps: Mapping[str, torch.Tensor], cmap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """One row of panels: the image, then its overlay for each word, titled with the word."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("image", image.convert("RGB"))] + [(w, overlay(image, h, cmap, alpha)) for w, h in maps.items()]
    figure = Figure(figsize=(_PANEL_INCHES * len(panels), _PANEL_INCHES + 0.4), dpi=_DPI)
    canvas = FigureCanvasAgg(figure)
    for index, (title, picture) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        axes.imshow(picture)
        axes.set_title(title)
        axes.axis("off")
    figure.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def _normalised(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`heat` bilinearly upsampled to `size` (rows, cols) and min-max scaled to [0, 1] (all zeros if flat)."""
    up = F.interpolate(heat.detach().float().cpu()[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    low, high = up.min(), up.max()
    return (up - low) / (high - low) if high > low else torch.zeros_like(up)
