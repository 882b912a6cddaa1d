"""Packages whose public names import their submodule on first use: `attnkit --help` and `import attnkit.errors`
must not pay for torch and diffusers, yet `attnkit.attach`, `attnkit.regional(...)` and `from attnkit.maps import
trace` must behave as the eager imports did."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["make_lazy"]


class _LazyPackage(types.ModuleType):
    """PEP 562 attribute access, on the module's class so that `__setattr__` can take part too."""

    _exports: Mapping[str, str]  # public name -> the module (".name" or "..name", relative) that defines it
    _submodules: frozenset[str]  # submodules the eager imports left reachable as attributes
    _moved: Mapping[str, str]  # public name of an earlier release -> the package it moved to

    def __getattr__(self, name: str) -> Any:
        if name in self._submodules:
            return importlib.import_module(f"{self.__name__}.{name}")
        if name in self._moved:  # an ImportError, not an AttributeError: `from package import name` shows it as is
            raise ImportError(f"{self.__name__}.{name} has moved: import it from {self._moved[name]} "
                              f"(`from {self._moved[name]} import {name}`).", name=self.__name__)
        if name not in self._exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(self._exports[name], self.__name__), name)
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds every imported submodule on its package. Where the package exports an object of
        # that submodule's name (the function `attnkit.sites`, not the module `attnkit/sites.py`), the object wins,
        # as it did eagerly; `__getattr__` resolves it when asked, so binding it here would import too early.
        shadowed = isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
        if shadowed and name in self._exports:
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._exports, *self._submodules})


def make_lazy(package: str, exports: Mapping[str, Iterable[str]], submodules: Iterable[str] = (),
              moved: Mapping[str, str] | None = None) -> None:
    """Make `package` lazy: `exports` maps each module (".name" within the package, "..name" beside it) to the
    public names it defines; `submodules` are reachable as attributes without an explicit import; `moved` names
    public names of earlier releases that now live in another package (an error says where)."""
    module = sys.modules[package]
    module.__dict__["_exports"] = {name: source for source, names in exports.items() for name in names}
    module.__dict__["_submodules"] = frozenset(submodules)
    module.__dict__["_moved"] = dict(moved or {})
    module.__class__ = _LazyPackage
