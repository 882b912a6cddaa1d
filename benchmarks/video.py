"""Cost of cross-frame attention in video editing, measured in one run on CPU; writes benchmarks/results/video-cpu.json.

    python benchmarks/video.py [--rounds N] [--frames N] [--threads N]

Speed: frames per second of `attnkit.kv.edit_video` with cross-frame attention to the first and previous frame,
divided by plain per-frame img2img (`attend="none"`) on the same pipeline and input, CPU-time minima over rounds.
Memory: the peak rise of the resident set while editing 8 and 32 frames with first+previous attention, each in a
child process (the stores hold two frames' K/V whatever the length, so the two should be equal).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from regional import peak_mib, timed

from attnkit import shapes
from attnkit.kv import edit_video
from attnkit.shapes.data import random_video

RESULTS = Path(__file__).parent / "results"
MODELS = ("shapes-sd15", "shapes-sd3", "shapes-flux")
STRENGTH = 0.6


def frames(count: int) -> list[Image.Image]:
    """A shapes-world video: one object sliding over a static scene, `count` frames."""
    return [Image.fromarray(f) for f in random_video(3000, frames=count).frames]


def edit(pipe, video: list[Image.Image], attend: str) -> None:
    for _ in edit_video(pipe, video, "a blue circle and a green square", attend=attend, strength=STRENGTH,
                        num_inference_steps=shapes.STEPS, seed=0, progress=False, negative_prompt="",
                        **shapes.call_kwargs(pipe), **shapes.guidance_kwargs(pipe)):
        pass


def speed(model: str, count: int, rounds: int) -> dict:
    pipe = shapes.load(model)
    pipe.set_progress_bar_config(disable=True)
    video = frames(count)
    edit(pipe, video[:2], "first+previous")  # warm-up
    best = {}
    for attend in ("none", "first", "first+previous"):
        cpu = min(timed(lambda: edit(pipe, video, attend))[0] for _ in range(rounds))
        best[attend] = count / cpu
    return {"frames": count, "fps_per_frame": best["none"], "fps_first": best["first"],
            "fps_first_previous": best["first+previous"],
            "ratio_first": best["first"] / best["none"], "ratio_first_previous": best["first+previous"] / best["none"]}


def child_memory(model: str, count: int) -> float | None:
    """Peak MiB of editing `count` frames with first+previous attention, after one warm-up, in this process."""
    pipe = shapes.load(model)
    pipe.set_progress_bar_config(disable=True)
    edit(pipe, frames(2), "first+previous")
    video = frames(count)
    return peak_mib(lambda: edit(pipe, video, "first+previous"))


def memory(model: str, count: int, threads: int) -> float | None:
    code = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); torch.set_num_threads({threads});"
            f"from video import child_memory; print(child_memory({model!r}, {count}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}).stdout
    value = out.strip().splitlines()[-1]
    return None if value == "None" else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model in MODELS:
        row = {"model": model, **speed(model, args.frames, args.rounds)}
        peaks = {n: memory(model, n, args.threads) for n in (8, 32)}
        row |= {"peak_mib_8_frames": peaks[8], "peak_mib_32_frames": peaks[32],
                "memory_ratio_32_over_8": None if None in peaks.values() else peaks[32] / peaks[8]}
        rows.append(row)
        print(f"{model}: first+previous {row['ratio_first_previous']:.2f}x the frame rate of per-frame img2img "
              f"({row['fps_first_previous']:.2f} vs {row['fps_per_frame']:.2f} frames/s); peak memory "
              f"{peaks[8]:.0f} MiB over 8 frames, {peaks[32]:.0f} MiB over 32")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "video-cpu.json"
    out.write_text(json.dumps({
        "what": "attnkit.kv.edit_video on the shapes models, 64 px, 28 steps at strength 0.6, CFG 7",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__},
        "rounds": args.rounds, "rows": rows,
        "min_ratio_first_previous": float(np.min([r["ratio_first_previous"] for r in rows])),
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
