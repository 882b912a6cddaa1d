"""The K/V control: attends to keys and values another image had at the same site and step, and records its own.

Replacing or extending a self-attention layer's keys and values with a reference's makes the output follow the
reference: MasaCtrl (Cao et al., 2023) and StyleAligned (Hertz et al., 2023) for single images, the cross-frame
attention of Text2Video-Zero (Khachatryan et al., 2023: the first frame) and Rerender-A-Video (Yang et al., 2023:
first and previous frame) for video (`attnkit.kv.methods` sets each one up as its authors' code does). Only the image
tokens' K/V are stored and changed; text tokens of joint attention (SD3, Flux) stay as they are.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import AttnkitError
from ..processors import AttentionCall, Control, ModuleCall
from ..state import State, StepRange, in_steps, step_range
from .store import KVStore

__all__ = ["ADAIN", "FOREGROUND", "KVControl", "Mode", "MODES", "adain"]

Mode = Literal["replace", "extend", "blend"]
MODES: tuple[str, ...] = ("replace", "extend", "blend")
#: What AdaIN can normalise to a reference's statistics: the image tokens' queries, keys and values.
ADAIN: tuple[str, ...] = ("queries", "keys", "values")
#: The two foreground masks of mask-guided mutual self-attention, in order: the reference's keys, this run's queries.
FOREGROUND: tuple[str, str] = ("source", "target")
#: Added to the variance before its square root, as StyleAligned's AdaIN does.
_ADAIN_EPS = 1e-5


def statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of `x` (items, heads, tokens, dim) over its tokens: the unbiased variance plus 1e-5, square
    rooted (StyleAligned's AdaIN statistics)."""
    return x.mean(-2, keepdim=True), (x.var(-2, keepdim=True) + _ADAIN_EPS).sqrt()


def adain(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """`x` with its per-item, per-head, per-channel statistics over the tokens replaced by (`mean`, `std`)."""
    own_mean, own_std = statistics(x)
    return (x - own_mean) / own_std * std + mean


class KVControl(Control):
    """At each selected site and step: load the references' image K/V from `load` stores and use them by `mode`,
    and put this call's own image K/V (as they were before any change) into the `record` stores.

    - `replace`: the image keys/values become the references' (concatenated in `load` order);
    - `extend`: the references' are appended after the call's own keys (own + first + previous frame);
    - `blend`: the image keys/values become the `weights`-weighted sum of the references (same token count).

    `steps` = [start, end) limits loading (end None: to the last step), or `when(step, steps in the run)` decides it;
    recording happens at every step. A reference entry with one item per branch serves every item of that branch in
    the batch. `adain` names what is first normalised to the reference's statistics over its tokens (StyleAligned's
    AdaIN of "queries" and "keys"; one reference); `keys_scale` multiplies the reference's keys (StyleAligned's
    `shared_score_scale`: a temperature on the reference's logits). With `shared_group_norm`, every GroupNorm of the
    model normalises each image over its own features and the reference's together (StyleAligned's shared GroupNorm),
    and recording keeps each GroupNorm's statistics. `foreground` = (source, target) binary masks (height x width,
    any size) make `replace` mask-guided (MasaCtrl's `MutualSelfAttentionControlMask`): a query in the target's
    foreground attends to the reference's foreground keys only, one in its background to the background keys.
    """

    name = "kv"

    def __init__(self, load: Sequence[KVStore] = (), record: Sequence[KVStore] = (), mode: Mode = "extend",
                 steps: StepRange = (0, None), weights: Sequence[float] | None = None, *,
                 when: Callable[[int, int | None], bool] | None = None, adain: Sequence[str] = (),
                 keys_scale: float = 1.0, shared_group_norm: bool = False,
                 foreground: tuple[torch.Tensor, torch.Tensor] | None = None):
        if mode not in MODES:
            raise AttnkitError(f"mode={mode!r}: choose one of {', '.join(MODES)}.")
        if not load and not record:
            raise AttnkitError("a K/V control needs stores to load from (`load`) or to record into (`record`).")
        if mode == "blend" and (weights is None or len(weights) != len(load) or len(load) < 2):
            raise AttnkitError(f"mode='blend' interpolates two or more references: give as many `weights` as `load` "
                               f"stores (got {len(load)} stores, weights {weights}).")
        if mode != "blend" and weights is not None:
            raise AttnkitError(f"`weights` are for mode='blend'; mode={mode!r} takes none.")
        unknown = sorted(set(adain) - set(ADAIN))
        if unknown:
            raise AttnkitError(f"adain={list(adain)}: AdaIN normalises {', '.join(ADAIN)}; {unknown} is none of them.")
        if adain and (len(load) != 1 or mode == "blend"):
            raise AttnkitError("AdaIN normalises to one reference's statistics: load one store, with mode 'extend' or "
                               "'replace'.")
        if not math.isfinite(keys_scale) or keys_scale <= 0:
            raise AttnkitError(f"keys_scale={keys_scale}: give a finite number above 0 (1: the reference's keys as "
                               "they are).")
        if shared_group_norm and len(load) > 1:
            raise AttnkitError("a shared GroupNorm normalises an image together with one reference: load one store.")
        if foreground is not None and (mode != "replace" or len(load) != 1):
            raise AttnkitError("foreground masks guide which reference keys each query sees in place of its own: "
                               "load one store, with mode 'replace'.")
        self.load, self.record, self.mode = list(load), list(record), mode
        self.steps, self.weights = step_range(steps), None if weights is None else list(weights)
        self.when, self.adain, self.keys_scale = when, tuple(adain), float(keys_scale)
        self.modules = (torch.nn.GroupNorm,) if shared_group_norm else ()
        self.foreground = None if foreground is None else tuple(_binary(m, n) for m, n in zip(foreground, FOREGROUND))
        self.masks = self.foreground is not None
        self._allowed: dict[tuple, torch.Tensor] = {}

    def loading(self, step: int, steps: int | None) -> bool:
        """Whether references are loaded at `step` of a run of `steps` loop iterations."""
        return self.when(step, steps) if self.when is not None else in_steps(self.steps, step)

    def before(self, call: AttentionCall) -> None:
        step = call.state.step
        if step is None:
            raise AttnkitError(f"{call.site.name}: K/V stores are keyed by the pipeline's denoising step, and this "
                               "denoiser call has none. Run the pipeline (not the bare denoiser) inside the session.")
        image = call.layout.span("keys", "image")
        queries = call.layout.span("queries", "image")
        own_k, own_v = call.k[:, :, image], call.v[:, :, image]
        loading = self.load and self.loading(step, call.state.num_steps)
        references = [_batched(store, call, step, "queries" in self.adain) for store in self.load] if loading else []
        for store in self.record:
            for branch in dict.fromkeys(call.state.branches):
                items = _rows(call.state.batch_index(branch))
                store.put(call.site.name, step, branch, own_k[items], own_v[items],
                          statistics(call.q[items][:, :, queries]))
        if not references:
            return
        sizes = {reference[0].shape[2] for reference in references}
        if sizes != {own_k.shape[2]}:
            raise AttnkitError(
                f"{call.site.name}: the reference has {sorted(sizes)} image tokens here, this run {own_k.shape[2]}: "
                "it was recorded at another size. Record the reference at this run's height and width."
            )
        if self.adain:
            self._adain(call, references[0], queries, image)
        if self.mode == "blend":
            k = sum(w * ref_k for w, (ref_k, *_) in zip(self.weights, references))
            v = sum(w * ref_v for w, (_, ref_v, *_) in zip(self.weights, references))
        else:
            k = torch.cat([ref_k for ref_k, *_ in references], dim=2)
            v = torch.cat([ref_v for _, ref_v, *_ in references], dim=2)
        if self.keys_scale != 1.0:
            k = k * self.keys_scale
        if self.mode == "extend":
            call.extend("reference", k, v)
        else:
            call.replace("image", k, v)
        if self.foreground is not None:
            call.restrict(self._guided(call, queries, call.layout.span("keys", "image")))

    def _guided(self, call: AttentionCall, queries: slice, keys: slice) -> torch.Tensor:
        """Which keys each query may see under the foreground masks at this call's grid (nearest-neighbour, as
        MasaCtrl resizes them): foreground queries the reference's foreground keys, background ones its background
        keys; text tokens see and are seen as before. Built once per shape and cached."""
        shape = (call.grid, call.q.shape[2], call.k.shape[2], queries.start, keys.start, call.q.device)
        if shape not in self._allowed:
            if call.grid is None:
                raise AttnkitError(f"{call.site.name}: foreground masks need the image tokens' grid, which this call "
                                   "does not have.")
            source, target = (F.interpolate(m[None, None], size=call.grid, mode="nearest").flatten().bool()
                              for m in self.foreground)
            for name, mask in zip(FOREGROUND, (source, target)):
                if mask.all() or not mask.any():
                    raise AttnkitError(
                        f"{call.site.name}: the {name} mask is all {'foreground' if mask.all() else 'background'} at "
                        f"this layer's {call.grid[0]}x{call.grid[1]} tokens, so some queries would have no key to "
                        "attend to. Give masks with both parts at least a few latent pixels wide, or a start_layer "
                        "whose layers are finer.")
            allowed = torch.ones(call.q.shape[2], call.k.shape[2], dtype=torch.bool, device=call.q.device)
            allowed[queries, keys] = target.to(allowed.device)[:, None] == source.to(allowed.device)[None, :]
            self._allowed[shape] = allowed
        return self._allowed[shape]

    def module_forward(self, call: ModuleCall) -> torch.Tensor | None:
        """The GroupNorm's output with each item's group statistics taken over its features and the reference's
        together (equal counts: the mean of the two means, the mean of the two variances plus the variance of the
        means), where references are loaded; records the statistics into the `record` stores."""
        step, module = call.state.step, call.module
        if step is None:
            return None
        items = call.x.reshape(call.x.shape[0], module.num_groups, -1)
        mean, var = items.mean(-1), items.var(-1, unbiased=False)
        for store in self.record:
            for branch in dict.fromkeys(call.state.branches):
                rows = _rows(call.state.batch_index(branch))
                store.put_norm(call.name, step, branch, mean[rows], var[rows])
        if not (self.load and self.loading(step, call.state.num_steps)):
            return None
        ref_mean, ref_var = _per_item(call.state, call.name, lambda branch: self.load[0].norm_statistics(
            call.name, step, branch), mean.device, mean.dtype)
        joint_mean = (mean + ref_mean) / 2
        joint_var = (var + ref_var) / 2 + (mean - ref_mean) ** 2 / 4
        normalised = (items - joint_mean[..., None]) / (joint_var[..., None] + module.eps).sqrt()
        out = normalised.reshape(call.x.shape)
        if module.affine:
            shape = (1, -1) + (1,) * (call.x.dim() - 2)
            out = out * module.weight.reshape(shape) + module.bias.reshape(shape)
        return out.to(call.x.dtype)

    def _adain(self, call: AttentionCall, reference: tuple[torch.Tensor, ...], queries: slice, image: slice) -> None:
        """The call's image queries, keys and values (as `adain` names them) normalised to the reference's
        statistics over its tokens."""
        ref_k, ref_v, *query_statistics = reference
        if "queries" in self.adain:
            call.q = _with(call.q, queries, adain(call.q[:, :, queries], *query_statistics))
        if "keys" in self.adain:
            call.k = _with(call.k, image, adain(call.k[:, :, image], *statistics(ref_k)))
        if "values" in self.adain:
            call.v = _with(call.v, image, adain(call.v[:, :, image], *statistics(ref_v)))


def _with(x: torch.Tensor, part: slice, values: torch.Tensor) -> torch.Tensor:
    """`x` with its tokens `part` (axis 2) replaced by `values`, as a new tensor."""
    return torch.cat([x[:, :, : part.start], values.to(x.dtype), x[:, :, part.stop :]], dim=2)


def _rows(items: list[int]) -> slice | list[int]:
    """Batch rows as a slice where they are contiguous (CFG halves are), so that the store's copy is the only one."""
    return slice(items[0], items[-1] + 1) if items == list(range(items[0], items[-1] + 1)) else items


def _batched(store: KVStore, call: AttentionCall, step: int, queries: bool) -> tuple[torch.Tensor, ...]:
    """The reference's K and V (and with `queries`, its query statistics: mean, std) for every batch item of this
    call, in batch order, on the call's device and dtype."""
    def entry(branch: str) -> tuple[torch.Tensor, ...]:
        found = store.get(call.site.name, step, branch)
        return (*found, *store.query_statistics(call.site.name, step, branch)) if queries else found

    return _per_item(call.state, call.site.name, entry, call.k.device, call.k.dtype)


def _per_item(state: State, where: str, entry: Callable[[str], tuple[torch.Tensor, ...]], device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A reference's tensors (`entry(branch)`, items first) for every batch item, in batch order: an entry with one
    item serves every item of its branch, one with as many items as the branch has serves them in order."""
    entries = {}
    for branch in dict.fromkeys(state.branches):
        found = entry(branch)
        wanted = len(state.batch_index(branch))
        if found[0].shape[0] not in (1, wanted):
            raise AttnkitError(
                f"{where}: the reference has {found[0].shape[0]} item(s) in branch {branch!r}, this call "
                f"{wanted}; record the reference with one image per prompt, or with this run's batch."
            )
        entries[branch] = found
    seen: Counter[str] = Counter()
    rows: list[tuple[torch.Tensor, ...]] = []
    for branch in state.branches:
        found = entries[branch]
        item = seen[branch] if found[0].shape[0] > 1 else 0
        seen[branch] += 1
        rows.append(tuple(t[item: item + 1] for t in found))
    return tuple(torch.cat(parts).to(device, dtype) for parts in zip(*rows))


def _binary(mask: object, name: str) -> torch.Tensor:
    """A mask (tensor, array or PIL image; height x width) as a float 0/1 tensor; an error unless it is binary."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L")) > 127
    tensor = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if tensor.dim() != 2:
        raise AttnkitError(f"the {name} mask must be height x width, got shape {tuple(tensor.shape)}.")
    if not bool(((tensor == 0) | (tensor == 1)).all()):
        raise AttnkitError(f"the {name} mask must be binary (0/1, bool, or a black and white image) and has other "
                           "values: threshold it first, e.g. mask > 0.5.")
    return tensor.float()
