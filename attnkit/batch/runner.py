"""Running a batch: jobs split between processes (one, or those of `accelerate launch`), each model loaded once per
process, each job's outputs committed atomically, finished jobs skipped on the next run.

A job runs in OUT/.partial/<name>.<process>/ and becomes OUT/<name>/ by one rename when it has finished, with
job.json (the job, and the attnkit, diffusers and torch versions) beside its outputs; OUT/manifest.jsonl gets one
line per finished or failed job (name, status, outputs, seconds, process, what the job printed, and for a failed
job its error and traceback). A job whose folder exists has finished: rerunning the same command runs only the
others. Outputs do not depend on how jobs are split: every job seeds its own generators and every process runs
`threads` CPU threads. What a job does is the caller's `Execute` (the command line runs the job's command line):
batch only schedules.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AttnkitError
from .jobs import Job

__all__ = ["Execute", "MANIFEST", "Summary", "run_jobs"]

#: How one job runs: its command line, and the process's pipelines by model name (each loaded once).
Execute = Callable[[list[str], Callable[[str], Any]], None]

MANIFEST = "manifest.jsonl"
_PARTIAL = ".partial"


@dataclass(frozen=True)
class Summary:
    """What one run did: jobs finished now, skipped as finished before, and failed (name: error)."""

    finished: int
    skipped: int
    failed: dict[str, str]
    processes: int


def run_jobs(jobs: list[Job], out: Path, root: Path, execute: Execute, threads: int = 1,
             progress: bool = True) -> Summary | None:
    """Run the `jobs` not finished in `out` on this process's share, each by `execute`; the main process returns the
    summary of all processes (others return None). `root`: the jobs file's folder (relative paths in jobs resolve
    there)."""
    import torch
    from tqdm.auto import tqdm

    from ..processes import processes
    from ..run.models import Pipelines

    state = processes()
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    pending = [job for job in jobs if not (out / job.name).is_dir()]
    state.wait_for_everyone()  # every process sees the same finished set before any starts
    pipelines = Pipelines(state.device)
    with state.split_between_processes(pending) as mine:
        bar = tqdm(mine, desc=f"process {state.process_index}", position=state.process_index, disable=not progress,
                   unit="job")
        for job in bar:
            _append(out / MANIFEST, _run(job, out, root, state.process_index, execute, pipelines))
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    with contextlib.suppress(OSError):  # left only where a job failed or a run was killed
        (out / _PARTIAL).rmdir()
    errors = _failures(out, {job.name for job in pending})
    return Summary(len(pending) - len(errors), len(jobs) - len(pending), errors, state.num_processes)


def _run(job: Job, out: Path, root: Path, process: int, execute: Execute, load: Callable[[str], Any]
         ) -> dict[str, Any]:
    """Run one job into its partial folder and rename it into place; the manifest record of how it went, with what
    the job printed (and, where it failed, its error and traceback)."""
    import diffusers
    import torch

    from .. import __version__

    work = out / _PARTIAL / f"{job.name}.{process}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    record: dict[str, Any] = {"name": job.name, "line": job.line, "process": process}
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            execute(job.argv(work, root), load)
        versions = {"attnkit": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
        (work / "job.json").write_text(json.dumps({"job": job.as_dict(), "versions": versions}, indent=2) + "\n")
        outputs = sorted(str(path.relative_to(work)) for path in work.rglob("*") if path.is_file())
        os.replace(work, out / job.name)
        record |= {"status": "finished", "outputs": outputs}
    except Exception as error:  # a failed job is recorded and the batch goes on
        shutil.rmtree(work, ignore_errors=True)
        message = str(error) if isinstance(error, AttnkitError) else f"{type(error).__name__}: {error}"
        record |= {"status": "failed", "error": message, "traceback": traceback.format_exc()}
    record |= {"output": printed.getvalue(), "seconds": round(time.perf_counter() - start, 3)}
    return record


def _append(path: Path, record: dict[str, Any]) -> None:
    """One manifest line in a single append write, so that processes writing at once do not interleave."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (json.dumps(record) + "\n").encode())
    finally:
        os.close(descriptor)


def _failures(out: Path, names: set[str]) -> dict[str, str]:
    """Errors of this run's jobs that have no folder (the manifest's last record of each)."""
    errors = {}
    for line in (out / MANIFEST).read_text().splitlines() if (out / MANIFEST).is_file() else []:
        record = json.loads(line)
        if record["name"] in names and not (out / record["name"]).is_dir():
            errors[record["name"]] = record.get("error", "unknown error")
    return errors
