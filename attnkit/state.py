"""Explicit per-session state: which denoising step, batch branch and phase a processor runs in.

Processors never count their own calls to guess the step (one skipped layer or a separate uncond pass would shift
every later step); the step is read from the pipeline's scheduler before each denoiser forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import AttnkitError

__all__ = ["Branch", "State", "StepRange", "StepReader", "in_steps", "step_range"]

Branch = str  # "cond" or "uncond"; CFG batches are [uncond..., cond...]
StepRange = tuple[int, int | None]  # [start, end) in steps; end None = to the last step


def step_range(steps: Any, name: str = "steps") -> StepRange:
    """`steps` checked as a `StepRange` (start, end): 0 <= start <= end, end None for "to the last step"."""
    if not isinstance(steps, (tuple, list)) or len(steps) != 2:
        raise AttnkitError(f"{name} must be (start, end) with end None for 'to the last step', got {steps!r}.")
    start, end = steps
    if not isinstance(start, int) or start < 0 or (end is not None and (not isinstance(end, int) or end < start)):
        raise AttnkitError(f"{name}={list(steps)}: need 0 <= start <= end (end None = to the last step).")
    return start, end


def in_steps(steps: StepRange, step: int) -> bool:
    """Whether `step` lies in [start, end)."""
    start, end = steps
    return start <= step and (end is None or step < end)


@dataclass
class State:
    """What the current denoiser forward is; owned by one session, reset when the session starts.

    `step` is the 0-based step of the current pipeline run (the `i` of the pipeline's loop and of
    `callback_on_step_end`), `None` outside a pipeline. `branches` gives the CFG branch of every batch item.
    `timestep` is the current forward's timestep in the scheduler's units (0 to 1000, whatever the denoiser takes);
    `timesteps` those of every step of the run, in the same units (empty outside a pipeline run).
    `latent` is the denoiser input's spatial size in latent pixels; each site derives its token grid from it. A video
    denoiser's `frames` (token frames after temporal patching) are stacked top to bottom in `latent`, so that a site's
    grid is (frames x rows, cols): maps of a video are one tall picture of its frames.
    `text_tokens` is the text length of the first batch item, `item_text_tokens` that of every item where items
    differ (empty where one length holds for all).
    `arguments` holds the current forward's bound arguments while it runs (read them, never change them), for a
    feature that needs more of the forward's input (output-space concept maps recompute the conditioning with another
    pooled vector).
    `phase` and `exclusive` are set while a session runs a pass of its own through the denoiser's blocks
    (output-space concept maps: `phase` names the pass): that pass's attention calls are seen only by the controls of
    that session, never by other sessions' features.
    """

    step: int | None = None
    num_steps: int | None = None
    timestep: float | None = None
    timesteps: tuple[float, ...] = ()
    branches: tuple[Branch, ...] = ()
    latent: tuple[int, int] | None = None
    frames: int | None = None
    text_tokens: int | None = None
    item_text_tokens: tuple[int, ...] = ()
    forwards: int = 0
    arguments: Mapping[str, Any] | None = None
    phase: str | None = None
    exclusive: bool = False

    def reset(self) -> None:
        """Forget everything from an earlier run."""
        fresh = State()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    def batch_index(self, branch: Branch) -> list[int]:
        """Indices of the batch items in `branch`; an error if the branch layout is unknown."""
        if not self.branches:
            raise AttnkitError(
                "the CFG branch of the batch is unknown: no denoiser forward has run inside this session. "
                "Run the pipeline inside the `with` block."
            )
        return [i for i, b in enumerate(self.branches) if b == branch]


class StepReader:
    """The pipeline loop's index `i` at each denoiser forward, read from the scheduler and the pipeline.

    Every diffusers pipeline loops `for i, t in enumerate(timesteps)` over part of `scheduler.timesteps` (all of it;
    from where the strength begins in img2img; up to `denoising_end` in SDXL), announces the loop's length as
    `pipe.num_timesteps` and calls `scheduler.step` once per iteration. So the loop index is how many steps the
    scheduler has taken since the run began. It is read, never guessed from call counts: a scheduler that keeps a
    step count says it (`step_index`, which img2img pipelines start at `begin_index`; PNDM's `counter`), and one that
    keeps none (DDIM, DDPM) has distinct timesteps, so the timestep itself locates the step. Timesteps alone would
    not do: PNDM and Heun-type schedulers repeat them. A run begins when `set_timesteps` gives the scheduler a new
    timesteps tensor.
    """

    def __init__(self) -> None:
        self._timesteps: torch.Tensor | None = None
        self._start: int | None = None  # position in `scheduler.timesteps` of the run's first iteration
        self._last = 0
        self.runs = 0  # runs begun: a new timesteps tensor is a new run
        self._run_timesteps: tuple[tuple[int, int, int] | None, tuple[float, ...]] = (None, ())

    def read(self, scheduler: Any, timestep: Any, loop_length: int | None = None) -> tuple[int | None, int | None]:
        """(step, number of loop iterations) of the current run; (None, None) outside a pipeline run.

        `loop_length` is the pipeline's `num_timesteps`; without one the run is taken to end with the timesteps."""
        timesteps = getattr(scheduler, "timesteps", None)
        if not isinstance(timesteps, torch.Tensor) or timestep is None:
            return None, None
        if timesteps is not self._timesteps:
            self._timesteps, self._start, self._last = timesteps, None, 0
            self.runs += 1
        step = self._step(scheduler, timesteps, timestep)
        if step is None:
            return None, None
        return step, loop_length if loop_length is not None else len(timesteps) - (self._start or 0)

    def run_timesteps(self, num_steps: int | None) -> tuple[float, ...]:
        """The timesteps of the current run's `num_steps` loop iterations: the scheduler's from where the run began
        (a scheduler that counts its own steps, PNDM, runs the last `num_steps` of them)."""
        if self._timesteps is None or not num_steps:
            return ()
        start = self._start if self._start is not None else len(self._timesteps) - num_steps
        if self._run_timesteps[0] != (self.runs, start, num_steps):
            values = self._timesteps[start: start + num_steps].tolist()
            self._run_timesteps = ((self.runs, start, num_steps), tuple(float(t) for t in values))
        return self._run_timesteps[1]

    def _step(self, scheduler: Any, timesteps: torch.Tensor, timestep: Any) -> int | None:
        counter = getattr(scheduler, "counter", None)
        if not hasattr(scheduler, "step_index") and isinstance(counter, int):
            return counter  # PNDM counts this run's steps from 0
        if hasattr(scheduler, "step_index"):
            position = scheduler.step_index
            if position is None:  # no step taken yet in this run
                position = scheduler.begin_index if scheduler.begin_index is not None else self._start or 0
        else:
            hits = [h for h in _matches(timesteps, timestep) if h >= self._last]
            if not hits:
                return None
            position = hits[0]
        if self._start is None:
            self._start = position
        self._last = position
        return position - self._start


def _matches(timesteps: torch.Tensor, timestep: Any) -> list[int]:
    value = torch.as_tensor(timestep).flatten()[0].to(timesteps.device, timesteps.dtype)
    return [int(i) for i in (timesteps == value).nonzero().flatten()]
