"""The processes of `accelerate launch` (one process without it): `processes()` is this process's view of them, as
`attnkit batch` splits jobs between them; `shared_map` shares the work of a command that computes one result
(`attnkit eval`): each process computes its share of the items, and every process gets all results, in order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["is_main_process", "processes", "shared_map"]

Item = TypeVar("Item")
Result = TypeVar("Result")


def processes() -> Any:
    """accelerate's `PartialState` of this process."""
    import torch
    from accelerate import PartialState

    # CPU-only machines: processes started by `accelerate launch --multi_gpu` share the work over gloo
    return PartialState(cpu=not torch.cuda.is_available())


def shared_map(function: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """`[function(item) for item in items]`, the items split between the processes (one process: all of them here).
    Results must be picklable; each must depend only on its item, so that the split does not change them."""
    state = processes()
    if state.num_processes == 1:
        return [function(item) for item in items]
    from accelerate.utils import gather_object

    with state.split_between_processes(list(enumerate(items))) as mine:
        done = [(index, function(item)) for index, item in mine]
    return [result for _, result in sorted(gather_object(done), key=lambda pair: pair[0])]


def is_main_process() -> bool:
    """Whether this is the process that reports (the only one without `accelerate launch`)."""
    return processes().is_main_process
