"""Batches of attnkit command lines from a JSON-lines file, scheduled on one process or split across processes, GPUs
and machines by accelerate (`accelerate launch -m attnkit batch ...`), resumable. Batch only schedules: the command
line checks and runs each job (`attnkit batch`). Names load on first use."""

from .. import _lazy

__all__ = ["COMMANDS", "Check", "Execute", "Job", "MANIFEST", "Summary", "read_jobs", "run_jobs"]

_lazy.make_lazy(__name__, {
    ".jobs": ("COMMANDS", "Check", "Job", "read_jobs"),
    ".runner": ("Execute", "MANIFEST", "Summary", "run_jobs"),
}, submodules=("jobs", "runner"))
