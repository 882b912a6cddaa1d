"""Regions found from a word: the regional-prompter "prompt" mode.

A region given as `from_word: hat` covers the pixels where the base prompt's word "hat" went: a first pass generates
the base prompt alone with the same seed, size and steps while `attnkit.maps` records its image->text attention; the
word's map, smoothed over about a token and scaled to its own range, is cut at the region's `threshold` and kept to
the connected part around its peak. The mask is then an ordinary region mask for the regional pass, and the spec
written with the image keeps it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .spec import DEFAULT_WORD_THRESHOLD, RegionSpec

__all__ = ["derive_word_masks", "word_mask"]

_SMOOTHING_TOKENS = 1.0  # Gaussian sigma, in tokens of the map
_FIRST_PASS_DROPS = ("output_type", "callback_on_step_end", "callback_on_step_end_tensor_inputs")


def word_mask(heat: torch.Tensor, threshold: float) -> torch.Tensor:
    """The word's area as 0/1 (float, same shape): the map smoothed over about one token (single tokens of an
    attention map are noisy), cut at `threshold` of its range above its minimum, and kept to the connected part that
    holds its peak, holes filled (one object, not scattered cells)."""
    smooth = ndimage.gaussian_filter(heat.double().cpu().numpy(), sigma=_SMOOTHING_TOKENS, mode="nearest")
    inside = smooth >= smooth.min() + threshold * (smooth.max() - smooth.min())
    labels, _ = ndimage.label(inside)
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    return torch.from_numpy(ndimage.binary_fill_holes(labels == labels[peak]).astype(np.float32))


def derive_word_masks(pipe: Any, spec: RegionSpec, kwargs: dict[str, Any], negative: bool) -> RegionSpec:
    """`spec` with a mask for every pending `from_word` region, from one generation of the base prompt with the
    pipeline keyword arguments `kwargs` (seed, size, steps, guidance; random generators are rewound afterwards, so
    the regional pass starts from the same noise). `negative`: pass the spec's negative (or "") as the pipeline's."""
    from ..maps import trace

    first = {name: value for name, value in kwargs.items() if name not in _FIRST_PASS_DROPS}
    if negative:
        first["negative_prompt"] = spec.negative or ""
    generators = first.get("generator")
    generators = generators if isinstance(generators, list) else [generators] if generators is not None else []
    states = [g.get_state() for g in generators]
    try:
        with trace(pipe, spec.base.prompt) as tc, torch.inference_mode():
            pipe(prompt=spec.base.prompt, output_type="latent", **first)
    finally:
        for g, state in zip(generators, states):
            g.set_state(state)
    regions = list(spec.regions)
    for i in spec.pending:
        region = regions[i]
        threshold = DEFAULT_WORD_THRESHOLD if region.threshold is None else region.threshold
        regions[i] = replace(region, mask=word_mask(tc.heatmap(region.from_word).float().cpu(), threshold))
    return replace(spec, regions=tuple(regions))
