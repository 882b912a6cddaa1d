"""The denoiser's blocks that carry both streams (`Family.stream_blocks`), and hooks that run after them: how a
feature runs a stream of its own through the same blocks (output-space concept maps) without patching anything."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook

from .families import Family

__all__ = ["AfterBlocks", "stream_blocks"]

#: Called after a hooked block's forward: (its position among the hooked blocks, the block, its bound arguments).
After = Callable[[int, torch.nn.Module, dict[str, Any]], None]


def stream_blocks(model: torch.nn.Module, family: Family) -> list[tuple[str, torch.nn.Module]]:
    """(block name as `Site.block` has it, module) of every block that carries both streams, in execution order."""
    return [(f"{stage}.{i}", block) for attribute, stage in family.stream_blocks
            for i, block in enumerate(getattr(model, attribute, ()))]


class _After(ModelHook):
    """Calls `after` once the block's own forward has returned; the block's output is returned untouched."""

    def __init__(self, index: int, after: After) -> None:
        super().__init__()
        self.index, self.after = index, after
        self.signature: inspect.Signature | None = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.signature is None:
            self.signature = inspect.signature(type(module).forward)
        arguments = self.signature.bind(module, *args, **kwargs).arguments
        arguments.pop("self")
        self.after(self.index, module, arguments)
        return output


class AfterBlocks:
    """A named diffusers hook on each of `blocks` that calls `after(index, block, arguments)` after the block's
    forward; a context manager that removes every hook it registered on exit, also after an exception."""

    def __init__(self, blocks: Sequence[torch.nn.Module], after: After, name: str) -> None:
        self.blocks, self.after, self.name = list(blocks), after, name
        self._hooked: list[torch.nn.Module] = []

    def __enter__(self) -> AfterBlocks:
        try:
            for index, block in enumerate(self.blocks):
                HookRegistry.check_if_exists_or_initialize(block).register_hook(_After(index, self.after), self.name)
                self._hooked.append(block)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for block in reversed(self._hooked):
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(self.name, recurse=False)
        self._hooked.clear()
