"""Cost of recording attention maps: generation time with a trace on every site at every step (and with a
segmentation trace, `attnkit.segment`), divided by
the time without one, measured in one run, on CPU; writes benchmarks/results/maps-cpu.json.

    python benchmarks/maps.py [--rounds N] [--steps N] [--threads N]
    python benchmarks/maps.py --full --device cuda [--full-size 1024] [--rounds N] [--steps N]

With `--full`, the configs are instead the full-size SDXL UNet, SD3-medium and FLUX.1-dev transformers with random
weights (`attnkit.testing.random_full_size_pipeline`, bfloat16 on CUDA) at 1024 px; on CUDA times are wall times
between device synchronisations; writes benchmarks/results/maps-full-DEVICE.json.

Configs: every tiny pipeline of SD1.5, SDXL, SD3, SD3.5 and Flux.1 (overhead-dominated); Flux.2, Qwen-Image and
Wan (`FAMILIES`), tiny and around a mid-size transformer (8 heads of 64; 1024 image tokens, Wan 2x16x16); and a mid-size SD3 (a 4-block MMDiT with SD3-medium's head size,
1024 image + 333 text tokens, CFG batch 2: attention is about 30% of the compute, as in SD3-medium at 1024 px).
Also an op-level figure: one joint attention call with SD3-medium's 24 heads, alone vs with the recorder. On the
transformers, one more variant records output-space concept maps (`space="output"`, `CONCEPTS`, ConceptAttention's
default sites: every joint block of SD3, the last four double-stream blocks of Flux), whose concept pass runs each
traced block a second time on the cond items.
Variants alternate within each round, so drift in the shared machine's load hits all of them alike. Times are this
process's CPU time (other jobs on the shared cores inflate wall time unevenly); ratios of the minima, medians kept too.

Side by side, where it is importable: attention-map-diffusers 1.0.0 (`pip install --no-deps
attention-map-diffusers==1.0.0`; else its columns are skipped with a note) recording image->text at every timestep
(`AttentionCapture(pipe, relations="image->text", timesteps="all", heads="mean")`, maps materialised with
`.compute()` inside the timed region) in its "exact" mode (softmax during the call) and its default "fast" mode (keeps
q/k, softmax after generation). It swaps processor objects on the pipeline's own modules and restores them on exit, so
it runs in this process as two more variants rotating with attnkit's in every round; the benchmark asserts that the
original processors and hooks are back and that latents after all rounds equal those before. Also its retained bytes
(`peak_capture_bytes`) beside attnkit's aggregate, and, on the transformer pipelines, its maps vs attnkit's.
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
from typing import Any
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline  # noqa: E402

import attnkit.maps  # noqa: E402
import attnkit.segment  # noqa: E402
from attnkit import AttentionCall, Site, State, TokenLayout, ops  # noqa: E402
from attnkit.families.sd3 import FAMILY as SD3_FAMILY  # noqa: E402
from attnkit.sites import architecture_of, denoiser_of  # noqa: E402
from attnkit.testing import build_pipeline, random_full_size_pipeline  # noqa: E402

try:
    import attention_map_diffusers as amd  # optional peer, never a dependency of attnkit
except ImportError:
    amd = None
AMD_INSTALL = "pip install --no-deps attention-map-diffusers==1.0.0"
AMD_MODES = {"amd-exact": "exact", "amd-fast": "fast"}
AMD_SETTINGS = 'AttentionCapture(pipe, relations="image->text", timesteps="all", heads="mean", mode=MODE); .compute()'
AMD_METHOD = (
    "attention-map-diffusers runs in the same process as two more variants in every round (rotating order with none, "
    "lse, explicit): it replaces processor objects on the pipeline's modules (not classes) and restores them on exit; "
    "after the rounds the original processor objects and hook counts are asserted back and latents of a generation "
    "after all rounds are asserted equal to those before. Its time includes .compute() (fast mode computes the maps "
    "there). kept_bytes is its own peak_capture_bytes (retained q/k and maps, both CFG branches, per layer and step); "
    "attnkit's aggregate_bytes is its one fp32 buffer (cond branch). Transient memory is not measured for either."
)

RESULTS = Path(__file__).parent / "results"
PROMPT = "a red circle and a blue square"
CONCEPTS = ["circle", "zebra", "background"]
TINY = ("tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-sd35", "tiny-flux")
#: Newer DiT families, run through attnkit's generic site mechanism: tiny, and mid-size (the tiny pipeline around a
#: transformer with these config changes: 8 heads of 64; at MID_IMAGE_SIZE px 1024 image tokens, Wan 2 latent frames
#: of 16x16).
FAMILIES = {
    "tiny-flux2": {"num_layers": 2, "num_single_layers": 4, "num_attention_heads": 8, "attention_head_dim": 64,
                   "axes_dims_rope": (16, 16, 16, 16)},
    "tiny-qwenimage": {"num_layers": 4, "num_attention_heads": 8, "attention_head_dim": 64,
                       "axes_dims_rope": (16, 24, 24)},
    "tiny-wan": {"num_layers": 4, "num_attention_heads": 8, "attention_head_dim": 64, "ffn_dim": 2048},
}
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


def mid_family(name: str) -> Any:
    """The tiny pipeline `name` around a mid-size random-init transformer (`FAMILIES[name]`)."""
    tiny = build_pipeline(name)
    torch.manual_seed(0)
    transformer = type(tiny.transformer).from_config({**tiny.transformer.config, **FAMILIES[name]}).eval()
    pipe = type(tiny)(**{**tiny.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(variants: dict[str, Callable[[], object]], rounds: int, device: torch.device = torch.device("cpu")) -> dict:
    """CPU seconds of each variant after one warm-up, over `rounds` rounds in rotating order: the minimum (the run
    least disturbed by other jobs on the shared cores; the ratios use it) and the median. On CUDA, wall seconds
    between device synchronisations instead."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run()
    names = list(variants)
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            _synchronize(device)
            start = clock()
            variants[name]()
            _synchronize(device)
            seconds[name].append(clock() - start)
    best = {name: min(t) for name, t in seconds.items()}
    median = {name: statistics.median(t) for name, t in seconds.items()}
    return {
        "rounds": rounds,
        f"{device.type}_seconds_min": {name: round(t, 5) for name, t in best.items()},
        f"{device.type}_seconds_median": {name: round(t, 5) for name, t in median.items()},
        "ratio": {name: round(t / best["none"], 4) for name, t in best.items() if name != "none"},
        "ratio_median": {name: round(t / median["none"], 4) for name, t in median.items() if name != "none"},
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(pipe, steps: int, rounds: int, size: int | None, device: torch.device = torch.device("cpu")) -> dict:
    """One generation without recording, with a trace on every image->text site at every step (each path), and
    with a segmentation trace (`attnkit.segment.trace`: per-query self-attention maps at one step, word maps at all)."""

    def generate() -> torch.Tensor:
        out = pipe(prompt=PROMPT, num_inference_steps=steps, height=size, width=size, output_type="latent",
                   generator=torch.Generator().manual_seed(0))
        return out.frames if hasattr(out, "frames") else out.images

    def recorded(exact: str) -> Callable[[], int]:
        def run() -> int:
            with attnkit.maps.trace(pipe, PROMPT, exact=exact) as tc:
                generate()
            return tc.total.nbytes
        return run

    def segmented() -> int:
        with attnkit.segment.trace(pipe, PROMPT) as tc:
            generate()
        return tc.recorder.total.nbytes

    def concepts() -> int:
        with attnkit.maps.trace(pipe, PROMPT, space="output", concepts=CONCEPTS) as tc:
            generate()
        return tc.total.nbytes

    sites = attnkit.maps.trace(pipe).recorder.sites
    variants = {"none": generate, "lse": recorded("lse"), "explicit": recorded("explicit"), "segment": segmented}
    if architecture_of(denoiser_of(pipe)).name in ("sd3", "flux"):  # where concept maps are implemented
        variants["concepts"] = concepts
    with torch.inference_mode():
        peer = amd_variants(pipe, generate, variants) if amd is not None else None
        state = pipeline_state(pipe)
        before = generate()
        result = timed(variants, rounds, device)
        aggregate = recorded("lse")()
        if peer is not None and "error" not in peer:
            # its restore left nothing behind: same processor objects and hooks, same latents as before the rounds
            assert pipeline_state(pipe) == state, "attention-map-diffusers left the pipeline patched"
            assert torch.equal(generate(), before), "latents changed after attention-map-diffusers' rounds"
            peer["restored_checked"] = True
            peer["kept_bytes"] = peer.pop("_kept")
            if kinds_compared(pipe):
                peer["maps_vs_attnkit"] = compare_maps(pipe, generate, peer["captured_layers"])
    out = {"steps": steps, "sites": len(sites), "kinds": sorted({s.kind for s in sites}), **result,
           "aggregate_bytes": aggregate}
    if peer is not None:
        out["attention_map_diffusers"] = peer
    return out


def pipeline_state(pipe) -> tuple:
    """Identity of every processor object of the denoiser, and its modules' hook counts."""
    model = getattr(pipe, "transformer", None) or pipe.unet
    processors = tuple((name, id(m.processor)) for name, m in model.named_modules() if hasattr(m, "processor"))
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    return processors, hooks


def amd_variants(pipe, generate: Callable[[], torch.Tensor], variants: dict) -> dict:
    """Adds attention-map-diffusers' two modes to `variants` if it installs on `pipe`; what it covers, or why not."""
    kept: dict[str, int] = {}

    def recorded(name: str) -> Callable[[], object]:
        def run() -> object:
            with amd.AttentionCapture(pipe, relations="image->text", timesteps="all", heads="mean",
                                      mode=AMD_MODES[name]) as capture:
                generate()
            maps = capture.compute()
            kept[name] = max(kept.get(name, 0), capture.collector.peak_capture_bytes)
            run.capture, run.maps = capture, maps
            return maps
        return run

    runs = {name: recorded(name) for name in AMD_MODES}
    try:
        runs["amd-exact"]()
    except (RuntimeError, ValueError) as error:  # it refuses pipelines it cannot cover completely
        return {"error": str(error).splitlines()[0]}
    capture, maps = runs["amd-exact"].capture, runs["amd-exact"].maps
    if not maps.records:
        return {"error": "it installed but recorded no image->text maps on this pipeline"}
    variants.update(runs)
    return {
        "captured_modules": capture.coverage["captured_modules"],
        "attention_modules": capture.coverage["attention_modules"],
        "captured_layers": sorted({r.layer_id for r in maps.records}),
        "records": len(maps.records),
        "record_shape": list(maps.records[0].data.shape),
        "_kept": kept,
    }


def kinds_compared(pipe) -> bool:
    """Maps are compared on transformers only: one token grid for all sites (UNet sites have several resolutions,
    which attnkit upsamples to one and attention-map-diffusers keeps apart)."""
    return getattr(pipe, "transformer", None) is not None


def compare_maps(pipe, generate: Callable[[], torch.Tensor], layers: list[str]) -> dict:
    """attnkit's mean image->text map (cond branch, mean over heads, sites and steps) vs attention-map-diffusers'
    exact-mode records averaged the same way, over the sites both record (it records no Flux single blocks)."""
    names = {layer.split(".", 1)[1] + ".processor" for layer in layers}
    shared = [s for s in attnkit.maps.trace(pipe).recorder.sites if s.name in names]
    with attnkit.maps.trace(pipe, PROMPT, sites_=shared) as tc:
        generate()
    ours = tc.maps  # (items, text, rows, cols)
    with amd.AttentionCapture(pipe, relations="image->text", timesteps="all", heads="mean", mode="exact") as cap:
        generate()
    records = [r for r in cap.compute().records if r.relation == "image->text"]
    data = torch.stack([r.data for r in records]).float()  # (records, batch, 1, image, text)
    cond = data[:, data.shape[1] // 2:, 0]  # CFG batches are [uncond, cond]; without CFG the one branch
    grid = records[0].q_shape
    theirs = cond.mean(0).unflatten(1, (grid.height, grid.width)).permute(0, 3, 1, 2)
    word = "circle"
    positions = tc.tokens(0).positions(word)
    ours_word, theirs_word = ours[0, positions].sum(0).flatten(), theirs[0, positions].sum(0).flatten()
    return {
        "sites_compared": len(shared),
        "records": len(records),
        "max_abs_diff": float((ours - theirs).abs().max()),
        "max_value": float(ours.abs().max()),
        "pearson_all": round(float(torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]), 8),
        f"pearson_{word}": round(float(torch.corrcoef(torch.stack([ours_word, theirs_word]))[0, 1]), 8),
    }


def attention_op(rounds: int, device: torch.device = torch.device("cpu")) -> dict:
    """One joint attention call (CFG batch 2) with the stock kernel, and with the recorder taking the cond branch's
    image->text map from the fused kernel's lse or by the explicit softmax: the recorder's own cost, without noise
    from the rest of the model."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, OP_HEADS, OP_IMAGE + OP_TEXT, MID_HEAD_DIM).to(device) for _ in range(3))
    site = Site("bench.processor", "joint", "joint.0", OP_HEADS, MID_HEAD_DIM, 1, 2, SD3_FAMILY)
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

    variants = {"none": lambda: F.scaled_dot_product_attention(q, k, v), "lse": with_lse, "explicit": explicit}
    if amd is not None:
        from attention_map_diffusers.capture.records import make_layout

        # attention-map-diffusers' exact mode per call: softmax over all keys (chunked over queries) for both CFG
        # items, mean over heads, text columns kept; here one record per call, cleared each time
        collector = amd.AttentionCollector(amd.CaptureConfig(relations="image->text", timesteps="all", heads="mean",
                                                             mode="exact"))
        ranges = [amd.ModalityRange("image", 0, OP_IMAGE, amd.TokenGrid(height=32, width=32)),
                  amd.ModalityRange("text", OP_IMAGE, OP_IMAGE + OP_TEXT)]
        layout = make_layout(ranges, ranges)

        def peer() -> None:
            collector.clear()
            collector.capture_qk(layer_id="op", attention_type="joint", query=q, key=k, layout=layout,
                                 scale=call.scale)
            F.scaled_dot_product_attention(q, k, v)

        variants["amd-exact"] = peer
    result = timed(variants, rounds, device)
    torch.testing.assert_close(lse_recorder.total, explicit_recorder.total, rtol=1e-4, atol=1e-5)
    if amd is not None:
        theirs = collector.records[0].data[1, 0].T.unflatten(1, (32, 32)) * OP_HEADS  # cond item, sum over heads
        torch.testing.assert_close(lse_recorder.total[0] / lse_recorder.count * OP_HEADS, theirs,
                                   rtol=1e-4, atol=1e-5)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant, mid-size (default 5)")
    parser.add_argument("--tiny-rounds", type=int, default=15, help="timed rounds per variant, tiny (default 15)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per generation (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--full", action="store_true", help="full-size random-init SDXL, SD3-medium and FLUX.1-dev instead")
    parser.add_argument("--full-size", type=int, default=1024, help="image side of the full-size configs")
    parser.add_argument("--num-blocks", type=int, help="full-size configs keep only this many blocks (quick check)")
    parser.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    parser.add_argument("--only", nargs="+", metavar="CONFIG",
                        help="measure only these tiny configs (and their mid-size rows), keeping the other rows of "
                             "the saved JSON: e.g. --only tiny-flux2 tiny-qwenimage")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = args.device
    if device.type != "cpu" and not args.full:
        parser.error("the tiny and mid-size configs run on CPU; use --full on another device")
    results = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
               "configs": {}}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    if amd is None:
        print(f"attention-map-diffusers is not importable: its columns are skipped ({AMD_INSTALL} to add them)",
              flush=True)
        results["attention_map_diffusers"] = None
    else:
        results["attention_map_diffusers"] = {"version": amd.__version__, "settings": AMD_SETTINGS,
                                              "method": AMD_METHOD}
    results["attention_op"] = attention_op(args.tiny_rounds, device)
    print("attention op (24 heads, 1024+333 tokens, CFG)", json.dumps(results["attention_op"]["ratio"]), flush=True)
    if args.full:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        results["full_size"] = {"image_px": args.full_size, "blocks": args.num_blocks or "all",
                                "dtype": str(dtype).removeprefix("torch.")}
        for name in ("sdxl", "sd3-medium", "flux-dev"):
            pipe = random_full_size_pipeline(name, device=device, dtype=dtype,
                                             num_blocks=None if name == "sdxl" else args.num_blocks)
            results["configs"][name] = measure(pipe, args.steps, args.rounds, args.full_size, device)
            print(name, json.dumps(results["configs"][name]["ratio"]), flush=True)
            del pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
        out = RESULTS / f"maps-full-{device.type}.json"
    else:
        out = RESULTS / "maps-cpu.json"
        names = args.only or TINY + tuple(FAMILIES)
        if args.only:
            results["configs"] = json.loads(out.read_text())["configs"]
        for name in names:
            results["configs"][name] = measure(build_pipeline(name), args.steps, args.tiny_rounds, None)
            print(name, json.dumps(results["configs"][name]["ratio"]), flush=True)
            if name in FAMILIES:
                mid = f"mid-{name.removeprefix('tiny-')} ({', '.join(f'{k}={v}' for k, v in FAMILIES[name].items())})"
                results["configs"][mid] = measure(mid_family(name), args.steps, args.rounds, MID_IMAGE_SIZE)
                print(mid, json.dumps(results["configs"][mid]["ratio"]), flush=True)
        if not args.only:
            mid = f"mid-sd3 ({MID_LAYERS} blocks, {MID_HEADS}x{MID_HEAD_DIM} heads, 1024+333 tokens, CFG)"
            results["configs"][mid] = measure(mid_sd3(), args.steps, args.rounds, MID_IMAGE_SIZE)
            print(mid, json.dumps(results["configs"][mid]["ratio"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    seconds = f"{device.type}_seconds_min"
    print(f"\nconfig | no recording, {device.type} s (min) | lse ratio | explicit ratio | concepts ratio | "
          "amd exact ratio | amd fast ratio | lse ratio of medians | attnkit aggregate bytes | "
          "amd kept bytes exact / fast")
    for name, r in {"attention op": results["attention_op"], **results["configs"]}.items():
        peer = r.get("attention_map_diffusers") or {}
        kept = peer.get("kept_bytes")
        amd_cells = [f"{r['ratio'][k]:.3f}" if k in r["ratio"] else peer.get("error", "-")[:40] for k in AMD_MODES]
        concept_cell = f"{r['ratio']['concepts']:.3f}" if "concepts" in r["ratio"] else "-"
        print(f"{name} | {r[seconds]['none']:.4f} | {r['ratio']['lse']:.3f} | {r['ratio']['explicit']:.3f} | "
              f"{concept_cell} | "
              f"{' | '.join(amd_cells)} | {r['ratio_median']['lse']:.3f} | {r.get('aggregate_bytes', '-')} | "
              f"{' / '.join(str(kept.get(k, '-')) for k in AMD_MODES) if kept else '-'}")
    for name, r in results["configs"].items():
        if "maps_vs_attnkit" in (r.get("attention_map_diffusers") or {}):
            print(name, "maps vs attention-map-diffusers:", json.dumps(r["attention_map_diffusers"]["maps_vs_attnkit"]))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
