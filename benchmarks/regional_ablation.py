"""Which regional-prompting settings make a shapes model follow its regions: strict regional adherence (the rule of
`attnkit eval`: each object in its half, no intruder, no blob across the border) per option set, on the layouts and
seeds `attnkit eval` uses; writes benchmarks/results/regional-ablation-MODEL.json.

    python benchmarks/regional_ablation.py shapes-sd3 [--layouts 64] [--variants "NAME;NAME"] [--threads 1]
    python benchmarks/regional_ablation.py --table       # rewrite docs/shapes.md's ablation table from the saved JSON

Results of a run with `--variants` are merged into the model's saved file, replacing rows of the same name.

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

import attnkit  # noqa: E402
from attnkit.regional import supports  # noqa: E402
from attnkit.shapes import load  # noqa: E402
from attnkit.shapes.evaluate import generate, halves, layouts  # noqa: E402
from attnkit.shapes.regional import regional_images  # noqa: E402
from attnkit.shapes.scorer import region_success  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from readme_table import between  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PAGE = Path(__file__).parent.parent / "docs" / "shapes.md"
START, END = "<!-- regional ablation: written by benchmarks/regional_ablation.py -->", "<!-- end of regional ablation -->"
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
    "base prompt 0.5, region weight 2": {"base_weight": 0.5, "region_weight": 2.0},
}
TRANSFORMERS = {  # parts of the joint-attention mask (a UNet's text never queries)
    "no text->image": {"text_to_image": False},
    "no text isolation": {"text_isolation": False},
    "base prompt 0.5, no text->image": {"base_weight": 0.5, "text_to_image": False},
    "region weight 2": {"region_weight": 2.0},
    "region weight 4": {"region_weight": 4.0},
    "base prompt 0.5, no text->image, region weight 2": {"base_weight": 0.5, "text_to_image": False,
                                                         "region_weight": 2.0},
    "mask in the first half of the blocks": {"blocks": "first half"},
    "mask in the second half of the blocks": {"blocks": "second half"},
    "base prompt 0.5, pooled from the base": {"base_weight": 0.5, "pooled": "base"},
    "pooled from the base only (weight 0)": {"base_weight": 0.0, "pooled": "base"},
    "base prompt 0.5, no text->image, mask steps 0-14": {"base_weight": 0.5, "text_to_image": False,
                                                         "steps": (0, 14)},
    "base prompt 0.5, mask steps 0-6 only": {"base_weight": 0.5, "steps": EARLY},
    "no text->image, mask steps 0-6 only": {"text_to_image": False, "steps": EARLY},
    "base prompt 0.5, pooled from the base, image isolation steps 0-3": {
        "base_weight": 0.5, "pooled": "base", "image_isolation": True, "image_isolation_steps": (0, 3)},
}
UNETS = {
    "mask in down and mid blocks only": {"blocks": ("down", "mid")},
    "mask in up blocks only": {"blocks": ("up",)},
    "couple": {"method": "couple"},
    "couple, base prompt 0.2": {"method": "couple", "base_weight": 0.2},
    "couple, base prompt 0.5": {"method": "couple", "base_weight": 0.5},
    "couple, image isolation steps 0-6": {"method": "couple", "image_isolation": True,
                                          "image_isolation_steps": EARLY},
}


HALVES_OF_BLOCKS = ("first half", "second half")


def half_of_the_blocks(pipe, half: str) -> tuple[str, ...]:
    """The names of the first or second half of the transformer blocks that regional prompting masks."""
    blocks = list(dict.fromkeys(s.block for s in attnkit.sites(pipe) if s.kind in ("joint", "single")))
    middle = len(blocks) // 2
    return tuple(blocks[:middle] if half == HALVES_OF_BLOCKS[0] else blocks[middle:])


def adherence(images: list[np.ndarray], cases: list) -> dict[str, float]:
    ok = [region_success(image, halves(image.shape[0]), [list(o) for o in layout])
          for image, layout in zip(images, cases)]
    return {"adherence": float(np.mean(ok)), "both": float(np.mean([all(r) for r in ok]))}


def ablation_table(results: list[dict]) -> str:
    """Markdown: one row per option set, one column per model (adherence, both regions right)."""
    models = [r["model"] for r in results]
    order = ["plain prompt", *COMMON, *TRANSFORMERS, *UNETS]
    names = sorted({row["variant"] for r in results for row in r["rows"]},
                   key=lambda name: order.index(name) if name in order else len(order))
    cells = {(r["model"], row["variant"]): f"{row['adherence']:.2f} ({row['both']:.2f})" for r in results
             for row in r["rows"]}
    lines = [f"| option set | {' | '.join(f'`{m}`' for m in models)} |", "| --- |" + " --- |" * len(models)]
    lines += [f"| {name} | {' | '.join(cells.get((m, name), '') for m in models)} |" for name in names]
    counts = sorted({r["layouts"] for r in results})
    lines += ["", f"Strict regional adherence (both regions right) over {', '.join(map(str, counts))} two-object "
                  "layouts per model, from `benchmarks/results/regional-ablation-*.json`; blank: not measured (a "
                  "joint-attention option on a UNet, a UNet method on a transformer, or not run)."]
    return "\n".join(lines)


def write_table() -> None:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("regional-ablation-*.json"))]
    PAGE.write_text(between(PAGE.read_text(), START, END, ablation_table(results)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="shapes-sd3, shapes-flux or shapes-sd15")
    parser.add_argument("--layouts", type=int, default=64, help="two-object layouts (default 64, as attnkit eval)")
    parser.add_argument("--variants", help="names of the option sets to run, separated by ; (default all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", action="store_true", help="only rewrite docs/shapes.md's table from the saved JSON")
    args = parser.parse_args()
    if args.table:
        write_table()
        return 0
    if args.model is None:
        parser.error("give a shapes model, or --table")
    torch.set_num_threads(args.threads)
    pipe = load(args.model)
    pipe.set_progress_bar_config(disable=True)
    variants = COMMON | (UNETS if hasattr(pipe, "unet") else TRANSFORMERS)
    if args.variants:
        chosen = [name.strip() for name in args.variants.split(";")]
        unknown = sorted(set(chosen) - set(variants))
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; known: {'; '.join(variants)}")
        variants = {name: variants[name] for name in chosen}
    if not supports(pipe):
        parser.error(f"{args.model}: attnkit.regional does not support this pipeline")
    out = args.out or RESULTS / f"regional-ablation-{args.model}.json"
    saved = json.loads(out.read_text()) if out.exists() else None
    if saved is not None and saved["layouts"] != args.layouts:
        parser.error(f"{out} holds {saved['layouts']} layouts; run with --layouts {saved['layouts']} or another --out")
    cases = layouts(args.layouts)
    seeds = [2000 + k for k in range(len(cases))]
    rows = []
    start = time.perf_counter()
    plain = generate(pipe, [" and ".join(f"a {c} {s}" for c, s in layout) for layout in cases], seeds)
    rows.append({"variant": "plain prompt", "options": None, **adherence(plain, cases)})
    print(f"{'plain prompt':<40} {rows[-1]['adherence']:.3f} both {rows[-1]['both']:.3f}", flush=True)
    for name, options in variants.items():
        options = dict(options)
        if options.get("blocks") in HALVES_OF_BLOCKS:
            options["blocks"] = half_of_the_blocks(pipe, options["blocks"])
        images = regional_images(pipe, cases, seeds, base_weight=options.pop("base_weight", None), options=options)
        rows.append({"variant": name, "options": variants[name], **adherence(images, cases)})
        print(f"{name:<40} {rows[-1]['adherence']:.3f} both {rows[-1]['both']:.3f}", flush=True)
    if saved is not None:
        names = {row["variant"] for row in rows}
        rows = [row for row in saved["rows"] if row["variant"] not in names] + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "layouts": len(cases), "torch": torch.__version__,
                               "seconds_last_run": round(time.perf_counter() - start), "rows": rows},
                              indent=1, default=list) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
