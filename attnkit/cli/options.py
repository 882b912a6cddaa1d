"""Options several commands share, as argparse types over the run layer's checks: each number means and is checked
the same everywhere, and a bad one is a usage error naming the option."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..run import checks

__all__ = ["GENERATION_OPTIONS", "MODEL_HELP", "add_generation_options", "argument", "checked_float", "fps",
           "guidance", "kl", "port", "positive_int", "seed", "strength", "timestep"]

T = TypeVar("T")

MODEL_HELP = ("built-in name (shapes-sd3, shapes-sd15, shapes-flux, shapes-sd3-128, shapes-flux-128, random-sd15, or "
              "tiny-<family>, a tiny offline pipeline of each family, e.g. tiny-sd15, tiny-sdxl, tiny-sd3, tiny-sd35, "
              "tiny-flux, tiny-wan: an unknown name lists them all), local folder or hub id")


def argument(check: checks.Check[T]) -> Callable[[str], T]:
    """The argparse type of a value `check` reads: anything it refuses is a usage error saying what to give."""

    def parse(text: str) -> T:
        value = check(text)
        if value is None:
            raise argparse.ArgumentTypeError(f"got {text!r}; give {check.wanted}")
        return value

    return parse


def checked_float(accept: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    """argparse type of a finite number that `accept` takes; anything else (nan, inf, out of range) is a usage error
    that says what to give (`wanted`)."""
    return argument(checks.Check(checks.finite, accept, wanted))


positive_int = argument(checks.POSITIVE)
seed = argument(checks.SEED)
strength = argument(checks.STRENGTH)
guidance = argument(checks.GUIDANCE)
timestep = argument(checks.TIMESTEP)
kl = argument(checks.KL)
fps = argument(checks.FPS)
port = argument(checks.PORT)
lora_file = argument(checks.LORA_FILE)

#: The sampling options of every generating command, in help order.
GENERATION_OPTIONS: tuple[str, ...] = ("--seed", "--steps", "--height", "--width", "--guidance")
_GENERATION: dict[str, dict[str, Any]] = {
    "--seed": {"type": seed, "default": 0, "help": "random seed (default 0)"},
    "--steps": {"type": positive_int, "default": 28, "help": "denoising steps (default 28)"},
    "--height": {"type": positive_int, "default": None, "help": "image height in pixels (default: the pipeline's)"},
    "--width": {"type": positive_int, "default": None, "help": "image width in pixels (default: the pipeline's)"},
    "--guidance": {"type": guidance, "default": None,
                   "help": "guidance scale (default: the pipeline's; 7 on shapes models); true CFG against the empty "
                           "prompt on a Flux model without a guidance embedding"},
}


def add_generation_options(parser: argparse.ArgumentParser, options: Sequence[str] = GENERATION_OPTIONS) -> None:
    """Add `options` (all of GENERATION_OPTIONS by default), so that each means and checks the same everywhere."""
    for option in options:
        parser.add_argument(option, **_GENERATION[option])
