"""Shared by the tiny video builders: the stock pipeline class with small default sizes.

`WanPipeline` and `LTXPipeline` take their default size from literals in `__call__`'s signature (480x832 px, 81
frames; 512x704 px, 161 frames), not from anything on the instance (unlike `default_sample_size` or CogVideoX's
`transformer.config.sample_*`). A tiny pipeline that generates a few small frames when called with no size is
therefore an instance of a subclass of the stock class, of the same name and module, whose only change is those
defaults; every component and every code path is the stock one.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def small_default_class(stock: type, **defaults: Any) -> type:
    """`stock` with `defaults` (e.g. height, width, num_frames) as its `__call__` defaults, nothing else changed.

    An explicit None for one of them also means the default (the stock `__call__` would fail on it), as it does for
    the image pipelines whose `height=None` means their default size."""
    signature = inspect.signature(stock.__call__)
    unknown = set(defaults) - set(signature.parameters)
    if unknown:
        raise TypeError(f"{stock.__name__}.__call__ takes no {sorted(unknown)}")

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(self, *args, **kwargs)
        for name, value in defaults.items():
            if bound.arguments.get(name) is None:  # not given, or None (attnkit's "the pipeline's default")
                if name in bound.arguments and name not in kwargs:
                    raise TypeError(f"{name}=None given positionally; pass it by keyword")
                kwargs[name] = value
        return stock.__call__(self, *args, **kwargs)

    __call__.__signature__ = signature.replace(parameters=[
        p.replace(default=defaults[p.name]) if p.name in defaults else p for p in signature.parameters.values()])
    __call__.__doc__ = stock.__call__.__doc__
    return type(stock.__name__, (stock,), {"__call__": __call__, "__module__": stock.__module__,
                                             "__qualname__": stock.__qualname__,
                                             "__doc__": f"{stock.__doc__ or ''}\n(tiny: defaults {defaults})"})
