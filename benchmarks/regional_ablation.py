"""Which regional-prompting settings make a shapes model follow its regions: strict regional adherence (the rule of
`attnkit eval`: each object in its half, no intruder, no blob across the border) per option set, on the layouts and
seeds `attnkit eval` uses; writes benchmarks/results/regional-ablation-MODEL.json.

    python benchmarks/regional_ablation.py shapes-sd3 [--layouts 64] [--variants NAME,NAME] [--threads 1]

`adherence` is the share of regions that succeed, `both` the share of layouts where both do; `plain` rows use no
regional prompting at all (the prompt names both objects), the floor every option set must clear.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnkit.regional import supports  # noqa: E402
from attnkit.shapes import load  # noqa: E402
from attnkit.shapes.evaluate import HALVES, generate, layouts  # noqa: E402
from attnkit.shapes.regional import regional_images  # noqa: E402
from attnkit.shapes.scorer import region_success  # noqa: E402

RESULTS = Path(__file__).parent / "results"
EARLY = (0, 6)  # the first steps of 28, where the layout forms

#: Option sets: `RegionalOptions` fields, and `base_weight` (the plain prompt naming both objects as the base
#: prompt, at that weight).
COMMON = {
    "default": {},
    "mask steps 0-14 only": {"steps": (0, 14)},
    "mask steps 0-6 only": {"steps": EARLY},
    "image isolation, all steps": {"image_isolation": True},
    "image isolation, steps 0-3": {"image_isolation": True, "image_isolation_steps": (0, 3)},
    "image isolation, steps 0-6": {"image_isolation": True, "image_isolation_steps": EARLY},
    "image isolation, steps 0-10": {"image_isolation": True, "image_isolation_steps": (0, 10)},
    "soft image isolation 1": {"image_isolation": True, "image_isolation_strength": 1.0},
    "soft image isolation 2": {"image_isolation": True, "image_isolation_strength": 2.0},
    "soft image isolation 2, steps 0-10": {"image_isolation": True, "image_isolation_strength": 2.0,
                                           "image_isolation_steps": (0, 10)},
    "base prompt, weight 0.2": {"base_weight": 0.2},
    "base prompt, weight 0.5": {"base_weight": 0.5},
    "base prompt, weight 1": {"base_weight": 1.0},
    "base prompt, weight 2": {"base_weight": 2.0},
    "base prompt 0.5, mask steps 0-14": {"base_weight": 0.5, "steps": (0, 14)},
    "base prompt 0.5, soft image isolation 1": {"base_weight": 0.5, "image_isolation": True,
                                                "image_isolation_strength": 1.0},
}
TRANSFORMERS = {  # parts of the joint-attention mask (a UNet's text never queries)
    "no text->image": {"text_to_image": False},
    "no text isolation": {"text_isolation": False},
    "base prompt 0.5, no text->image": {"base_weight": 0.5, "text_to_image": False},
}
UNETS = {
    "couple": {"method": "couple"},
    "couple, base prompt 0.2": {"method": "couple", "base_weight": 0.2},
    "couple, image isolation steps 0-6": {"method": "couple", "image_isolation": True,
                                          "image_isolation_steps": EARLY},
}


def adherence(images: list[np.ndarray], cases: list) -> dict[str, float]:
    ok = [region_success(image, list(HALVES), [list(o) for o in layout]) for image, layout in zip(images, cases)]
    return {"adherence": float(np.mean(ok)), "both": float(np.mean([all(r) for r in ok]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="shapes-sd3, shapes-flux or shapes-sd15")
    parser.add_argument("--layouts", type=int, default=64, help="two-object layouts (default 64, as attnkit eval)")
    parser.add_argument("--variants", help="comma-separated names of the option sets to run (default all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load(args.model)
    pipe.set_progress_bar_config(disable=True)
    variants = COMMON | (UNETS if hasattr(pipe, "unet") else TRANSFORMERS)
    if args.variants:
        chosen = args.variants.split(",")
        unknown = sorted(set(chosen) - set(variants))
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; known: {', '.join(variants)}")
        variants = {name: variants[name] for name in chosen}
    if not supports(pipe):
        parser.error(f"{args.model}: attnkit.regional does not support this pipeline")
    cases = layouts(args.layouts)
    seeds = [2000 + k for k in range(len(cases))]
    rows = []
    start = time.perf_counter()
    plain = generate(pipe, [" and ".join(f"a {c} {s}" for c, s in layout) for layout in cases], seeds)
    rows.append({"variant": "plain prompt", "options": None, **adherence(plain, cases)})
    print(f"{'plain prompt':<40} {rows[-1]['adherence']:.3f} both {rows[-1]['both']:.3f}", flush=True)
    for name, options in variants.items():
        options = dict(options)
        images = regional_images(pipe, cases, seeds, base_weight=options.pop("base_weight", None), options=options)
        rows.append({"variant": name, "options": variants[name], **adherence(images, cases)})
        print(f"{name:<40} {rows[-1]['adherence']:.3f} both {rows[-1]['both']:.3f}", flush=True)
    out = args.out or RESULTS / f"regional-ablation-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "layouts": len(cases), "seconds": round(time.perf_counter() - start),
                               "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
