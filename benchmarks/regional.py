"""Cost of regional prompting: masked vs unmasked generation with the same text tokens, as ratios measured
in one run on CPU; writes benchmarks/results/regional-cpu.json.

    python benchmarks/regional.py [--rounds N] [--steps N] [--mid-steps N] [--threads N] [--skip-mid]
    python benchmarks/regional.py --full --device cuda [--full-size 1024] [--full-steps N]

With `--full`, the configs are instead full-size denoisers with random weights: SD1.5 at 512 px
(`attnkit.testing.random_sd15_pipeline`), SDXL, SD3-medium and FLUX.1-dev at 1024 px (4096 DiT image tokens;
`attnkit.testing.random_full_size_pipeline`), bfloat16 on CUDA; on CUDA times are wall
times between device synchronisations and peak memory is the rise of the CUDA allocator's peak above what was
allocated before the generation (weights excluded); writes benchmarks/results/regional-full-DEVICE.json.

"Unmasked" runs the stock pipeline on exactly the embeddings the regional session produces (every region's text
concatenated), outside the session; "foundation only" with a no-op control on the same sites (the cost of attnkit's
site processors alone); "masked (split)" inside `attnkit.regional` with the default exact split into fused kernels
(the mask compiled inside the timed run, as in real use); "masked (dense)" with the dense-mask reference kernel;
on UNets also "couple" (one cross-attention per region prompt, blended by the region masks).

Configs: the tiny SD1.5 / SDXL / SD3 / SD3.5 / Flux pipelines (overhead-dominated), and mid-size SD3 and Flux (random-init
transformers with SD3-medium's / Flux's head size around the tiny text encoders, 1024 image tokens). Variants
alternate within each round so drift in the shared machine's load hits all alike; ratios use the minimum over rounds
of this process's CPU time (other jobs on the shared cores only ever add to it; the median wall time is kept too).
Peak memory, measured in a child process after one warm-up, is the rise of the resident set above its level before
the generation (Linux VmHWM, reset before each run), with glibc told to give every allocation over 64 KiB back on
free so that the resident set follows the live tensors. A last row times the attention op alone at one shape
(1024 image + 2 x 333 text tokens, 24 heads of 64) with its error against an fp64 masked reference.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline

import attnkit
from attnkit import Control, ops
from attnkit.regional import Plan, Rules
from attnkit.testing import build_pipeline, random_full_size_pipeline, random_sd15_pipeline

RESULTS = Path(__file__).parent / "results"
SPEC = {"regions": [{"prompt": "a red circle", "box": [0.0, 0.0, 0.5, 1.0]},
                    {"prompt": "a blue square", "box": [0.5, 0.0, 1.0, 1.0]}]}
MID_IMAGE_SIZE = 256  # tiny VAE (4x), patch / packing 2: 32x32 = 1024 image tokens
MID_HEADS, MID_HEAD_DIM = 8, 64


def mid_sd3() -> StableDiffusion3Pipeline:
    """4 MMDiT blocks with SD3-medium's head size; 2 regions x (77 CLIP + 256 T5) text tokens, CFG batch 2."""
    tiny = build_pipeline("tiny-sd3")
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=MID_IMAGE_SIZE // tiny.vae_scale_factor, patch_size=2, in_channels=4, out_channels=4,
        num_layers=4, attention_head_dim=MID_HEAD_DIM, num_attention_heads=MID_HEADS,
        joint_attention_dim=tiny.transformer.config.joint_attention_dim, caption_projection_dim=MID_HEADS * MID_HEAD_DIM,
        pooled_projection_dim=tiny.transformer.config.pooled_projection_dim, pos_embed_max_size=64,
    ).eval()
    pipe = StableDiffusion3Pipeline(**{**tiny.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mid_flux() -> FluxPipeline:
    """2 double + 4 single blocks with Flux's head size; 2 regions x 512 T5 tokens, no CFG batch (distilled)."""
    tiny = build_pipeline("tiny-flux")
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=tiny.transformer.config.in_channels, num_layers=2, num_single_layers=4,
        attention_head_dim=MID_HEAD_DIM, num_attention_heads=MID_HEADS,
        joint_attention_dim=tiny.transformer.config.joint_attention_dim,
        pooled_projection_dim=tiny.transformer.config.pooled_projection_dim, guidance_embeds=True,
        axes_dims_rope=(16, 24, 24),
    ).eval()
    pipe = FluxPipeline(**{**tiny.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call of `fn`; on CUDA (wall, wall) between device synchronisations."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        wall = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return (time.perf_counter() - wall,) * 2
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def peak_mib(fn: Callable[[], None], device: torch.device) -> float | None:
    """Rise of memory (MiB) above its level before one call of `fn`: the CUDA allocator's peak on CUDA, else the
    resident set; None where Linux cannot tell."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    _malloc_trim()
    start = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    fn()
    peak = _rss_kib("VmHWM")
    return None if start is None or peak is None else (peak - start) / 1024


class _Noop(Control):
    """Does nothing: what the foundation's site processors cost by themselves."""

    name = "noop"


VARIANTS = ("unmasked", "foundation only (no-op control)", "masked (split)", "masked (dense)")
COUPLE = "couple"  # UNets only: one cross-attention per region prompt, blended


def measure(name: str, pipe, steps: int, rounds: int, size: int | None, memory: bool,
            device: torch.device = torch.device("cpu")) -> list[dict]:
    """Per variant: CPU and wall time of generation (or, with `memory`, its peak memory), all on the same tokens:
    unmasked, the foundation alone (a no-op control on the regional sites), masked with the split and dense kernel,
    and on UNets the couple method."""
    with attnkit.regional(pipe, SPEC) as call:
        kwargs = call(seed=0, num_inference_steps=steps, height=size, width=size, output_type="latent")
        grid = call.grid(kwargs["height"], kwargs["width"])
        sites = call.sites()
    sessions = {"unmasked": nullcontext, "foundation only (no-op control)": lambda: attnkit.attach(pipe, _Noop(), sites),
                "masked (split)": lambda: attnkit.regional(pipe, SPEC, kernel="split"),
                "masked (dense)": lambda: attnkit.regional(pipe, SPEC, kernel="dense"),
                COUPLE: lambda: attnkit.regional(pipe, SPEC, method="couple")}
    variants = VARIANTS + ((COUPLE,) if hasattr(pipe, "unet") else ())
    samples: dict[str, list] = {v: [] for v in variants}
    for round_ in range(rounds + 1):  # round 0 warms up
        for variant in variants:
            with sessions[variant]():
                sample = (peak_mib if memory else timed)(lambda: _generate(pipe, kwargs), device)
            if round_:
                samples[variant].append(sample)
    tokens = {"image_tokens": grid[0] * grid[1], "text_tokens": kwargs["prompt_embeds"].shape[1]}
    rows = []
    for variant in variants:
        row = {"model": name, "regions": len(SPEC["regions"]), **tokens, "steps": steps, "variant": variant}
        if memory:
            peaks = samples[variant]
            row["peak_mib"] = None if None in peaks else statistics.median(peaks)
        else:
            seconds, wall = zip(*samples[variant])
            row |= {_time_key(device): min(seconds), "wall_s_median": statistics.median(wall)}
        rows.append(row)
    return rows


def _generate(pipe, kwargs: dict) -> None:
    with torch.inference_mode():
        pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)})


def _ratios(rows: list[dict], device: torch.device) -> None:
    """Each row's time and memory as ratios to the unmasked row of its model."""
    base = {r["model"]: r for r in rows if r["variant"] == VARIANTS[0]}
    key = _time_key(device)
    for r in rows:
        b = base[r["model"]]
        r["time_ratio"] = r[key] / b[key]
        r["wall_ratio"] = r["wall_s_median"] / b["wall_s_median"]
        peak, base_peak = r.get("peak_mib"), b.get("peak_mib")
        r["memory_ratio"] = None if peak is None or not base_peak else peak / base_peak


def attention_op(rounds: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """SD3-medium's attention at 512 px with two regions: 1024 image + 2 x 333 text tokens, 24 heads of 64,
    left/right regions."""
    image_side, text, heads, head_dim = 32, 333, 24, 64
    owners = torch.cat([(torch.arange(image_side) * 2 // image_side).repeat(image_side),
                        torch.arange(2).repeat_interleave(text)])
    plan = Plan([((("image", image_side**2), ("text", 2 * text)), owners.to(device))], Rules(), dtype, device)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, len(owners), head_dim, generator=generator).to(device, dtype) for _ in range(3))
    scale = head_dim**-0.5
    variants = {
        "unmasked (flash)": lambda: F.scaled_dot_product_attention(q, k, v),
        "masked (split)": lambda: plan.attend(q, k, v, scale),
        "masked (SDPA bool mask)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask),
    }
    times: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(rounds + 1):
        for variant, fn in variants.items():
            seconds, _ = timed(fn, device)
            if round_:
                times[variant].append(seconds)
    errors = {"unmasked (flash)": _error(variants["unmasked (flash)"](), q, k, v, None, scale),
              "masked (split)": _error(plan.attend(q, k, v, scale)[0], q, k, v, plan.mask, scale)}
    base = min(times["unmasked (flash)"])
    return [{"model": "attention op", "regions": 2, "image_tokens": image_side**2, "text_tokens": 2 * text,
             "dtype": str(dtype).removeprefix("torch."), "variant": variant, _time_key(device): min(t),
             "time_ratio": min(t) / base, "max_abs_error_vs_fp64": errors.get(variant)}
            for variant, t in times.items()]


def _error(out: torch.Tensor, q, k, v, mask: torch.Tensor | None, scale: float) -> float:
    """Largest deviation of `out` from attention computed in float64 on the same (rounded) inputs."""
    reference, _ = ops.explicit_attention(q.double(), k.double(), v.double(), mask, scale)
    return (out.double() - reference).abs().max().item()


def _time_key(device: torch.device) -> str:
    return "cpu_s_min" if device.type == "cpu" else f"{device.type}_s_min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=28, help="steps of the tiny pipelines (default 28)")
    parser.add_argument("--mid-steps", type=int, default=4, help="steps of the mid-size pipelines (default 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-mid", action="store_true", help="tiny pipelines only")
    parser.add_argument("--full", action="store_true", help="full-size random-init SD3-medium and FLUX.1-dev instead")
    parser.add_argument("--full-size", type=int, default=1024, help="image side of the full-size configs")
    parser.add_argument("--full-steps", type=int, default=8, help="steps of the full-size configs (default 8)")
    parser.add_argument("--num-blocks", type=int, help="full-size configs keep only this many blocks (quick check)")
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)  # the child measuring memory
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    out = args.out or RESULTS / (f"regional-full-{device.type}.json" if args.full else "regional-cpu.json")
    if args.full:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        configs = [("sd15", lambda: random_sd15_pipeline().to(device, dtype), 512, args.full_steps),
                   ("sdxl", lambda: random_full_size_pipeline("sdxl", device=device, dtype=dtype), args.full_size,
                    args.full_steps)]
        configs += [(name, lambda name=name: random_full_size_pipeline(name, device=device, dtype=dtype,
                                                                       num_blocks=args.num_blocks),
                     args.full_size, args.full_steps) for name in ("sd3-medium", "flux-dev")]
    else:
        if device.type != "cpu":
            parser.error("the tiny and mid-size configs run on CPU; use --full on another device")
        configs = [(name, lambda name=name: build_pipeline(name), None, args.steps)
                   for name in ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-sd35", "tiny-flux")]
        if not args.skip_mid:
            configs += [("mid-sd3", mid_sd3, MID_IMAGE_SIZE, args.mid_steps),
                        ("mid-flux", mid_flux, MID_IMAGE_SIZE, args.mid_steps)]
    if args.memory:
        print(json.dumps([row for name, build, size, steps in configs
                          for row in measure(name, build(), steps, 1, size, memory=True)]))
        return
    rows = []
    for name, build, size, steps in configs:
        pipe = build()
        measured = measure(name, pipe, steps, args.rounds, size, memory=False, device=device)
        if device.type == "cuda":  # the allocator's own statistics: no separate process needed
            peaks = measure(name, pipe, steps, 1, size, memory=True, device=device)
            for row, peak in zip(measured, peaks):
                row["peak_mib"] = peak["peak_mib"]
        _ratios(measured, device)
        _print(measured, device)
        rows += measured
        del pipe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cpu":
        peaks = {(r["model"], r["variant"]): r["peak_mib"] for r in _memory_rows(args)}
        for r in rows:
            r["peak_mib"] = peaks[r["model"], r["variant"]]
    _ratios(rows, device)
    rows += attention_op(max(args.rounds, 10), device, torch.float32 if device.type == "cpu" else torch.bfloat16)
    _print(rows, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": _machine(args), "rounds": args.rounds, "rows": rows}, indent=1))
    print(out)


def _machine(args: argparse.Namespace) -> dict:
    machine = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
               "threads": args.threads}
    if args.device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(args.device)
    if args.full:
        machine["full_size"] = {"image_px": args.full_size, "steps": args.full_steps, "blocks": args.num_blocks or "all",
                                "dtype": "float32" if args.device.type == "cpu" else "bfloat16"}
    return machine


def _memory_rows(args: argparse.Namespace) -> list[dict]:
    """Peak memory from a child process in which glibc hands every allocation over 64 KiB back on free, so that the
    resident set follows the live tensors (that setting slows allocation, hence not in the timed process)."""
    command = [sys.executable, __file__, "--memory", "--steps", str(args.steps), "--mid-steps", str(args.mid_steps),
               "--threads", str(args.threads), "--full-size", str(args.full_size), "--full-steps",
               str(args.full_steps)] + (["--skip-mid"] if args.skip_mid else []) + (["--full"] if args.full else [])
    if args.num_blocks:
        command += ["--num-blocks", str(args.num_blocks)]
    done = subprocess.run(command, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print(rows: list[dict], device: torch.device) -> None:
    key = _time_key(device)
    for r in rows:
        memory = "" if r.get("memory_ratio") is None else f"  memory {r['memory_ratio']:.2f}x ({r['peak_mib']:.1f} MiB)"
        print(f"{r['model']:<13} {r['variant']:<32} {r['image_tokens']:>5}+{r['text_tokens']:<5} tokens  "
              f"time {r['time_ratio']:.2f}x ({r[key]:.3f} s){memory}", flush=True)


if __name__ == "__main__":
    main()
