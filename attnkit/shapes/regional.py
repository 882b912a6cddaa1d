"""Regional prompting on shapes layouts through `attnkit.regional`.

Kept apart from the metrics so the demo and the benchmark share one way of placing objects in halves or quadrants.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import GUIDANCE, STEPS, call_kwargs, guidance_kwargs, image_size

__all__ = ["BOXES", "layout_spec", "regional_images"]

Layout = tuple[tuple[str, str], ...]  # (colour, shape) per region, in reading order

#: Region boxes of a layout of 2 (left and right half) or 4 (quadrants, in reading order) objects.
BOXES: dict[int, list[list[float]]] = {2: [[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]],
                                       4: [[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5],
                                           [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]]}


def layout_spec(layout: Layout, base_weight: float | None = None,
                loras: list[dict[str, float] | None] | None = None) -> dict[str, Any]:
    """Region spec: each object's prompt in its box, guided against the empty prompt as plain generation is; with
    `base_weight`, the plain prompt naming every object as the base prompt at that weight; with `loras`, each
    region's LoRA adapters (None: none)."""
    phrases = [f"a {color} {shape}" for color, shape in layout]
    spec: dict[str, Any] = {"negative": "", "regions": [{"prompt": phrase, "box": box}
                                                        for phrase, box in zip(phrases, BOXES[len(layout)])]}
    for region, lora in zip(spec["regions"], loras or []):
        if lora:
            region["lora"] = lora
    if base_weight is not None:
        spec["base"] = {"prompt": " and ".join(phrases), "weight": base_weight}
    return spec


def regional_images(pipe: Any, cases: list[Layout], seeds: list[int], steps: int = STEPS,
                    guidance: float = GUIDANCE, base_weight: float | None = None,
                    options: dict[str, Any] | None = None,
                    loras: list[list[dict[str, float] | None]] | None = None) -> list[np.ndarray]:
    """uint8 images, one per (layout, seed); `options` are `attnkit.regional.RegionalOptions` fields; `loras`, per
    layout, each region's LoRA adapters."""
    from ..regional import regional

    options = call_kwargs(pipe) | (options or {})
    size = image_size(pipe)
    images = []
    for i, (layout, seed) in enumerate(zip(cases, seeds)):
        with regional(pipe, layout_spec(layout, base_weight, loras[i] if loras else None), **options) as regions:
            guided = regions(seed=seed, num_inference_steps=steps, output_type="np", height=size, width=size,
                          **guidance_kwargs(pipe, guidance))
            out = pipe(**guided)
        images.append(np.round(np.asarray(out.images[0]) * 255).clip(0, 255).astype(np.uint8))
    return images
