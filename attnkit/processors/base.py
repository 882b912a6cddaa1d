"""The one processor attnkit installs per site, and the `Control` interface features implement.

A site processor runs the stock projection and output code of its architecture (replayed for the UNet, the stock
processor's own code for every transformer: `processors.dispatch`), and in between hands one
`AttentionCall` to every active control: before the attention kernel (to change q/k/v or restrict the mask, or to
supply the kernel itself) and after it (to observe the output and its log-sum-exp). Several features active on the
same site therefore share one attention computation instead of wrapping each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import ops
from ..errors import AttnkitError
from ..sites import Site
from ..state import State

__all__ = ["TokenLayout", "AttentionCall", "Control", "ModuleCall", "SiteProcessor", "sdpa"]

Part = str  # "image" or "text"
Kernel = Callable[["AttentionCall"], tuple[torch.Tensor, torch.Tensor | None]]  # lse None: no single softmax


@dataclass(frozen=True)
class TokenLayout:
    """Which parts (image, text) lie where along the query and key axes of one call, in order."""

    queries: tuple[tuple[Part, int], ...]
    keys: tuple[tuple[Part, int], ...]

    def span(self, axis: str, part: Part) -> slice:
        """Slice of `part` along `axis` ("queries" or "keys"); an error if this call has no such part."""
        start = 0
        for name, length in getattr(self, axis):
            if name == part:
                return slice(start, start + length)
            start += length
        raise AttnkitError(f"this attention call has no {part} {axis} (layout {getattr(self, axis)}).")


@dataclass
class AttentionCall:
    """One attention computation at one site, as controls see it: q, k, v are (batch, heads, tokens, head_dim).

    `layout` is the first batch item's; `item_layouts` gives every item's where items differ (their texts have
    lengths of their own, padded to one call), else it is None (see `layouts`)."""

    site: Site
    state: State
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: TokenLayout
    grid: tuple[int, int] | None
    scale: float
    mask: torch.Tensor | None = None  # a property (below): may be built only when read
    item_layouts: tuple[TokenLayout, ...] | None = None
    kernel: Kernel | None = None
    kernel_owner: str | None = field(default=None, repr=False)
    _mask: torch.Tensor | None = field(default=None, init=False, repr=False)
    _build_mask: Callable[[], torch.Tensor] | None = field(default=None, init=False, repr=False)
    _mask_tag: object = field(default=None, init=False, repr=False)

    def layouts(self) -> tuple[TokenLayout, ...]:
        """The layout of every batch item."""
        return self.item_layouts or (self.layout,) * self.q.shape[0]

    def _map_keys(self, change: Callable[[tuple[tuple[Part, int], ...]], tuple[tuple[Part, int], ...]]) -> None:
        """Apply `change` to the key parts of every item's layout."""
        self.layout = TokenLayout(self.layout.queries, change(self.layout.keys))
        if self.item_layouts is not None:
            self.item_layouts = tuple(TokenLayout(item.queries, change(item.keys)) for item in self.item_layouts)

    def set_mask(self, build: Callable[[], torch.Tensor], tag: object) -> None:
        """Set a mask that is built only if something reads `mask` (a dense kernel, `probabilities`), so that a
        control whose own kernel needs no dense mask (the regional split) does not pay its memory. `mask_is(tag)`
        holds until another control changes the mask."""
        self._mask, self._build_mask, self._mask_tag = None, build, tag

    def mask_is(self, tag: object) -> bool:
        """Whether the mask is still the one `set_mask(..., tag)` set, unchanged by any control since."""
        return tag is not None and self._mask_tag is tag

    @property
    def has_mask(self) -> bool:
        """Whether any mask is set, without building one that is not built yet."""
        return self._build_mask is not None or self._mask is not None

    def restrict(self, allowed: torch.Tensor) -> None:
        """Allow attention only where `allowed` (bool, broadcastable to (B, H, Lq, Lk)) is True, on top of any mask."""
        if not self.has_mask:
            self.mask = allowed
        elif self.mask.dtype == torch.bool:
            self.mask = self.mask & allowed
        else:
            self.mask = self.mask.masked_fill(~allowed, float("-inf"))

    def extend(self, part: Part, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append keys and values of `part` (e.g. "reference": another image's tokens) after this call's keys.

        Every query may attend to them under the mask set so far (`restrict` narrows it); the layout, the mask and
        `probabilities` cover the longer key axis, so controls that run later see one consistent call."""
        self._check_keys("extra", k, v)
        self.k = torch.cat([self.k, k.to(self.k.dtype)], dim=2)
        self.v = torch.cat([self.v, v.to(self.v.dtype)], dim=2)
        count = k.shape[2]
        self._map_keys(lambda keys: keys + ((part, count),))
        if self._build_mask is not None:
            build = self._build_mask
            self._build_mask, self._mask_tag = (lambda: ops.allow_extra_keys(build(), count)), None
        elif self._mask is not None:
            self.mask = ops.allow_extra_keys(self._mask, count)

    def replace(self, part: Part, k: torch.Tensor, v: torch.Tensor) -> None:
        """Put `k` and `v` in place of `part`'s keys and values; the number of tokens may change where no mask is
        set yet (a mask says which query sees which of the old tokens, which would no longer hold)."""
        span = self.layout.span("keys", part)
        if any(item.span("keys", part) != span for item in self.layouts()):
            raise AttnkitError(f"{self.site.name}: the {part} keys lie elsewhere in each batch item of this call (texts "
                               "of different lengths), so attnkit cannot replace them; select other sites.")
        old = span.stop - span.start
        if self.has_mask and k.shape[2] != old:
            raise AttnkitError(
                f"{self.site.name}: a mask is set on this call, so the {part} keys cannot change from {old} to "
                f"{k.shape[2]} tokens; attach the control that replaces them before the one that masks."
            )
        self._check_keys("replacement", k, v)
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        self.k = torch.cat([self.k[:, :, : span.start], k, self.k[:, :, span.stop :]], dim=2)
        self.v = torch.cat([self.v[:, :, : span.start], v, self.v[:, :, span.stop :]], dim=2)
        self._map_keys(lambda keys: tuple((name, k.shape[2] if name == part else length) for name, length in keys))

    def _check_keys(self, what: str, k: torch.Tensor, v: torch.Tensor) -> None:
        if k.shape[:2] != self.k.shape[:2] or k.shape[-1] != self.k.shape[-1] or v.shape != k.shape:
            raise AttnkitError(
                f"{self.site.name}: {what} keys/values must be (batch, heads, tokens, head_dim) = "
                f"({self.k.shape[0]}, {self.k.shape[1]}, any, {self.k.shape[3]}), got {tuple(k.shape)} and "
                f"{tuple(v.shape)}."
            )

    def use_kernel(self, kernel: Kernel, owner: str) -> None:
        """Compute this call's attention with `kernel` (returns output and lse); one owner per call."""
        if self.kernel is not None and self.kernel_owner != owner:
            raise AttnkitError(
                f"two features want to compute attention at {self.site.name}: {self.kernel_owner!r} and {owner!r}. "
                "Select disjoint sites or steps for them."
            )
        self.kernel, self.kernel_owner = kernel, owner

    def probabilities(self, lse: torch.Tensor, queries: Part | slice, keys: Part | slice) -> torch.Tensor:
        """Exact attention probabilities (B, H, q, k) of a block of queries over a block of keys, via the lse."""
        rows = self.layout.span("queries", queries) if isinstance(queries, str) else queries
        cols = self.layout.span("keys", keys) if isinstance(keys, str) else keys
        mask = self.mask
        if mask is not None:
            mask = mask[..., rows if mask.shape[-2] != 1 else slice(None), cols]
        return ops.probabilities(self.q[:, :, rows], self.k[:, :, cols], lse[:, :, rows], self.scale, mask)


def _read_mask(call: AttentionCall) -> torch.Tensor | None:
    if call._build_mask is not None:
        call._mask, call._build_mask = call._build_mask(), None
    return call._mask


def _write_mask(call: AttentionCall, mask: torch.Tensor | None) -> None:
    call._mask, call._build_mask, call._mask_tag = mask, None, None


# A property after the dataclass is made, so that `mask` stays an __init__ (and `dataclasses.replace`) argument.
AttentionCall.mask = property(_read_mask, _write_mask, doc="The attention mask (bool True = attend, or additive), "
                              "broadcastable to (B, H, Lq, Lk), or None; built on first read if set by `set_mask`.")


@dataclass
class ModuleCall:
    """One forward of a module whose type a control names in `modules`, as the control sees it: the module's name in
    its pipeline (as sites are named), the module, its input `x` and any further arguments."""

    name: str
    module: torch.nn.Module
    x: torch.Tensor
    args: tuple
    kwargs: dict
    state: State


class Control:
    """One feature's behaviour at the sites it was installed on; override `before` and/or `after`.

    Controls keep nothing per call on themselves beyond what they aggregate: the step, CFG branches and frame come
    from `call.state`, which the session fills from the pipeline. A control that names module types in `modules`
    also sees every forward of such a module in the models its sites lie in (all the session's models if it has no
    sites), and may replace its output (`module_forward`): GroupNorms that share statistics between images
    (StyleAligned), LoRA layers whose adapters apply to some tokens only (a LoRA per region).
    """

    name: str = "control"
    needs_lse: bool = False
    masks: bool = False  # may restrict `call.mask` or supply a kernel: refused under context parallelism
    modules: tuple[type, ...] = ()

    def before(self, call: AttentionCall) -> None:
        """Change `call.q/k/v`, restrict `call.mask`, or `call.use_kernel(...)` before attention runs."""

    def after(self, call: AttentionCall, out: torch.Tensor, lse: torch.Tensor | None) -> None:
        """Observe the attention output (B, H, Lq, D) and its lse (B, H, Lq), given when `needs_lse`."""

    def module_forward(self, call: ModuleCall) -> torch.Tensor | None:
        """The module's output in place of its own, or None to keep it (called only for types in `modules`)."""
        return None


class SiteProcessor:
    """Base of the per-architecture processors: runs the active controls around one shared attention kernel."""

    def __init__(self, site: Site, original: object):
        self.site = site
        self.original = original
        self.entries: list[tuple[Control, State]] = []

    def attend(self, call: AttentionCall, plain: Callable[[AttentionCall], torch.Tensor]) -> torch.Tensor:
        """Attention output (B, H, Lq, D) for `call`; `plain` is the architecture's stock kernel, used when no
        control needs a mask, an lse or its own kernel, so that output stays bit-identical to diffusers'."""
        stock_mask = call.mask
        entries = self.active_entries()
        for control, state in entries:
            call.state = state
            control.before(call)
        needs_lse = any(control.needs_lse for control, _ in entries)
        lse = None
        if call.kernel is not None:
            self.own_kernel(f"its own kernel ({call.kernel_owner})")
            out, lse = call.kernel(call)
            if lse is None and needs_lse:
                wanting = [control.name for control, _ in entries if control.needs_lse]
                raise AttnkitError(
                    f"{self.site.name}: {call.kernel_owner!r} computes attention with a kernel that has no single "
                    f"log-sum-exp, which {wanting} need; select disjoint sites or steps for them.")
        elif needs_lse or call._build_mask is not None or call._mask is not stock_mask:
            self.own_kernel("the log-sum-exp" if needs_lse else "an attention mask")
            out, lse = ops.attention(call.q, call.k, call.v, call.mask, call.scale)
        else:
            out = plain(call)
        for control, state in entries:
            call.state = state
            control.after(call, out, lse)
        return out

    def active_entries(self) -> list[tuple[Control, State]]:
        """The controls that see the current call: all of them, unless a session runs a pass of its own
        (`State.exclusive`, e.g. concept tokens through the blocks), whose calls only that session's controls see."""
        own = [(control, state) for control, state in self.entries if state.exclusive]
        return own or self.entries

    def own_kernel(self, need: str) -> None:
        """Called when a control's `need` takes attention off the stock kernel; architectures whose stock kernel
        can be another backend say so here."""

    def grid_for(self, image_tokens: int) -> tuple[int, int] | None:
        """Token grid (rows, cols) of the image part, from the latent size the session saw; None if unknown."""
        latent = self.entries[0][1].latent if self.entries else None
        if latent is None:
            return None
        rows, cols = self.site.grid(latent)
        if rows * cols != image_tokens:
            raise AttnkitError(
                f"{self.site.name} got {image_tokens} image tokens, but a {latent[0]}x{latent[1]} latent at stride "
                f"{self.site.stride} gives a {rows}x{cols} grid. Was the denoiser called outside its pipeline?"
            )
        return rows, cols

    def __repr__(self) -> str:
        names = [control.name for control, _ in self.entries]
        return f"{type(self).__name__}({self.site.name}, controls={names}, original={type(self.original).__name__})"


def sdpa(call: AttentionCall) -> torch.Tensor:
    """The stock kernel of `AttnProcessor2_0`."""
    return F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=call.mask, dropout_p=0.0, is_causal=False)
