"""Quality benchmark of the shapes models: writes benchmarks/results/quality-<model>.json.

    python benchmarks/quality.py [MODEL ...] [--seeds N]     # measure, then rewrite docs/shapes.md's quality table
    python benchmarks/quality.py --only segment_miou [MODEL ...]   # measure again only the metrics named
    python benchmarks/quality.py --lora-only [MODEL ...]      # the same as --only lora_inside,lora_leak,lora_whole
    python benchmarks/quality.py --table                      # only rewrite the table from the JSON files

`--only` (`segment_miou`, `map_iou_output`, `lora_inside`, `lora_leak`, `lora_whole`) measures those metrics again,
with the settings of the saved file, and writes them (and their details) into it; the file's `partial_runs` says which
metrics were measured again, when the rest were not.

Numbers in the docs and the model cards come from these files, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from readme_table import between  # noqa: E402

from attnkit.shapes import CONTROLNETS, MODEL_NAMES, load
from attnkit.shapes.controlnet import load_controlnet
from attnkit.shapes.evaluate import LORA_METRICS, evaluate, output_maps, region_lora, segmentation, shipped_lora

RESULTS = Path(__file__).parent / "results"
PAGE = Path(__file__).parent.parent / "docs" / "shapes.md"
START, END = "<!-- quality table: written by benchmarks/quality.py -->", "<!-- end of quality table -->"
COLUMNS = ("prompt_following", "regional_adherence", "plain_adherence", "regional_adherence_4", "map_iou",
           "map_iou_output", "segment_miou", "flicker_per_frame", "flicker_first_previous", "edit_adherence",
           "lora_inside", "lora_leak", "lora_whole")


def _settings(result: dict) -> str:
    d = result["details"]
    four = d.get("four_objects", {}).get("layouts")
    return (f"{d['steps']} steps, CFG {d['guidance']:g}, {d['single']['images']} single-object images, "
            f"{d['two_objects']['layouts']} two-object layouts" + (f", {four} four-object layouts" if four else "") +
            (f", {d['video']['videos']} videos of {d['video']['frames']} frames" if "video" in d else ""))


def quality_table(results: list[dict]) -> str:
    """Markdown table of the headline metrics, one row per model, n/a where a metric does not apply, and the
    sampling settings they were measured with."""
    results = sorted(results, key=lambda r: r["model"])
    rows = [f"| model | {' | '.join(COLUMNS)} |", "| --- |" + " --- |" * len(COLUMNS)]
    for result in results:
        cells = ["n/a" if result.get(k) is None else f"{result[k]:.3f}" for k in COLUMNS]
        rows.append(f"| `{result['model']}` | {' | '.join(cells)} |")
    settings = {_settings(r) for r in results}
    where = (f"{settings.pop()} per model" if len(settings) == 1 else
             "; ".join(f"`{r['model']}`: {_settings(r)}" for r in results))
    rows += ["", f"From `benchmarks/results/quality-*.json` ({where})."]
    return "\n".join(rows)


def page_with_table(page: str, results: list[dict]) -> str:
    """`page` with the text between the quality-table markers replaced by the table of `results`."""
    return between(page, START, END, quality_table(results))


#: Metrics `--only` measures again: (the evaluation part, its key in the details, its key in the part's result).
PARTS = {"segment_miou": (segmentation, "segmentation", "miou"),
         "map_iou_output": (output_maps, "output_maps", "map_iou_output"),
         **{key: (region_lora, "lora", key) for key in LORA_METRICS}}


def remeasure(model: str, metrics: list[str]) -> dict:
    """The saved result of `model` with `metrics` measured again (same seeds, steps and guidance); metrics of one
    evaluation part (the three LoRA metrics) are measured together, once."""
    path = RESULTS / f"quality-{Path(model).name}.json"
    result = json.loads(path.read_text())
    details = result["details"]
    start = time.monotonic()
    pipe = load(model)
    pipe.set_progress_bar_config(disable=True)
    measured: dict[str, dict] = {}
    for metric in metrics:
        measure, detail, key = PARTS[metric]
        if detail not in measured:
            gen = {"steps": details["steps"], "guidance": details["guidance"]}
            with torch.inference_mode():
                measured[detail] = (region_lora(pipe, shipped_lora(model), details["seeds"], **gen)
                                    if measure is region_lora else measure(pipe, details["seeds"], **gen))
        details[detail] = measured[detail]
        result[metric] = measured[detail][key]
    result.setdefault("partial_runs", []).append({"metrics": metrics, "seconds": round(time.monotonic() - start, 1),
                                                  "torch": torch.__version__})
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def saved_results() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob("quality-*.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODEL_NAMES), help="shapes models (default: all shipped)")
    parser.add_argument("--seeds", type=int, default=8, help="images per single-object prompt (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--table", action="store_true", help="only rewrite docs/shapes.md's table from the saved JSON")
    parser.add_argument("--only", default=None, help=f"comma-separated metrics to measure again ({', '.join(PARTS)}) "
                        "into the saved files")
    parser.add_argument("--lora-only", action="store_true",
                        help="measure only the LoRA metrics and put them into each model's saved JSON")
    args = parser.parse_args(argv)
    if args.table:
        PAGE.write_text(page_with_table(PAGE.read_text(), saved_results()))
        return 0
    torch.set_num_threads(args.threads)
    if args.lora_only:
        args.only = ",".join(LORA_METRICS)
    if args.only is not None:
        metrics = [m.strip() for m in args.only.split(",") if m.strip()]
        unknown = sorted(set(metrics) - set(PARTS))
        if unknown or not metrics:
            parser.error(f"--only {args.only!r}: choose from {', '.join(PARTS)}")
        for model in args.models:
            result = remeasure(model, metrics)
            print(json.dumps({k: result[k] for k in ("model", *metrics)}))
        PAGE.write_text(page_with_table(PAGE.read_text(), saved_results()))
        return 0
    RESULTS.mkdir(exist_ok=True)
    for model in args.models:
        start = time.monotonic()
        pipe = load(model)
        pipe.set_progress_bar_config(disable=True)
        controlnet = load_controlnet(CONTROLNETS[model]) if model in CONTROLNETS else None
        with torch.inference_mode():
            result = evaluate(pipe, seeds=args.seeds, controlnet=controlnet, lora=shipped_lora(model))
        result = {"model": model, **result, "seconds": round(time.monotonic() - start, 1),
                  "torch": torch.__version__}
        name = Path(model).name
        (RESULTS / f"quality-{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({k: result[k] for k in ("model", *COLUMNS)}))
    PAGE.write_text(page_with_table(PAGE.read_text(), saved_results()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
