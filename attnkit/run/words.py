"""Regions found from a word: the regional-prompter "prompt" mode, composed from attention maps and regional
prompting.

A region given as `from_word: hat` covers the pixels where the base prompt's word "hat" went: a first pass generates
the base prompt alone with the same seed, size and steps while `attnkit.maps` records its image->text attention; the
word's map, smoothed over about a token and scaled to its own range, is cut at the region's `threshold` and kept to
the connected part around its peak. `word_regions` returns the spec with those masks, an ordinary spec for
`attnkit.regional`; the spec written with the image keeps them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..families import family_of
from ..maps import trace
from ..pipeline import output_size, takes_size
from ..regional import RegionSpec, load_spec
from ..tokens import WORD_THRESHOLD, word_area

__all__ = ["word_mask", "word_regions"]

_SMOOTHING_TOKENS = 1.0  # Gaussian sigma, in tokens of the map
_FIRST_PASS_DROPS = ("output_type", "callback_on_step_end", "callback_on_step_end_tensor_inputs")


def word_mask(heat: torch.Tensor, threshold: float = WORD_THRESHOLD) -> torch.Tensor:
    """The word's area as 0/1 (float, same shape): the map smoothed over about one token (single tokens of an
    attention map are noisy), cut at `threshold` of its range above its minimum, and kept to the connected part that
    holds its peak, holes filled (one object, not scattered cells)."""
    smooth = ndimage.gaussian_filter(heat.double().cpu().numpy(), sigma=_SMOOTHING_TOKENS, mode="nearest")
    labels, _ = ndimage.label(word_area(smooth, threshold))
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    return torch.from_numpy(ndimage.binary_fill_holes(labels == labels[peak]).astype(np.float32))


def word_regions(pipe: Any, spec: RegionSpec | dict | Any, *, max_sequence_length: int | None = None,
                 **call: Any) -> RegionSpec:
    """`spec` with a mask for every `from_word` region (the spec itself when it has none), from one generation of
    its base prompt with the pipeline keyword arguments `call`: those of the regional generation to come (seed as a
    `generator`, size, steps, guidance, an init image). Random generators are rewound afterwards, so that the
    regional pass starts from the same noise. `max_sequence_length`: the regional session's, so that the base
    prompt's text tokens are those of the regional pass."""
    spec = load_spec(spec)
    if not spec.pending:
        return spec
    first = {name: value for name, value in call.items() if name not in _FIRST_PASS_DROPS}
    height, width = output_size(pipe, first.pop("height", None), first.pop("width", None), first.get("image"))
    if takes_size(pipe):
        first |= {"height": height, "width": width}
    text = family_of(pipe).text
    if max_sequence_length is None and text is not None:
        max_sequence_length = text.max_sequence_length
    if max_sequence_length is not None:
        first["max_sequence_length"] = max_sequence_length
    if spec.negative is not None:  # else the pipeline's own convention, as in the regional pass
        first["negative_prompt"] = spec.negative
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
        threshold = WORD_THRESHOLD if region.threshold is None else region.threshold
        regions[i] = replace(region, mask=word_mask(tc.heatmap(region.from_word).float().cpu(), threshold))
    return replace(spec, regions=tuple(regions))
