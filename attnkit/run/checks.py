"""The kinds of value a user types into the command line or a field of the web app, each read and checked by one
`Check`, so that a seed, a strength or a guidance scale means and is checked the same everywhere. The front ends
word the error their way (`--steps`: "got '0'; give ...", a field: "steps is 0; enter ...")."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Check", "FPS", "GUIDANCE", "KL", "LORA_FILE", "PORT", "POSITIVE", "SEED", "STRENGTH", "TIMESTEP",
           "whole"]

T = TypeVar("T")


@dataclass(frozen=True)
class Check(Generic[T]):
    """Reads a typed value (text from the command line, a number or text from a field) as `read` does, keeps it if
    `accept` says so; `wanted` says what to give instead."""

    read: Callable[[Any], T | None]
    accept: Callable[[T], bool]
    wanted: str

    def __call__(self, value: Any) -> T | None:
        """The value, or None where it cannot be read or is not accepted."""
        if isinstance(value, bool):
            return None
        read = self.read(value)
        return read if read is not None and self.accept(read) else None


def whole(value: Any) -> int | None:
    """A whole number: text of one, or a number with no fraction (fields hold floats)."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


def finite(value: Any) -> float | None:
    """A finite number, from text or a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


#: A count or a size in pixels.
POSITIVE: Check[int] = Check(whole, lambda value: value >= 1, "a whole number of at least 1")
#: A seed: any whole number a `torch.Generator` takes.
SEED: Check[int] = Check(whole, lambda value: -2**63 <= value < 2**64, "a whole number from -2**63 to 2**64 - 1")
#: An img2img strength: how much of the init image is re-noised.
STRENGTH: Check[float] = Check(finite, lambda value: 0 < value <= 1, "a number above 0 and at most 1, e.g. 0.6")
#: A guidance scale: nan or inf would sample garbage, a negative scale nothing meaningful.
GUIDANCE: Check[float] = Check(finite, lambda value: value >= 0, "a finite number of 0 or more, e.g. 7")
#: A noise level read by segmentation.
TIMESTEP: Check[float] = Check(finite, lambda value: 0 < value <= 1000,
                               "a noise level above 0 and at most 1000, e.g. 300")
#: DiffSeg's merging threshold.
KL: Check[float] = Check(finite, lambda value: value > 0, "a positive KL divergence, e.g. 1.1")
#: Frames per second of a written video.
FPS: Check[float] = Check(finite, lambda value: value > 0, "a positive number of frames per second, e.g. 8")
def named_file(value: Any) -> tuple[str, str] | None:
    """NAME=PATH as (name, path), both non-empty."""
    name, equals, path = str(value).partition("=") if isinstance(value, str) else ("", "", "")
    return (name.strip(), path.strip()) if equals and name.strip() and path.strip() else None


#: A LoRA file under an adapter name.
LORA_FILE: Check[tuple[str, str]] = Check(named_file, lambda value: True,
                                          "NAME=PATH, an adapter name and its LoRA file, e.g. purple=purple.safetensors")
#: A TCP port to serve on.
PORT: Check[int] = Check(whole, lambda value: 1 <= value <= 65535, "a port number from 1 to 65535")
