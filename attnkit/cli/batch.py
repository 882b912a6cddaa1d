"""`attnkit batch JOBS.jsonl --out DIR [--model MODEL]`: many jobs, one process or many (`accelerate launch`). Each
job is a command line of this CLI, checked by its parser before any job runs and run by it; `attnkit.batch`
schedules them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import AttnkitError
from .options import MODEL_HELP, positive_int

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the `batch` subcommand to the `attnkit` parser's subcommands."""
    p = commands.add_parser("batch", help="run a JSON-lines file of generate / regional / maps / segment / video-edit "
                                          "jobs, resumable, on one or many processes (accelerate launch)")
    p.add_argument("jobs", type=Path, help="JSON lines: one object per job, e.g. {\"command\": \"regional\", "
                                           "\"model\": \"shapes-sd3\", \"spec\": {...}, \"seed\": 3, \"name\": \"a\"}")
    p.add_argument("--out", required=True, type=Path, help="folder: DIR/<name>/ per job, DIR/manifest.jsonl")
    p.add_argument("--model", default=None, help=f"model of the jobs that name none: {MODEL_HELP}")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads per process (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_batch)


def _batch(args: argparse.Namespace, load: Any) -> None:
    from ..batch import MANIFEST, read_jobs, run_jobs
    from . import check_command, run_command

    jobs = read_jobs(args.jobs, check_command, args.model)
    summary = run_jobs(jobs, args.out, args.jobs.resolve().parent, run_command, args.threads,
                       progress=not args.no_progress)
    if summary is None:
        return
    print(f"{summary.finished} job(s) finished, {summary.skipped} already finished before, {len(summary.failed)} "
          f"failed, on {summary.processes} process(es); see {args.out / MANIFEST}")
    if summary.failed:
        listed = "; ".join(f"{name}: {error}" for name, error in list(summary.failed.items())[:5])
        raise AttnkitError(f"{len(summary.failed)} job(s) failed ({listed}); the others finished. Fix them and run "
                           "the same command again: finished jobs are skipped.")
