"""Batches of attnkit commands from a JSON-lines file, on one process or split across processes, GPUs and machines by
accelerate (`accelerate launch -m attnkit batch ...`), resumable. Names load on first use."""

from .. import _lazy

__all__ = ["COMMANDS", "Job", "Summary", "read_jobs", "run_jobs"]

_lazy.make_lazy(__name__, {
    ".jobs": ("COMMANDS", "Job", "read_jobs"),
    ".runner": ("Summary", "run_jobs"),
}, submodules=("jobs", "runner"))
