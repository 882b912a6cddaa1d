"""The generic site processor: the stock processor's own code, with attnkit at its one attention call.

Every modern diffusers attention processor projects, normalises and rotates q, k and v and then calls one attention
function: `dispatch_attention_fn` (the attention-backend dispatcher) or, in older processors,
`F.scaled_dot_product_attention`. attnkit runs the stock `__call__` unchanged except that, for the sites it holds,
these two names resolve to attnkit's entry (a copy of the function with its own globals; diffusers' modules are never
patched). So norms, rotary embeddings, fused projections, output layers and whatever a new release adds stay
diffusers' code, and a family needs only a declarative description (`attnkit.families`). With no control active the
call goes to the very function the stock code would have called, with the same arguments: bit-identical output,
on whatever backend and context-parallel config the stock processor has.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models import attention_dispatch

from ..errors import AttnkitError, AttnkitWarning
from ..families import Grid
from ..sites import Site
from .base import AttentionCall, SiteProcessor, TokenLayout

__all__ = ["DispatchSiteProcessor", "site_processor_class"]


def _backend_name(backend: object) -> str | None:
    """The backend a stock processor would use: its own, else the active one (`attention_backend(...)`)."""
    if backend is None:
        registry = getattr(attention_dispatch, "_AttentionBackendRegistry", None)
        backend = registry.get_active_backend()[0] if registry is not None else None
    return getattr(backend, "value", backend)


class _Functional:
    """`torch.nn.functional` as the stock code sees it at a held site: everything is torch's except
    `scaled_dot_product_attention`, which is attnkit's entry."""

    def __init__(self, sdpa: Callable[..., torch.Tensor]):
        self.scaled_dot_product_attention = sdpa

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)


class DispatchSiteProcessor(SiteProcessor):
    """Runs `original`'s own `__call__` with its attention function routed through the site's controls.

    Built through `site_processor_class(type(original))`, whose `__call__` has the stock signature, because diffusers'
    attention modules pass a processor only the keyword arguments its `__call__` declares. The attention backend and
    context-parallel config diffusers sets on the site (`set_attention_backend`, `enable_parallelism`) belong to the
    stock processor, which gets the site back; sites that a control takes off the stock kernel say so once.
    """

    def __init__(self, site: Site, original: object):
        super().__init__(site, original)
        self.family = site.family
        stock = type(original).__call__
        names = dict(stock.__globals__)
        if "dispatch_attention_fn" in names:
            names["dispatch_attention_fn"] = self._dispatch
        if names.get("F") is F:
            names["F"] = _Functional(self._sdpa)
        self._stock = types.FunctionType(stock.__code__, names, stock.__name__, stock.__defaults__,
                                          stock.__closure__)
        self._stock.__kwdefaults__ = stock.__kwdefaults__
        self._seen = 0

    @property
    def _attention_backend(self) -> object:
        return getattr(self.original, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, backend: object) -> None:
        self.original._attention_backend = backend

    @property
    def _parallel_config(self) -> object:
        return getattr(self.original, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, config: object) -> None:
        self.original._parallel_config = config

    def own_kernel(self, need: str) -> None:
        if self._parallel_config is not None:
            raise AttnkitError(
                f"{self.site.name} runs under context parallelism (`parallel_config`), where attnkit cannot compute "
                f"{need} over the whole sequence. Run this feature without context parallelism."
            )
        backend = _backend_name(self._attention_backend)
        if backend not in (None, "native"):
            warnings.warn(
                f"the {backend!r} attention backend cannot give attnkit {need}: attnkit computes attention with its "
                f"own exact kernel at the sites that need it; the other sites keep {backend!r}.",
                AttnkitWarning, stacklevel=2,
            )

    def run(self, attn: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        seen = self._seen
        out = self._stock(self.original, attn, *args, **kwargs)
        if self._seen == seen and self.active_entries():
            raise AttnkitError(
                f"{self.site.name}: {type(self.original).__name__} computed attention without calling "
                "`dispatch_attention_fn` or `F.scaled_dot_product_attention` in its `__call__`, so attnkit's controls "
                "saw nothing there. This processor is not supported; select other sites."
            )
        return out

    def _dispatch(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                  *args: Any, **kwargs: Any) -> torch.Tensor:
        """`dispatch_attention_fn` at this site: q, k, v are (batch, tokens, heads, head_dim)."""
        def changed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
            out = attention_dispatch.dispatch_attention_fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           mask, *args, **kwargs)
            return out.transpose(1, 2)

        out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask,
                           _options(args, kwargs), changed,
                           lambda: attention_dispatch.dispatch_attention_fn(query, key, value, attn_mask, *args,
                                                                            **kwargs).transpose(1, 2))
        return out.transpose(1, 2)

    def _sdpa(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
              *args: Any, **kwargs: Any) -> torch.Tensor:
        """`F.scaled_dot_product_attention` at this site: q, k, v are (batch, heads, tokens, head_dim)."""
        def changed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, mask, *args, **kwargs)

        return self._attend(query, key, value, attn_mask, _options(args, kwargs), changed,
                            lambda: changed(query, key, value, attn_mask))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any, options: dict[str, Any],
                changed: Callable[..., torch.Tensor], stock: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One attention call in attnkit's (batch, heads, tokens, head_dim) layout. `stock()` is the call the stock
        code made, exactly, for when no control changed anything; `changed(q, k, v, mask)` the same function on
        what the controls made of them."""
        self._seen += 1
        entries = self.active_entries()
        if not entries:
            return stock()
        if q.ndim != 4:
            raise AttnkitError(f"{self.site.name}: attnkit expects 4-d q/k/v, got {tuple(q.shape)} from "
                               f"{type(self.original).__name__}; this processor is not supported.")
        state = entries[0][1]
        grid = self._token_grid(state)
        items = tuple(TokenLayout(*self._parts(grid, q.shape[2], k.shape[2], text)) for text in state.item_text_tokens)
        layout = items[0] if items else TokenLayout(*self._parts(grid, q.shape[2], k.shape[2], state.text_tokens))
        mask = _as_mask(attn_mask)
        scale = options.get("scale") or q.shape[-1] ** -0.5
        # attnkit's maps take a video's frames stacked top to bottom: (frames x rows, cols)
        call = AttentionCall(self.site, None, q, k, v, layout, (grid.frames * grid.rows, grid.cols), scale, mask=mask,
                             item_layouts=items or None)

        def plain(c: AttentionCall) -> torch.Tensor:
            if c.q is q and c.k is k and c.v is v and c.mask is mask:
                return stock()
            return changed(c.q, c.k, c.v, c.mask)

        if options.get("is_causal") or options.get("dropout_p"):
            self._refuse_unless_plain(entries, "a causal or dropout attention call")
        if k.shape[1] != q.shape[1]:
            self._refuse_unless_plain(entries, f"grouped-query attention ({k.shape[1]} key heads for "
                                               f"{q.shape[1]} query heads)")
        return self.attend(call, plain)

    def _refuse_unless_plain(self, entries: list, what: str) -> None:
        if any(control.needs_lse or control.masks for control, _ in entries):
            raise AttnkitError(f"{self.site.name}: {type(self.original).__name__} makes {what}, which attnkit's exact "
                               "kernel does not reproduce; select other sites for this feature.")

    def _parts(self, grid: Grid, queries: int, keys: int, text_tokens: int | None) -> tuple[tuple, tuple]:
        q_parts, k_parts = self.family.parts(self.site.kind, queries, keys, grid, text_tokens)
        if (sum(n for _, n in q_parts) != queries or sum(n for _, n in k_parts) != keys
                or any(n < 0 for _, n in q_parts + k_parts)):
            raise AttnkitError(
                f"{self.site.name}: an attention call of {queries} query and {keys} key tokens does not fit the "
                f"{self.family.name} layout ({q_parts} over {k_parts}) for a {grid.frames}x{grid.rows}x{grid.cols} "
                "token grid. Was the denoiser called outside its pipeline, or with inputs attnkit does not know?"
            )
        return tuple(p for p in q_parts if p[1]), tuple(p for p in k_parts if p[1])

    def _token_grid(self, state: Any) -> Grid:
        if state.latent is None:
            raise AttnkitError(f"{self.site.name}: the image size of this forward is unknown; run the denoiser "
                               "inside the session (the session reads it from the denoiser's inputs).")
        rows, cols = self.site.grid(state.latent)
        frames = state.frames or 1
        return Grid(frames, rows // frames, cols)


_OPTIONS = ("dropout_p", "is_causal", "scale", "enable_gqa")


def _options(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The attention function's options (after the mask), given positionally or by name."""
    return dict(zip(_OPTIONS, args)) | {name: kwargs[name] for name in _OPTIONS if name in kwargs}


def _as_mask(mask: Any) -> torch.Tensor | None:
    """A stock attention mask broadcastable to (batch, heads, queries, keys)."""
    if mask is None:
        return None
    if mask.ndim == 2:  # (batch, keys)
        return mask[:, None, None, :]
    if mask.ndim == 3:  # (batch, queries or 1, keys)
        return mask[:, None]
    return mask


@functools.cache
def site_processor_class(stock: type) -> type[DispatchSiteProcessor]:
    """The generic site processor for `stock` processors, with `stock.__call__`'s signature."""

    @functools.wraps(stock.__call__)
    def __call__(self: DispatchSiteProcessor, attn: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.run(attn, args, kwargs)

    return type(f"Attnkit{stock.__name__}", (DispatchSiteProcessor,), {"__call__": __call__})
