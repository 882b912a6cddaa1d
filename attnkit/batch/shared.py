"""Work shared between the processes of `accelerate launch` for commands that compute one result (`attnkit eval`):
each process computes its share of the items, and every process gets all results, in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["is_main_process", "shared_map"]

Item = TypeVar("Item")
Result = TypeVar("Result")


def _state() -> Any:
    import torch
    from accelerate import PartialState

    # CPU-only machines: processes started by `accelerate launch --multi_gpu` share the work over gloo
    return PartialState(cpu=not torch.cuda.is_available())


def shared_map(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """`[function(item) for item in items]`, the items split between the processes (one process: all of them here).
    Results must be picklable; each must depend only on its item, so that the split does not change them."""
    state = _state()
    if state.num_processes == 1:
        return [function(item) for item in items]
    from accelerate.utils import gather_object

    with state.split_between_processes(list(enumerate(items))) as mine:
        done = [(index, function(item)) for index, item in mine]
    return [result for _, result in sorted(gather_object(done), key=lambda pair: pair[0])]


def is_main_process() -> bool:
    """Whether this is the process that reports (the only one without `accelerate launch`)."""
    return _state().is_main_process
