"""Where a shapes DiT reads what to draw: the caption's tokens (which regional prompting gives each region its own
of) or the one pooled vector (which it cannot split).

    python benchmarks/pooled_vs_tokens.py [MODEL ...]     # writes benchmarks/results/pooled-vs-tokens-<model>.json

Single-object images whose tokens and pooled vector come from two captions that differ in one attribute: "a red
square" tokens with the pooled vector of "a red circle" (shape), and "a red square" tokens with the pooled vector of
"a blue square" (colour). Each image counts for the caption whose attribute it shows. Regional prompting decides
only what each region's tokens say, so an attribute that follows the pooled vector comes out as the regions'
average, right in one region at best.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from attnkit.regional.encode import regional_text
from attnkit.shapes import GUIDANCE, MODEL_NAMES, STEPS, call_kwargs, guidance_kwargs, image_size, load
from attnkit.shapes.data import COLORS, SHAPES
from attnkit.shapes.scorer import detect
from per_model import per_model_main

IMAGES = 24  # per attribute


def _encode(pipe, prompts: list[str]) -> dict:
    text = regional_text(pipe)
    with torch.no_grad():
        return text.encode(pipe, prompts, call_kwargs(pipe).get("max_sequence_length"))


def _other(values: tuple[str, ...], value: str, k: int) -> str:
    """A value of `values` other than `value`, cycling through the rest with `k`."""
    rest = [v for v in values if v != value]
    return rest[k % len(rest)]


def _swaps(attribute: str) -> list[tuple[str, str, str, str]]:
    """(tokens caption, pooled caption, what the tokens say, what the pooled vector says) of every image."""
    cases = []
    for k in range(IMAGES):
        color, shape = COLORS[k % len(COLORS)], SHAPES[k % len(SHAPES)]
        if attribute == "shape":
            other = _other(SHAPES, shape, k // len(SHAPES))
            cases.append((f"a {color} {shape}", f"a {color} {other}", shape, other))
        else:
            other = _other(COLORS, color, k // len(COLORS))
            cases.append((f"a {color} {shape}", f"a {other} {shape}", color, other))
    return cases


def measure(model: str) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = load(model)
    negative = _encode(pipe, [""])
    guided = {k: v for k, v in guidance_kwargs(pipe, GUIDANCE).items() if k != "negative_prompt"}
    size = image_size(pipe)
    result: dict = {"model": model, "images_per_attribute": IMAGES}
    for attribute in ("shape", "colour"):
        follows = {"tokens": 0, "pooled": 0, "neither": 0}
        for k, (tokens, pooled, said, other) in enumerate(_swaps(attribute)):
            own, swapped = _encode(pipe, [tokens]), _encode(pipe, [pooled])
            image = pipe(prompt_embeds=own["prompt_embeds"], pooled_prompt_embeds=swapped["pooled_prompt_embeds"],
                         negative_prompt_embeds=negative["prompt_embeds"],
                         negative_pooled_prompt_embeds=negative["pooled_prompt_embeds"],
                         num_inference_steps=STEPS, height=size, width=size, output_type="np",
                         generator=torch.Generator().manual_seed(k), **call_kwargs(pipe), **guided).images[0]
            blobs = detect(np.round(image * 255).clip(0, 255).astype(np.uint8))
            shown = {b.shape if attribute == "shape" else b.color for b in blobs}
            follows["tokens" if said in shown else "pooled" if other in shown else "neither"] += 1
        result[attribute] = {name: count / IMAGES for name, count in follows.items()}
    result |= {"seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    return result


def main(argv: list[str] | None = None) -> None:
    per_model_main(__doc__, measure, "pooled-vs-tokens", [m for m in MODEL_NAMES if m != "shapes-sd15"], argv)


if __name__ == "__main__":
    sys.exit(main())
