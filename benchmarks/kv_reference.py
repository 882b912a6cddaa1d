"""How much a shapes model's output follows a reference image whose self-attention K/V replace its own
(`attnkit.kv.reference(..., mode="replace")`): the mechanism cross-frame video editing stands on.

    python benchmarks/kv_reference.py [MODEL ...]     # writes benchmarks/results/kv-reference-<model>.json

Each reference is a random one-object scene; the generation asks for another colour and shape with the same seed
with and without the reference's K/V. Reported: the IoU between the generated object and the reference's object
(does the layout follow the reference?) and the mean squared distance to the reference, plain and with the
reference, at the default K/V sites and, on UNets, at every self-attention site. A model whose output barely moves
towards the reference cannot be steadied by cross-frame attention either: its self-attention does not decide what
it draws.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from PIL import Image

import attnkit
from attnkit import kv
from attnkit.sites import architecture_of, denoiser_of
from attnkit.shapes import MODEL_NAMES, call_kwargs, guidance_kwargs, image_size, load
from attnkit.shapes.data import COLORS, SHAPES, random_scene
from attnkit.shapes.scorer import detect
from per_model import per_model_main

REFERENCES = 8
STEPS = 8


def _object(image: np.ndarray) -> np.ndarray:
    """The mask of the largest object the colour scorer finds (empty if none)."""
    blobs = detect(image)
    return max((b.mask for b in blobs), key=np.sum) if blobs else np.zeros(image.shape[:2], bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def measure(model: str) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = load(model)
    pipe.set_progress_bar_config(disable=True)
    size = image_size(pipe)
    options = {"num_inference_steps": STEPS, "negative_prompt": "", "height": size, "width": size,
               **call_kwargs(pipe), **guidance_kwargs(pipe)}
    site_sets = {"default sites": None}
    if architecture_of(denoiser_of(pipe)).name == "unet":
        site_sets["every self-attention site"] = [s for s in attnkit.sites(pipe) if s.kind == "self"]
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in site_sets}
    for k in range(REFERENCES):
        scene = random_scene(100 + k, count=1, size=size)
        reference, shown, where = scene.image, scene.objects[0], scene.masks[0]
        color = COLORS[(COLORS.index(shown.color) + 1) % len(COLORS)]
        shape = SHAPES[(SHAPES.index(shown.shape) + 1) % len(SHAPES)]

        def generate() -> np.ndarray:
            with torch.inference_mode():
                out = pipe(f"a {color} {shape}", generator=torch.Generator().manual_seed(k), **options).images[0]
            return np.asarray(out)

        plain = generate()
        for name, chosen in site_sets.items():
            with kv.reference(pipe, Image.fromarray(reference), mode="replace", sites_=chosen, **options):
                guided = generate()
            row = rows[name]
            for key, value in (("iou_plain", _iou(_object(plain), where)),
                               ("iou_reference", _iou(_object(guided), where)),
                               ("distance_plain", float(((plain / 255.0 - reference / 255.0) ** 2).mean())),
                               ("distance_reference", float(((guided / 255.0 - reference / 255.0) ** 2).mean()))):
                row.setdefault(key, []).append(value)
    result: dict = {"model": model, "references": REFERENCES, "steps": STEPS}
    for name, row in rows.items():
        result[name] = {key: round(float(np.mean(values)), 4) for key, values in row.items()}
        result[name]["distance_ratio"] = round(result[name]["distance_reference"] / result[name]["distance_plain"], 3)
    result |= {"seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    return result


def main(argv: list[str] | None = None) -> None:
    per_model_main(__doc__, measure, "kv-reference", MODEL_NAMES, argv)


if __name__ == "__main__":
    sys.exit(main())
