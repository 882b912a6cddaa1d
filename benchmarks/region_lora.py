"""Cost of a LoRA per region: a two-region generation with a LoRA given to one region vs the same generation with
the LoRA loaded for the whole image (peft's own forward), as ratios measured in one run on CPU; writes
benchmarks/results/region-lora-cpu.json.

    python benchmarks/region_lora.py [--rounds N] [--steps N] [--rank R] [--threads N] [--skip-mid]

Both variants run inside the same `attnkit.regional` session of two regions (so the regional mask costs the same);
"whole image" has the adapter active on the pipeline, "one region" names it in the first region's `lora` with the
adapter inactive. The adapter (random, rank R) sits on every attention projection, where LoRAs usually do. Configs
and measurement as `benchmarks/regional.py`: the tiny SD1.5, SD3 and Flux pipelines (overhead-dominated) and the
mid-size SD3 and Flux ones (1024 image tokens); variants alternate within each round; time is the minimum over rounds
of this process's CPU time, memory the rise of the resident set (VmHWM) above its level before the generation.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
from peft import LoraConfig

sys.path.insert(0, str(Path(__file__).parent))
from regional import mid_flux, mid_sd3, peak_mib, timed  # noqa: E402

import attnkit  # noqa: E402
from attnkit.families import denoiser_of  # noqa: E402
from attnkit.testing import build_pipeline  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
REGIONS = [{"prompt": "a red circle", "box": [0.0, 0.0, 0.5, 1.0]},
           {"prompt": "a blue square", "box": [0.5, 0.0, 1.0, 1.0]}]
VARIANTS = ("whole image", "one region")


def with_adapter(pipe, rank: int):
    """`pipe` with a random rank-`rank` adapter "A" on every attention projection of its denoiser, inactive."""
    model = denoiser_of(pipe)
    names = [name for name, _ in model.named_modules()]
    torch.manual_seed(0)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                 target_modules=[t for t in TARGETS if any(n.endswith("." + t) for n in names)]),
                      adapter_name="A")
    model.disable_adapters()
    return pipe


def measure(name: str, pipe, steps: int, rounds: int, memory: bool) -> list[dict]:
    model = denoiser_of(pipe)
    short = {"max_sequence_length": 16} if hasattr(pipe, "transformer") and name.startswith("tiny") else {}
    specs = {"whole image": {"regions": REGIONS},
             "one region": {"regions": [{**REGIONS[0], "lora": {"A": 1.0}}, REGIONS[1]]}}
    measure_one = peak_mib if memory else timed
    samples: dict[str, list] = {v: [] for v in VARIANTS}
    for round_ in range(rounds + 1):  # round 0 warms up
        for variant in VARIANTS:
            (model.enable_adapters if variant == "whole image" else model.disable_adapters)()
            if variant == "whole image":
                model.set_adapters(["A"])
            with attnkit.regional(pipe, specs[variant], **short) as regions:
                kwargs = regions(seed=0, num_inference_steps=steps, output_type="latent")

                def generate() -> None:
                    with torch.inference_mode():
                        pipe(**kwargs)

                sample = measure_one(generate, torch.device("cpu"))
            if round_:
                samples[variant].append(sample)
    model.disable_adapters()
    rows = []
    for variant in VARIANTS:
        row = {"model": name, "steps": steps, "variant": variant}
        if memory:
            row["peak_mib"] = None if None in samples[variant] else statistics.median(samples[variant])
        else:
            seconds, wall = zip(*samples[variant])
            row |= {"cpu_s": min(seconds), "wall_s_median": statistics.median(wall)}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-mid", action="store_true", help="tiny configs only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = {"tiny-sd15": lambda: build_pipeline("tiny-sd15"), "tiny-sd3": lambda: build_pipeline("tiny-sd3"),
               "tiny-flux": lambda: build_pipeline("tiny-flux")}
    if not args.skip_mid:
        configs |= {"mid-sd3": mid_sd3, "mid-flux": mid_flux}
    rows = []
    for name, build in configs.items():
        pipe = with_adapter(build(), args.rank)
        pipe.set_progress_bar_config(disable=True)
        times = measure(name, pipe, args.steps, args.rounds, memory=False)
        peaks = measure(name, pipe, args.steps, max(1, args.rounds // 2), memory=True)
        for timing, peak in zip(times, peaks):
            rows.append(timing | {"peak_mib": peak["peak_mib"]})
        whole, one = rows[-2], rows[-1]
        one["time_ratio"] = one["cpu_s"] / whole["cpu_s"]
        one["memory_ratio"] = (None if not whole["peak_mib"] or one["peak_mib"] is None
                               else one["peak_mib"] / whole["peak_mib"])
        print(json.dumps(one), flush=True)
    result = {"rows": rows, "rank": args.rank, "threads": args.threads, "torch": torch.__version__,
              "machine": platform.machine(), "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "region-lora-cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
