"""Cost of recording attention maps (issue 5): generation time with a trace on every site at every step, divided by
the time without one, measured in one run, on CPU; writes benchmarks/results/maps-cpu.json.

    python benchmarks/maps.py [--rounds N] [--steps N] [--threads N]

Configs: every tiny pipeline (overhead-dominated), and a mid-size SD3 (a 4-block MMDiT with SD3-medium's head size,
1024 image + 333 text tokens, CFG batch 2: attention is about 30% of the compute, as in SD3-medium at 1024 px).
Variants alternate within each round, so drift in the shared machine's load hits all of them alike; medians. The
ratios use this process's CPU time (other jobs on the shared cores inflate wall time unevenly); wall time is kept too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline  # noqa: E402

import attnkit.maps  # noqa: E402
from attnkit.testing import build_pipeline  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROMPT = "a red circle and a blue square"
TINY = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-sd35", "tiny-flux")
MID_IMAGE_SIZE = 256  # 64x64 latents (tiny VAE, 4x), patch 2: 32x32 = 1024 image tokens
MID_LAYERS, MID_HEADS, MID_HEAD_DIM = 4, 8, 64


def mid_sd3() -> StableDiffusion3Pipeline:
    """The tiny SD3 pipeline's text encoders, VAE and scheduler around a mid-size random-init transformer."""
    tiny = build_pipeline("tiny-sd3")
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=MID_IMAGE_SIZE // tiny.vae_scale_factor, patch_size=2, in_channels=4, out_channels=4,
        num_layers=MID_LAYERS, attention_head_dim=MID_HEAD_DIM, num_attention_heads=MID_HEADS,
        joint_attention_dim=tiny.transformer.config.joint_attention_dim, caption_projection_dim=MID_HEADS * MID_HEAD_DIM,
        pooled_projection_dim=tiny.transformer.config.pooled_projection_dim, pos_embed_max_size=64,
    ).eval()
    pipe = StableDiffusion3Pipeline(**{**tiny.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(pipe, steps: int, rounds: int, size: int | None) -> dict:
    """Median seconds of one generation without recording and with each exact path; ratios to no recording."""

    def generate() -> None:
        pipe(PROMPT, num_inference_steps=steps, height=size, width=size, output_type="latent",
             generator=torch.Generator().manual_seed(0))

    def recorded(exact: str) -> Callable[[], None]:
        def run() -> None:
            with attnkit.maps.trace(pipe, PROMPT, exact=exact) as tc:
                generate()
            buffers.append(tc.total.nbytes)
        return run

    buffers: list[int] = []
    variants = {"none": generate, "lse": recorded("lse"), "explicit": recorded("explicit")}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for run in variants.values():  # warm-up
            run()
        for index in range(rounds):
            order = list(variants)[index % 3:] + list(variants)[:index % 3]
            for name in order:
                start, start_cpu = time.perf_counter(), time.process_time()
                variants[name]()
                cpu[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in cpu.items()}
    median_wall = {name: statistics.median(t) for name, t in wall.items()}
    sites = attnkit.maps.trace(pipe).recorder.sites
    return {
        "steps": steps, "rounds": rounds, "sites": len(sites), "kinds": sorted({s.kind for s in sites}),
        "cpu_seconds": {name: round(m, 5) for name, m in median.items()},
        "ratio": {name: round(m / median["none"], 4) for name, m in median.items() if name != "none"},
        "wall_seconds": {name: round(m, 5) for name, m in median_wall.items()},
        "wall_ratio": {name: round(m / median_wall["none"], 4) for name, m in median_wall.items() if name != "none"},
        "aggregate_bytes": buffers[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (default 5)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per generation (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
               "configs": {}}
    for name in TINY:
        results["configs"][name] = measure(build_pipeline(name), args.steps, args.rounds, None)
        print(name, json.dumps(results["configs"][name]["ratio"]), flush=True)
    mid = f"mid-sd3 ({MID_LAYERS} blocks, {MID_HEADS}x{MID_HEAD_DIM} heads, 1024+333 tokens, CFG)"
    results["configs"][mid] = measure(mid_sd3(), args.steps, args.rounds, MID_IMAGE_SIZE)
    print(mid, json.dumps(results["configs"][mid]["ratio"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "maps-cpu.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\nconfig | no recording, CPU s | lse ratio | explicit ratio | lse wall ratio | aggregate bytes")
    for name, r in results["configs"].items():
        print(f"{name} | {r['cpu_seconds']['none']:.3f} | {r['ratio']['lse']:.3f} | {r['ratio']['explicit']:.3f} | "
              f"{r['wall_ratio']['lse']:.3f} | {r['aggregate_bytes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
