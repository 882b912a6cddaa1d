"""Quality benchmark on a shapes model, judged by colour segmentation of the generated images.

Metrics, each a rate in [0, 1], or None where the feature it measures does not apply to the model:
- `prompt_following`: single-object prompts, the largest object has the right colour and shape;
- `regional_adherence` / `plain_adherence`: two objects, left and right half, by the strict object-level rule
  (`scorer.region_success`), with attnkit's regional prompting (one prompt per half and the plain prompt as the
  base prompt at `REGIONAL_BASE_WEIGHT`; details also hold the spec without a base prompt) vs a plain prompt naming
  both objects;
- `regional_adherence_4`: four objects of four colours, one per quadrant, with regional prompting (a prompt per
  quadrant and no base prompt: naming all four overflows shapes-flux's 16 CLIP tokens), same rule;
- `map_iou`: attention map of each colour word, thresholded at 0.4 of its range (`attnkit.tokens.word_area`), vs
  that object's pixels;
- `map_iou_output`: the same for output-space concept maps (`attnkit.maps.trace(..., space="output")`, concepts
  `OUTPUT_MAP_CONCEPTS`) of the same layouts and seeds; None on UNets, which have no joint text stream;
- `flicker_per_frame`, `flicker_first`, `flicker_first_previous`: video editing (`attnkit.kv.edit_video`) of
  shapes-world videos, one object sliding over a static scene, prompted to recolour the mover: mean absolute change
  (0-1) between consecutive output frames on the pixels that do not move in the input, with plain per-frame img2img,
  cross-frame attention to the first frame, and to the first and previous frame;
- `edit_adherence`: the rate of first+previous frames whose mover is mostly the prompted colour;
- `segment_miou`: DiffSeg segmentation (`attnkit.segment`) of generated two-object images, recorded while generating,
  against the true objects and the background: segments matched one-to-one to them (Hungarian matching on IoU), the
  mean IoU over the true regions (an unmatched region scores 0);
- `lora_inside`, `lora_leak`, `lora_whole`: a LoRA per region, with the model's shipped LoRA (`attnkit.shapes.lora`;
  None for a model without one), on two-object layouts of objects the LoRA changes, one prompt per half and no base
  prompt, the LoRA given to one region: the share of regions with the LoRA whose object shows its effect, of regions
  without it that show it anyway, and, for scale, of all regions when the LoRA is loaded for the whole image. The
  details hold the same with `regional_adherence`'s base prompt, whose words (naming the region's object, without
  the LoRA) every image token sees.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import AttnkitError
from ..families import family_of
from ..maps import trace
from ..processes import shared_map
from ..regional import supports as regional_supported
from ..tokens import word_area
from . import GUIDANCE, STEPS, call_kwargs, guidance_kwargs, image_size
from .data import COLORS, SHAPES, SIZE, random_video
from .lora import EFFECTS, shows_effect
from .regional import regional_images
from .scorer import detect, follows_prompt, label_pixels, region_success

__all__ = ["METRICS", "OUTPUT_MAP_CONCEPTS", "SEGMENT_THRESHOLDS", "VIDEO_METRICS", "evaluate", "four_layouts",
           "generate", "halves", "layouts", "matched_iou", "output_maps", "quadrants", "segment_threshold",
           "segment_options", "segmentation", "true_regions", "video_editing"]

METRICS: tuple[str, ...] = ("prompt_following", "regional_adherence", "plain_adherence", "map_iou",
                            "flicker_per_frame", "flicker_first", "flicker_first_previous", "edit_adherence",
                            "regional_adherence_4", "map_iou_output", "segment_miou", "lora_inside", "lora_leak",
                            "lora_whole")
LORA_METRICS: tuple[str, ...] = METRICS[-3:]
VIDEO_METRICS: tuple[str, ...] = METRICS[4:8]
#: img2img strength of the video edits: enough for these small models to repaint the mover's colour.
VIDEO_STRENGTH = 0.8
VIDEO_FRAMES = 8
#: Concepts of the output-space maps: every colour (the layout's two and the others), the shapes and "background",
#: so that each image token has a concept that fits it (the extra concepts raised shapes-sd3's IoU slightly).
OUTPUT_MAP_CONCEPTS: tuple[str, ...] = (*COLORS, *SHAPES, "background")
#: Weight of the base prompt (the plain prompt naming every object) in the regional specs: the best of the weights
#: `benchmarks/regional_ablation.py` tried on every shipped model.
REGIONAL_BASE_WEIGHT = 0.5
#: Images generated in one batch, and the unit of work the processes of `accelerate launch` share.
CHUNK = 16
#: DiffSeg's KL merging threshold per (architecture, image side) of the shapes models: their self-attention maps are
#: far flatter than Stable Diffusion's (the published 1.1 merges everything into one segment), so each was chosen by a
#: sweep on other layouts and seeds than the benchmark's.
SEGMENT_THRESHOLDS: dict[tuple[str, int], float] = {("unet", 64): 0.003, ("sd3", 64): 0.15, ("flux", 64): 0.15,
                                                    ("sd3", 128): 0.2, ("flux", 128): 0.3}


def segment_threshold(pipe: Any) -> float:
    """The merging threshold for `pipe` from `SEGMENT_THRESHOLDS`: its architecture's at the swept image side
    nearest to its own."""
    arch, side = family_of(pipe).name, image_size(pipe)
    swept = [size for name, size in SEGMENT_THRESHOLDS if name == arch]
    if not swept:
        raise AttnkitError(f"no DiffSeg threshold for the {arch} architecture: the shapes models are UNet, SD3 and "
                           "Flux pipelines.")
    return SEGMENT_THRESHOLDS[arch, min(swept, key=lambda size: abs(size - side))]


def segment_options(pipe: Any) -> dict[str, Any]:
    """The `attnkit.segment` options the benchmark segments `pipe`'s images with: its swept threshold in every round,
    and k-means refinement, which the thresholds were swept with."""
    return {"thresholds": (segment_threshold(pipe),) * 3, "refine": True}


def halves(size: int = SIZE) -> list[np.ndarray]:
    """Left and right halves of a `size` px image, the two regions of every regional layout."""
    return [_box(size, slice(None), slice(0, size // 2)), _box(size, slice(None), slice(size // 2, size))]


def quadrants(size: int = SIZE) -> list[np.ndarray]:
    """The four quadrants of a `size` px image in reading order, the regions of every four-object layout."""
    half = size // 2
    return [_box(size, slice(row * half, (row + 1) * half), slice(col * half, (col + 1) * half))
            for row in range(2) for col in range(2)]


def _box(size: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = True
    return mask


def generate(pipe: Any, prompts: list[str], seeds: list[int], steps: int = STEPS, guidance: float = GUIDANCE,
             batch: int = CHUNK, **call: Any) -> list[np.ndarray]:
    """uint8 (size, size, 3) images at the model's training size, one per (prompt, seed), batched; each image
    depends only on its own seed."""
    size = image_size(pipe)
    images: list[np.ndarray] = []
    for start in range(0, len(prompts), batch):
        chunk = slice(start, start + batch)
        out = pipe(prompt=prompts[chunk], negative_prompt=[""] * len(prompts[chunk]), num_inference_steps=steps,
                   generator=[torch.Generator().manual_seed(s) for s in seeds[chunk]], output_type="np",
                   height=size, width=size, **{**call_kwargs(pipe), **guidance_kwargs(pipe, guidance), **call}).images
        images += [np.round(np.asarray(im) * 255).clip(0, 255).astype(np.uint8) for im in out]
    return images


def _chunks(items: list[Any]) -> list[list[Any]]:
    """`items` in the batches `generate` runs them in: the unit of work shared between processes, so that every
    image comes from the same batch however many processes share the evaluation."""
    return [items[start:start + CHUNK] for start in range(0, len(items), CHUNK)]


def _slices(count: int) -> list[slice]:
    return [slice(start, start + CHUNK) for start in range(0, count, CHUNK)]


def _flat(parts: Iterable[list[Any]]) -> list[Any]:
    return [item for part in parts for item in part]


def _shared_regional(pipe: Any, cases: list[Any], seeds: list[int], loras: list[Any] | None = None,
                     **options: Any) -> list[np.ndarray]:
    """`regional_images`, one layout per unit of work (each is its own generation)."""
    return _flat(shared_map(lambda index: regional_images(
        pipe, [cases[index]], [seeds[index]], loras=None if loras is None else [loras[index]], **options),
        range(len(cases))))


def layouts(count: int, seed: int = 0) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """`count` (left (colour, shape), right (colour, shape)) pairs with two different colours, seeded."""
    rng = np.random.default_rng(seed)
    pairs = [(a, b) for a, b in itertools.permutations(COLORS, 2)]
    out = []
    for _ in range(count):
        left, right = pairs[rng.integers(len(pairs))]
        out.append(((left, SHAPES[rng.integers(3)]), (right, SHAPES[rng.integers(3)])))
    return out


def four_layouts(count: int, seed: int = 0) -> list[tuple[tuple[str, str], ...]]:
    """`count` layouts of four (colour, shape) objects, every colour once, in quadrant reading order, seeded."""
    rng = np.random.default_rng(seed)
    return [tuple((COLORS[c], SHAPES[rng.integers(3)]) for c in rng.permutation(len(COLORS))) for _ in range(count)]


def _phrase(obj: tuple[str, str]) -> str:
    return f"a {obj[0]} {obj[1]}"


def prompt_following(pipe: Any, seeds: int, **gen: Any) -> dict[str, Any]:
    """Rate of single-object prompts whose largest object has the right colour and shape (and colour alone)."""
    combos = [(c, s) for c in COLORS for s in SHAPES]
    jobs = [(c, s, k) for c, s in combos for k in range(seeds)]
    images = _flat(shared_map(lambda part: generate(pipe, [f"a {c} {s}" for c, s, _ in part],
                                                    [1000 + k for *_, k in part], **gen), _chunks(jobs)))
    judged = [follows_prompt(im, c, s) for im, (c, s, _) in zip(images, jobs)]
    per_color = {c: float(np.mean([both for (_, both), job in zip(judged, jobs) if job[0] == c])) for c in COLORS}
    per_shape = {s: float(np.mean([both for (_, both), job in zip(judged, jobs) if job[1] == s])) for s in SHAPES}
    return {"rate": float(np.mean([b for _, b in judged])), "color_rate": float(np.mean([a for a, _ in judged])),
            "per_color": per_color, "per_shape": per_shape, "images": len(images)}


def _map_iou(trace: Any, images: list[np.ndarray], words: list[list[str]]) -> list[float]:
    """IoU of each colour word's thresholded map with the pixels of that colour's objects, where one was drawn."""
    scores = []
    for item, (image, item_words) in enumerate(zip(images, words)):
        blobs = detect(image)
        for word in item_words:
            truth = np.any([b.mask for b in blobs if b.color == word], axis=0) if any(
                b.color == word for b in blobs) else None
            if truth is None:
                continue
            heat = trace.heatmap(word, item=item).float()[None, None]
            heat = torch.nn.functional.interpolate(heat, size=image.shape[:2], mode="bilinear")[0, 0].numpy()
            pred = word_area(heat)
            scores.append(float((pred & truth).sum() / (pred | truth).sum()))
    return scores


def two_objects(pipe: Any, seeds: int, **gen: Any) -> dict[str, Any]:
    """Plain prompts naming both objects of each layout (with maps), and regional ones."""
    cases = layouts(4 * seeds)
    prompts = [f"{_phrase(left)} and {_phrase(right)}" for left, right in cases]
    gen_seeds = [2000 + k for k in range(len(cases))]
    wanted = [[left, right] for left, right in cases]
    result: dict[str, Any] = {"layouts": len(cases)}
    def plain_chunk(chunk: slice) -> tuple[list[np.ndarray], list[float]]:
        with trace(pipe, prompts[chunk]) as tc:
            images = generate(pipe, prompts[chunk], gen_seeds[chunk], batch=CHUNK, **gen)
        return images, _map_iou(tc, images, [[left[0], right[0]] for left, right in cases[chunk]])

    parts = shared_map(plain_chunk, _slices(len(prompts)))
    plain, ious = _flat(images for images, _ in parts), _flat(scores for _, scores in parts)
    result["map_iou"] = float(np.mean(ious)) if ious else None
    result["map_words"] = len(ious)
    regions = halves(plain[0].shape[0])
    plain_ok = [region_success(im, regions, w) for im, w in zip(plain, wanted)]
    result["plain"] = float(np.mean(plain_ok))
    result["plain_both"] = float(np.mean([all(r) for r in plain_ok]))
    if not regional_supported(pipe):
        result["regional"] = None
        return result
    # The headline spec is the one regional-prompter users write: a base prompt describing the scene beside one
    # prompt per region, with attnkit.regional's defaults; the spec without the base prompt is recorded beside it.
    for key, base in (("regional", REGIONAL_BASE_WEIGHT), ("regional_without_base", None)):
        images = _shared_regional(pipe, cases, gen_seeds, **gen, base_weight=base)
        ok = [region_success(im, regions, w) for im, w in zip(images, wanted)]
        result[key] = float(np.mean(ok))
        result[f"{key}_both"] = float(np.mean([all(r) for r in ok]))
    return result


def output_maps(pipe: Any, seeds: int, concepts: tuple[str, ...] = OUTPUT_MAP_CONCEPTS,
                trace_options: dict[str, Any] | None = None, **gen: Any) -> dict[str, Any]:
    """`map_iou_output`: `_map_iou` of output-space concept maps on the two-object layouts and seeds of
    `two_objects` (regenerated, bit-identical images); None where the model has no joint text stream."""
    if family_of(pipe).name == "unet":
        return {"map_iou_output": None}
    cases = layouts(4 * seeds)
    prompts = [f"{_phrase(left)} and {_phrase(right)}" for left, right in cases]
    gen_seeds = [2000 + k for k in range(len(cases))]
    def concept_chunk(chunk: slice) -> list[float]:
        with trace(pipe, prompts[chunk], space="output", concepts=list(concepts), **(trace_options or {})) as tc:
            images = generate(pipe, prompts[chunk], gen_seeds[chunk], batch=CHUNK, **gen)
        return _map_iou(tc, images, [[left[0], right[0]] for left, right in cases[chunk]])

    ious = _flat(shared_map(concept_chunk, _slices(len(prompts))))
    return {"map_iou_output": float(np.mean(ious)) if ious else None, "map_words": len(ious),
            "concepts": list(concepts), "trace_options": trace_options or {}}


def four_objects(pipe: Any, seeds: int, **gen: Any) -> dict[str, Any]:
    """Regional prompting of `seeds` four-object layouts, one object per quadrant (None where not supported)."""
    if not regional_supported(pipe):
        return {"regional": None}
    cases = four_layouts(seeds)
    images = _shared_regional(pipe, cases, [4000 + k for k in range(len(cases))], **gen)
    ok = [region_success(im, quadrants(im.shape[0]), list(layout)) for im, layout in zip(images, cases)]
    return {"layouts": len(cases), "regional": float(np.mean(ok)), "regional_all": float(np.mean([all(r) for r in ok]))}


def recolour_prompt(video: Any) -> tuple[str, str]:
    """(prompt, new colour): the video's caption with the mover in the next colour that neither it nor the static
    object has."""
    mover, still = video.caption.split(" and ")
    color = video.path[0].color
    taken = {color, still.split()[1]}
    new = next(c for c in COLORS[COLORS.index(color) + 1:] + COLORS if c not in taken)
    return f"a {new} {video.path[0].shape} and {still}", new


def video_editing(pipe: Any, videos: int, controlnet: Any = None, strength: float = VIDEO_STRENGTH,
                  steps: int = STEPS, guidance: float = GUIDANCE, mode: str | None = None) -> dict[str, Any]:
    """Flicker of each cross-frame mode and edit adherence of first+previous over `videos` shapes-world videos;
    `mode`: how later frames use the stored K/V (`edit_video`'s, None: its default). Details add `motion_*`: the
    same mean change on the pixels the mover enters or leaves, where a steady edit must still change (a mode that
    freezes the video lowers flicker and motion alike)."""
    from ..kv import edit_video

    modes = {"none": "per_frame", "first": "first", "first+previous": "first_previous"}

    def one_video(k: int) -> tuple[dict[str, list[float]], list[bool]]:
        video = random_video(3000 + k, frames=VIDEO_FRAMES, size=image_size(pipe))
        prompt, new = recolour_prompt(video)
        frames = [Image.fromarray(f) for f in video.frames]
        changes: dict[str, list[float]] = {}
        outputs: dict[str, list[np.ndarray]] = {}
        for attend, key in modes.items():
            out = outputs[attend] = [np.asarray(f, dtype=np.float32) / 255 for f in edit_video(
                pipe, frames, prompt, attend=attend, strength=strength, num_inference_steps=steps, seed=k,
                controlnet=controlnet, mode=mode, progress=False, negative_prompt="", **call_kwargs(pipe),
                **guidance_kwargs(pipe, guidance))]
            change = [np.abs(out[t] - out[t - 1]) for t in range(1, len(out))]
            masks = [(video.masks[t], video.masks[t - 1]) for t in range(1, len(out))]
            changes[f"flicker_{key}"] = [float(c[~(now | before)].mean()) for c, (now, before) in zip(change, masks)]
            changes[f"motion_{key}"] = [float(c[now ^ before].mean()) for c, (now, before) in zip(change, masks)
                                        if (now ^ before).any()]  # a slow mover may stay put for a frame
        recoloured = [bool(np.mean(label_pixels(o * 255)[m] == 1 + COLORS.index(new)) > 0.5)
                      for o, m in zip(outputs["first+previous"], video.masks)]
        return changes, recoloured

    parts = shared_map(one_video, range(videos))
    means = {name: float(np.mean(_flat(changes[name] for changes, _ in parts))) for name in parts[0][0]}
    return {**means, "edit_adherence": float(np.mean(_flat(recoloured for _, recoloured in parts))),
            "videos": videos, "frames": VIDEO_FRAMES, "strength": strength, "controlnet": controlnet is not None,
            "mode": mode}


def matched_iou(labels: np.ndarray, truths: list[np.ndarray]) -> float:
    """Mean IoU over the true regions `truths` (boolean masks), each matched one-to-one to a segment of `labels`
    (Hungarian matching maximising the total IoU); a region left without a segment scores 0."""
    from scipy.optimize import linear_sum_assignment

    ids = np.unique(labels)
    iou = np.array([[(t & (labels == i)).sum() / (t | (labels == i)).sum() for i in ids] for t in truths])
    rows, cols = linear_sum_assignment(-iou)
    return float(iou[rows, cols].sum() / len(truths))


def true_regions(image: np.ndarray) -> list[np.ndarray]:
    """The masks of the objects the colour scorer finds in `image`, and of the background last."""
    objects = [blob.mask for blob in detect(image)]
    return objects + [~np.any(objects, axis=0) if objects else np.ones(image.shape[:2], bool)]


def segmentation(pipe: Any, seeds: int, **gen: Any) -> dict[str, Any]:
    """DiffSeg segments of 2 x `seeds` generated two-object images vs their objects and background."""
    from ..segment import trace as segment_trace

    options = segment_options(pipe)
    cases = layouts(2 * seeds, seed=1)
    prompts = [f"{_phrase(left)} and {_phrase(right)}" for left, right in cases]
    gen_seeds = [5000 + k for k in range(len(prompts))]

    def segment_chunk(chunk: slice) -> list[tuple[float, int]]:
        with segment_trace(pipe, **options) as tc:
            images = generate(pipe, prompts[chunk], gen_seeds[chunk], **gen)
        judged = []
        for item, image in enumerate(images):
            labels = tc.segmentation(item=item).labels
            judged.append((matched_iou(labels, true_regions(image)), int(labels.max()) + 1))
        return judged

    judged = _flat(shared_map(segment_chunk, _slices(len(prompts))))
    scores, counts = [score for score, _ in judged], [count for _, count in judged]
    return {"miou": float(np.mean(scores)), "images": len(scores), "threshold": options["thresholds"][0],
            "mean_segments": float(np.mean(counts))}


def region_lora(pipe: Any, lora: Path | None, seeds: int, effect: str = "red-to-yellow", **gen: Any
                ) -> dict[str, Any]:
    """`LORA_METRICS` over 4 x `seeds` layouts of two objects in the effect's source colour, the LoRA (file `lora`)
    given to the left region in half of them and to the right in the other half (None each without a file)."""
    if lora is None or not regional_supported(pipe):
        return dict.fromkeys(LORA_METRICS)
    source, _ = EFFECTS[effect]
    rng = np.random.default_rng(7)
    cases = [((source, SHAPES[rng.integers(3)]), (source, SHAPES[rng.integers(3)])) for _ in range(4 * seeds)]
    gen_seeds = [3000 + k for k in range(len(cases))]
    sides = [k % 2 for k in range(len(cases))]  # the region with the LoRA: left, then right
    loras = [[{effect: 1.0} if side == k else None for k in range(2)] for side in sides]
    pipe.load_lora_weights(str(lora), adapter_name=effect)
    try:
        pipe.disable_lora()
        given = _shared_regional(pipe, cases, gen_seeds, **gen, loras=loras)
        with_base = _shared_regional(pipe, cases, gen_seeds, **gen, base_weight=REGIONAL_BASE_WEIGHT, loras=loras)
        pipe.enable_lora()
        whole = _shared_regional(pipe, cases, gen_seeds, **gen)
    finally:
        pipe.delete_adapters([effect])
    regions = halves(given[0].shape[0])

    def shown(image: np.ndarray, region: int) -> bool:
        return shows_effect([b for b in detect(image) if (b.mask & regions[region]).sum() > b.mask.sum() / 2],
                            effect)

    def rates(images: list[np.ndarray]) -> tuple[float, float]:
        return (float(np.mean([shown(im, side) for im, side in zip(images, sides)])),
                float(np.mean([shown(im, 1 - side) for im, side in zip(images, sides)])))

    (inside, leak), (inside_base, leak_base) = rates(given), rates(with_base)
    return {"lora_inside": inside, "lora_leak": leak, "lora_whole": float(np.mean([shown(im, k) for im in whole
                                                                                   for k in range(2)])),
            "lora_inside_with_base": inside_base, "lora_leak_with_base": leak_base,
            "base_weight": REGIONAL_BASE_WEIGHT, "layouts": len(cases), "effect": effect}


def evaluate(pipe: Any, seeds: int = 8, controlnet: Any = None, lora: Path | None = None, **gen: Any
             ) -> dict[str, Any]:
    """All metrics plus details; `seeds` images per single-object prompt, 4 x `seeds` two-object layouts, `seeds`
    four-object layouts and `seeds` videos (edited with `controlnet`, an edge ControlNet, where given); the LoRA
    metrics with the LoRA file `lora`, where given."""
    single = prompt_following(pipe, seeds, **gen)
    pair = two_objects(pipe, seeds, **gen)
    four = four_objects(pipe, seeds, **gen)
    video = video_editing(pipe, seeds, controlnet, **gen)
    output = output_maps(pipe, seeds, **gen)
    segments = segmentation(pipe, seeds, **gen)
    loras = region_lora(pipe, lora, seeds, **gen)
    return {"prompt_following": single["rate"], "regional_adherence": pair["regional"],
            "plain_adherence": pair["plain"], "map_iou": pair["map_iou"], "map_iou_output": output["map_iou_output"],
            **{key: video[key] for key in VIDEO_METRICS}, "regional_adherence_4": four["regional"],
            "segment_miou": segments["miou"], **{key: loras[key] for key in LORA_METRICS},
            "details": {"single": single, "two_objects": pair, "four_objects": four, "video": video,
                        "output_maps": output, "segmentation": segments, "lora": loras,
                        "steps": gen.get("steps", STEPS),
                        "guidance": gen.get("guidance", GUIDANCE), "seeds": seeds}}


def model_metrics(model: str, seeds: int = 8) -> dict[str, Any]:
    """`attnkit eval`'s numbers for a shipped shapes model (videos edited with its shipped ControlNet, where it has
    one) or a folder written by `attnkit.shapes.train`: {"model": model, metric: value, ...} in `METRICS` order."""
    from . import CONTROLNETS, load
    from .controlnet import load_controlnet

    pipe = load(model)
    pipe.set_progress_bar_config(disable=True)
    controlnet = load_controlnet(CONTROLNETS[model]) if model in CONTROLNETS else None
    with torch.inference_mode():
        result = evaluate(pipe, seeds=seeds, controlnet=controlnet, lora=shipped_lora(model))
    return {"model": model, **{key: result[key] for key in METRICS}}


def shipped_lora(model: str) -> Path | None:
    """The red-to-yellow LoRA file that ships with shapes model `model`, or None."""
    from .lora import shipped_loras

    return shipped_loras(model).get("red-to-yellow")
