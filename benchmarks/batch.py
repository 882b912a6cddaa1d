"""Throughput of `attnkit batch` on CPU: jobs per minute with one process and with two (`accelerate launch`), measured
in one run on the same jobs, and what loading the model costs (first job of a process vs the others); writes
benchmarks/results/batch-cpu.json.

    python benchmarks/batch.py [--jobs N] [--steps N] [--model shapes-sd3]

Each process runs one CPU thread, so two processes can at best double the rate on a machine with two free cores.
Times are wall-clock seconds of the whole command (process start, imports, model loading included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def jobs_file(folder: Path, model: str, count: int, steps: int) -> Path:
    path = folder / "jobs.jsonl"
    lines = [{"command": "generate", "model": model, "prompt": "a red circle and a blue square", "seed": i,
              "steps": steps, "name": f"job-{i:03d}"} for i in range(count)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run(argv: list[str], out: Path) -> dict:
    """Wall seconds of one batch command, and the per-job seconds its manifest records."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    subprocess.run(argv + ["--out", str(out), "--no-progress"], check=True, env=env, capture_output=True)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    per_process: dict[int, list[float]] = {}
    for record in records:
        per_process.setdefault(record["process"], []).append(record["seconds"])
    first = [times[0] for times in per_process.values()]
    rest = [t for times in per_process.values() for t in times[1:]]
    return {"seconds": round(seconds, 2), "jobs": len(records), "jobs_per_minute": round(60 * len(records) / seconds, 2),
            "first_job_seconds": round(statistics.mean(first), 3),
            "other_jobs_seconds": round(statistics.mean(rest), 3) if rest else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--model", default="shapes-sd3")
    parser.add_argument("--out", type=Path, default=RESULTS / "batch-cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        jobs = jobs_file(folder, args.model, args.jobs, args.steps)
        batch = ["-m", "attnkit", "batch", str(jobs), "--threads", "1"]
        one = run([sys.executable, *batch], folder / "one")
        two = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *batch], folder / "two")
        same = all((folder / "one" / name / "image.png").read_bytes() == (folder / "two" / name / "image.png").read_bytes()
                   for name in (f"job-{i:03d}" for i in range(args.jobs)))
    result = {"model": args.model, "steps": args.steps, "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "one_process": one, "two_processes": two,
              "speedup": round(two["jobs_per_minute"] / one["jobs_per_minute"], 3),
              "loading_share_of_first_job": round(1 - one["other_jobs_seconds"] / one["first_job_seconds"], 3),
              "identical_images": same}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
