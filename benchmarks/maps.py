"""Cost of recording attention maps (issue 5): generation time with a trace on every site at every step, divided by
the time without one, measured in one run, on CPU; writes benchmarks/results/maps-cpu.json.

    python benchmarks/maps.py [--rounds N] [--steps N] [--threads N]

Configs: every tiny pipeline (overhead-dominated), and a mid-size SD3 (a 4-block MMDiT with SD3-medium's head size,
1024 image + 333 text tokens, CFG batch 2: attention is about 30% of the compute, as in SD3-medium at 1024 px).
Also the issue's op-level figure: one joint attention call with SD3-medium's 24 heads, alone vs with the recorder.
Variants alternate within each round, so drift in the shared machine's load hits all of them alike. Times are this
process's CPU time (other jobs on the shared cores inflate wall time unevenly); ratios of the minima, medians kept too.
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
import torch.nn.functional as F  # noqa: E402
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline  # noqa: E402

import attnkit.maps  # noqa: E402
from attnkit import AttentionCall, Site, State, TokenLayout, ops  # noqa: E402
from attnkit.testing import build_pipeline  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROMPT = "a red circle and a blue square"
TINY = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-sd35", "tiny-flux")
MID_IMAGE_SIZE = 256  # 64x64 latents (tiny VAE, 4x), patch 2: 32x32 = 1024 image tokens
MID_LAYERS, MID_HEADS, MID_HEAD_DIM = 4, 8, 64
OP_HEADS, OP_IMAGE, OP_TEXT = 24, 1024, 333  # SD3-medium heads; 32x32 image tokens; CLIP 77 + T5 256


def mid_sd3() -> StableDiffusion3Pipeline:
    """The tiny SD3 pipeline's text encoders, VAE and scheduler around a mid-size random-init transformer."""
    tiny = build_pipeline("tiny-sd3")
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=MID_IMAGE_SIZE // tiny.vae_scale_factor, patch_size=2, in_channels=4, out_channels=4,
        num_layers=MID_LAYERS, attention_head_dim=MID_HEAD_DIM, num_attention_heads=MID_HEADS,
        joint_attention_dim=tiny.transformer.config.joint_attention_dim,
        caption_projection_dim=MID_HEADS * MID_HEAD_DIM,
        pooled_projection_dim=tiny.transformer.config.pooled_projection_dim, pos_embed_max_size=64,
    ).eval()
    pipe = StableDiffusion3Pipeline(**{**tiny.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(variants: dict[str, Callable[[], object]], rounds: int) -> dict:
    """CPU seconds of each variant after one warm-up, over `rounds` rounds in rotating order: the minimum (the run
    least disturbed by other jobs on the shared cores; the ratios use it) and the median."""
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run()
    names = list(variants)
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            start = time.process_time()
            variants[name]()
            cpu[name].append(time.process_time() - start)
    best = {name: min(t) for name, t in cpu.items()}
    median = {name: statistics.median(t) for name, t in cpu.items()}
    return {
        "rounds": rounds,
        "cpu_seconds_min": {name: round(t, 5) for name, t in best.items()},
        "cpu_seconds_median": {name: round(t, 5) for name, t in median.items()},
        "ratio": {name: round(t / best["none"], 4) for name, t in best.items() if name != "none"},
        "ratio_median": {name: round(t / median["none"], 4) for name, t in median.items() if name != "none"},
    }


def measure(pipe, steps: int, rounds: int, size: int | None) -> dict:
    """One generation without recording, and with a trace on every image->text site at every step, each path."""

    def generate() -> None:
        pipe(PROMPT, num_inference_steps=steps, height=size, width=size, output_type="latent",
             generator=torch.Generator().manual_seed(0))

    def recorded(exact: str) -> Callable[[], int]:
        def run() -> int:
            with attnkit.maps.trace(pipe, PROMPT, exact=exact) as tc:
                generate()
            return tc.total.nbytes
        return run

    sites = attnkit.maps.trace(pipe).recorder.sites
    with torch.inference_mode():
        result = timed({"none": generate, "lse": recorded("lse"), "explicit": recorded("explicit")}, rounds)
        aggregate = recorded("lse")()
    return {"steps": steps, "sites": len(sites), "kinds": sorted({s.kind for s in sites}), **result,
            "aggregate_bytes": aggregate}


def attention_op(rounds: int) -> dict:
    """One joint attention call (CFG batch 2) with the stock kernel, and with the recorder taking the cond branch's
    image->text map from the fused kernel's lse or by the explicit softmax: the recorder's own cost, without noise
    from the rest of the model."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, OP_HEADS, OP_IMAGE + OP_TEXT, MID_HEAD_DIM) for _ in range(3))
    site = Site("bench.processor", "joint", "joint.0", OP_HEADS, MID_HEAD_DIM, 1, 2, "sd3")
    state = State(step=0, branches=("uncond", "cond"), latent=(64, 64), forwards=1)
    parts = (("image", OP_IMAGE), ("text", OP_TEXT))
    call = AttentionCall(site, state, q, k, v, TokenLayout(parts, parts), (32, 32), MID_HEAD_DIM**-0.5)
    lse_recorder = attnkit.maps.MapRecorder([site], exact="lse")
    explicit_recorder = attnkit.maps.MapRecorder([site], exact="explicit")

    def with_lse() -> None:
        out, lse = ops.attention(q, k, v, None, call.scale)
        lse_recorder.after(call, out, lse)

    def explicit() -> None:
        explicit_recorder.after(call, F.scaled_dot_product_attention(q, k, v), None)

    result = timed({"none": lambda: F.scaled_dot_product_attention(q, k, v), "lse": with_lse, "explicit": explicit},
                   rounds)
    torch.testing.assert_close(lse_recorder.total, explicit_recorder.total, rtol=1e-4, atol=1e-5)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant, mid-size (default 5)")
    parser.add_argument("--tiny-rounds", type=int, default=15, help="timed rounds per variant, tiny (default 15)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per generation (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
               "configs": {}}
    results["attention_op"] = attention_op(args.tiny_rounds)
    print("attention op (24 heads, 1024+333 tokens, CFG)", json.dumps(results["attention_op"]["ratio"]), flush=True)
    for name in TINY:
        results["configs"][name] = measure(build_pipeline(name), args.steps, args.tiny_rounds, None)
        print(name, json.dumps(results["configs"][name]["ratio"]), flush=True)
    mid = f"mid-sd3 ({MID_LAYERS} blocks, {MID_HEADS}x{MID_HEAD_DIM} heads, 1024+333 tokens, CFG)"
    results["configs"][mid] = measure(mid_sd3(), args.steps, args.rounds, MID_IMAGE_SIZE)
    print(mid, json.dumps(results["configs"][mid]["ratio"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "maps-cpu.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\nconfig | no recording, CPU s (min) | lse ratio | explicit ratio | lse ratio of medians | aggregate bytes")
    for name, r in {"attention op": results["attention_op"], **results["configs"]}.items():
        print(f"{name} | {r['cpu_seconds_min']['none']:.4f} | {r['ratio']['lse']:.3f} | {r['ratio']['explicit']:.3f} | "
              f"{r['ratio_median']['lse']:.3f} | {r.get('aggregate_bytes', '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
