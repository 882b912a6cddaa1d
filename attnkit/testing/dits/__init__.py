"""Offline tiny pipelines of the DiT families attnkit runs on through its generic site mechanism.

Each module here builds one family's stock diffusers pipeline with tiny random weights (and in-memory tokenizers)
and names the full-size release configs of its denoiser, for the shape inspector on the meta device. A module
declares `NAME` (the `build_pipeline` name), `tiny_pipeline(*, seed)` and `FULL_SIZE` ({release name: (denoiser
class name in diffusers, config)}); modules are found automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from functools import cache
from types import ModuleType
from typing import Any

__all__ = ["builders", "full_size_configs"]


@cache
def _modules() -> tuple[ModuleType, ...]:
    return tuple(importlib.import_module(f"{__name__}.{info.name}")
                 for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
                 if not info.name.startswith("_"))


def builders() -> dict[str, Callable[..., Any]]:
    """{pipeline name: builder taking `seed=`} of every family module."""
    return {module.NAME: module.tiny_pipeline for module in _modules()}


def full_size_configs() -> dict[str, tuple[str, dict[str, Any]]]:
    """{release name: (denoiser class name, config)} of every family module."""
    return {name: entry for module in _modules() for name, entry in module.FULL_SIZE.items()}
