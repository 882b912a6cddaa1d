"""Segments of a generated or an existing image, as `attnkit segment` and the web app make them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AttnkitError
from ..families import family_of
from ..pipeline import default_size
from .images import generate
from .models import call_kwargs

__all__ = ["Segmented", "segment"]


@dataclass
class Segmented:
    """The segmented image (generated or given), its segmentation, and the files written (none unless an output
    folder was given)."""

    image: Any
    segmentation: Any
    files: list[Path] = field(default_factory=list)


def segment(model: str, pipe: Any, prompt: str | None, image: Any, seed: int | None, options: dict[str, Any],
            segment_options: dict[str, Any] | None = None, out: Path | None = None, **extra: Any) -> Segmented:
    """Segments of `image` (its description `prompt`, if any, names them), or of the image `prompt` generates with
    the sampling `options` and `seed` (None: 0); `segment_options` are `attnkit.segment.Options` fields. An existing
    image takes `seed` only in the img2img protocol, whose noise it draws. With `out`, writes OUT/labels.png,
    OUT/overlay.png, OUT/segment-<id>.png, OUT/segments.json and OUT/image.png. `extra` (e.g.
    `callback_on_step_end`) goes to the pipeline only."""
    from ..segment import PROTOCOLS, segment_image, trace
    from ..segment.defaults import DEFAULT_PROTOCOL

    segment_options = segment_options or {}
    if image is not None:
        protocol = PROTOCOLS.get(segment_options.get("protocol", DEFAULT_PROTOCOL))  # unknown: segment_image says so
        seeded = {"seed": seed} if protocol is not None and not protocol.clean else {}
        result = segment_image(pipe, image, prompt or "", call=call_kwargs(model, pipe), **seeded, **segment_options)
    else:
        if family_of(pipe).video:  # checked before the default size, which a video pipeline does not have
            raise AttnkitError(f"{type(pipe).__name__} makes videos; `attnkit segment` segments one still image: use "
                               "an image model.")
        seed = 0 if seed is None else seed
        height, width = options.get("height") or default_size(pipe), options.get("width") or default_size(pipe)
        options = options | {"height": height, "width": width}
        with trace(pipe, prompt, height=height, width=width, **segment_options) as tc:
            image = generate(model, pipe, prompt, seed, options, **extra).image
        result = tc.segmentation(image)
    segmented = Segmented(image, result)
    if out is not None:
        segmented.files = result.save(out)
        image.save(out / "image.png")
        segmented.files.append(out / "image.png")
    return segmented
