"""What the DiT family test files share: the module's tiny pipeline, seeded short generations, the transformer's bound
forward arguments of a one-step run, and a control that records the attention calls."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from attnkit.families import Grid, dit_of
from attnkit.processors import Control
from attnkit.testing import build_pipeline


def pipe_fixture(name: str):
    """A module-scoped `pipe` fixture building the tiny pipeline `name` once per test file."""

    @pytest.fixture(scope="module", name="pipe")
    def pipe():
        torch.set_num_threads(1)
        return build_pipeline(name)

    return pipe


def run(pipe, prompt="a red circle", **kwargs):
    """The `images` of a seeded two-step generation, so that two runs can be compared exactly."""
    with torch.inference_mode():
        return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kwargs).images


def forward_arguments(pipe, prompt, **options) -> list[dict[str, Any]]:
    """The bound arguments of every transformer forward of a one-step latent run, in call order."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments)

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            pipe(prompt=prompt, num_inference_steps=1, output_type="latent", **options)
    finally:
        handle.remove()
    return seen


def grids(pipe, **options) -> list[tuple[Grid, tuple[int, ...]]]:
    """The family's grid and the `hidden_states` shape of every transformer forward of a one-step run."""
    family = dit_of(pipe.transformer)
    return [(family.grid(bound, pipe.transformer), tuple(bound["hidden_states"].shape))
            for bound in forward_arguments(pipe, "a red circle", **options)]


class Keep(Control):
    """Records `record(call)` for every attention call and leaves the attention as it is."""

    name = "keep"

    def __init__(self, record: Callable[[Any], Any]) -> None:
        self.record, self.calls = record, []

    def before(self, call) -> None:
        self.calls.append(self.record(call))
