"""Regional prompting on shapes layouts through `attnkit.regional`.

Kept apart from the metrics so the demo and the benchmark share one way of placing objects in the two halves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import GUIDANCE, STEPS, call_kwargs, guidance_kwargs
from .data import SIZE

__all__ = ["layout_spec", "regional_images"]

Layout = tuple[tuple[str, str], tuple[str, str]]


def layout_spec(layout: Layout) -> dict[str, Any]:
    """Region spec: the left object's prompt on the left half, the right one's on the right half, guided against
    the empty prompt as plain generation is."""
    (left, right) = layout
    return {"negative": "", "regions": [{"prompt": f"a {left[0]} {left[1]}", "box": [0.0, 0.0, 0.5, 1.0]},
                        {"prompt": f"a {right[0]} {right[1]}", "box": [0.5, 0.0, 1.0, 1.0]}]}


def regional_images(pipe: Any, cases: list[Layout], seeds: list[int], steps: int = STEPS,
                    guidance: float = GUIDANCE, **options: Any) -> list[np.ndarray]:
    """uint8 images, one per (layout, seed); `options` are `attnkit.regional.RegionalOptions` fields."""
    from ..regional import regional

    options = call_kwargs(pipe) | options
    images = []
    for layout, seed in zip(cases, seeds):
        with regional(pipe, layout_spec(layout), **options) as call:
            guided = call(seed=seed, num_inference_steps=steps, output_type="np", height=SIZE, width=SIZE,
                          **guidance_kwargs(pipe, guidance))
            out = pipe(**guided)
        images.append(np.round(np.asarray(out.images[0]) * 255).clip(0, 255).astype(np.uint8))
    return images
