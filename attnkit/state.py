"""Explicit per-session state: which denoising step, batch branch, frame and phase a processor runs in.

Processors never count their own calls to guess the step (one skipped layer or a separate uncond pass would shift
every later step); the step is read from the pipeline's scheduler before each denoiser forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AttnkitError

__all__ = ["State", "Branch"]

Branch = str  # "cond" or "uncond"; CFG batches are [uncond..., cond...]


@dataclass
class State:
    """What the current denoiser forward is; owned by one session, reset when the session starts.

    `step` is the 0-based step of the current pipeline run (the `i` of the pipeline's loop and of
    `callback_on_step_end`), `None` outside a pipeline. `branches` gives the CFG branch of every batch item.
    `latent` is the denoiser input's spatial size in latent pixels; each site derives its token grid from it.
    `frame` and `phase` are set by features that loop over frames or store-then-load passes.
    """

    step: int | None = None
    num_steps: int | None = None
    timestep: float | None = None
    branches: tuple[Branch, ...] = ()
    latent: tuple[int, int] | None = None
    text_tokens: int | None = None
    forwards: int = 0
    frame: int | None = None
    phase: str | None = None

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
