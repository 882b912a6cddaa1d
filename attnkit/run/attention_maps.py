"""Word maps (or output-space concept maps) of one generated image, as `attnkit maps` and the web app make them."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .models import call_kwargs

__all__ = ["MAPS_FILES", "Maps", "maps"]

#: File names `maps` writes besides one `<word>.png` per word: no word may take them.
MAPS_FILES = ("image", "grid")


@dataclass
class Maps:
    """The generated image (a video's frames stacked top to bottom, as its maps are), one map per word or concept,
    the trace that recorded them, and the files written (none unless an output folder was given)."""

    image: Any
    maps: dict[str, Any]
    trace: Any
    files: list[Path] = field(default_factory=list)


def maps(model: str, pipe: Any, prompt: str, seed: int, options: dict[str, Any], words: list[str] | None = None,
         concepts: list[str] | None = None, out: Path | None = None, method: str = "mean", normalize: bool = False,
         **extra: Any) -> Maps:
    """Generate `prompt` with `options` (sampling options) while recording the maps of `words` (default: every word
    of the prompt), aggregated by `method` ("mean" or "daam", `normalize`d as DAAM's), or, with `concepts`,
    output-space concept maps. With `out`, writes OUT/image.png, OUT/<word>.png
    (overlay per word; no map for a word named like the other files), OUT/grid.png and OUT/maps.safetensors. `extra`
    (e.g. `callback_on_step_end`) goes to the pipeline only."""
    import torch

    from ..maps import plot
    from ..maps.trace import trace

    space = {"space": "output", "concepts": concepts} if concepts else {"method": method, "normalize": normalize}
    size = {k: v for k, v in options.items() if k in ("height", "width") and v is not None}
    sampling = {k: v for k, v in options.items() if k not in ("height", "width")}
    with trace(pipe, prompt=prompt, **space) as tc, torch.inference_mode():
        output = pipe(prompt=prompt, **size, generator=torch.Generator().manual_seed(seed),
                      **call_kwargs(model, pipe), **sampling, **extra)
    image = output.images[0] if hasattr(output, "images") else filmstrip(output.frames[0], tc.recorder.frames)
    if concepts:
        words = concepts
    elif words is None:
        words = tc.tokens().unique_words
        skipped = sorted(set(words) & set(MAPS_FILES)) if out is not None else []
        if skipped:
            words = [w for w in words if w not in MAPS_FILES]
            print(f"attnkit: no map for {', '.join(skipped)}: image.png and grid.png are other outputs",
                  file=sys.stderr)
    result = Maps(image, {w: heat[0] for w, heat in tc.word_maps(words).items()}, tc)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        image.save(out / "image.png")
        for word, heat in result.maps.items():
            plot.overlay(image, heat).save(out / f"{word}.png")
        plot.grid(image, result.maps).save(out / "grid.png")
        tc.save(out / "maps.safetensors", words)
        result.files = [out / "image.png", *(out / f"{word}.png" for word in result.maps), out / "grid.png",
                        out / "maps.safetensors"]
    return result


def filmstrip(frames: Any, count: int) -> Any:
    """A video's frames at the `count` latent frames of its maps, stacked top to bottom as the maps stack them."""
    import numpy as np
    from PIL import Image

    frames = [np.asarray(f) for f in frames]
    chosen = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, count).round()]
    stacked = np.concatenate(chosen, axis=0)
    if stacked.dtype != np.uint8:
        stacked = (stacked.clip(0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(stacked)
