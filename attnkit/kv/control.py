"""The K/V control: attends to keys and values another image had at the same site and step, and records its own.

Replacing or extending a self-attention layer's keys and values with a reference's makes the output follow the
reference: MasaCtrl (Cao et al., 2023) and StyleAligned (Hertz et al., 2023) for single images, the cross-frame
attention of Text2Video-Zero (Khachatryan et al., 2023: the first frame) and Rerender-A-Video (Yang et al., 2023:
first and previous frame) for video. Only the image tokens' K/V are stored and changed; text tokens of joint
attention (SD3, Flux) stay as they are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import AttnkitError
from ..processors import AttentionCall, Control
from ..state import StepRange, in_steps, step_range
from .store import KVStore

__all__ = ["KVControl", "Mode", "MODES"]

Mode = Literal["replace", "extend", "blend"]
MODES: tuple[str, ...] = ("replace", "extend", "blend")


class KVControl(Control):
    """At each selected site and step: load the references' image K/V from `load` stores and use them by `mode`,
    and put this call's own image K/V (as they were before any change) into the `record` stores.

    - `replace`: the image keys/values become the references' (concatenated in `load` order);
    - `extend`: the references' are appended after the call's own keys (own + first + previous frame);
    - `blend`: the image keys/values become the `weights`-weighted sum of the references (same token count).

    `steps` = [start, end) limits loading (end None: to the last step); recording happens at every step. A
    reference entry with one item per branch serves every item of that branch in the batch.
    """

    name = "kv"

    def __init__(self, load: Sequence[KVStore] = (), record: Sequence[KVStore] = (), mode: Mode = "extend",
                 steps: StepRange = (0, None), weights: Sequence[float] | None = None):
        if mode not in MODES:
            raise AttnkitError(f"mode={mode!r}: choose one of {', '.join(MODES)}.")
        if not load and not record:
            raise AttnkitError("a K/V control needs stores to load from (`load`) or to record into (`record`).")
        if mode == "blend" and (weights is None or len(weights) != len(load) or len(load) < 2):
            raise AttnkitError(f"mode='blend' interpolates two or more references: give as many `weights` as `load` "
                               f"stores (got {len(load)} stores, weights {weights}).")
        if mode != "blend" and weights is not None:
            raise AttnkitError(f"`weights` are for mode='blend'; mode={mode!r} takes none.")
        self.load, self.record, self.mode = list(load), list(record), mode
        self.steps, self.weights = step_range(steps), None if weights is None else list(weights)

    def before(self, call: AttentionCall) -> None:
        step = call.state.step
        if step is None:
            raise AttnkitError(f"{call.site.name}: K/V stores are keyed by the pipeline's denoising step, and this "
                               "denoiser call has none. Run the pipeline (not the bare denoiser) inside the session.")
        image = call.layout.span("keys", "image")
        own_k, own_v = call.k[:, :, image], call.v[:, :, image]
        references = [_batched(store, call, step) for store in self.load] if in_steps(self.steps, step) else []
        for store in self.record:
            for branch in dict.fromkeys(call.state.branches):
                items = _rows(call.state.batch_index(branch))
                store.put(call.site.name, step, branch, own_k[items], own_v[items])
        if not references:
            return
        sizes = {ref_k.shape[2] for ref_k, _ in references}
        if sizes != {own_k.shape[2]}:
            raise AttnkitError(
                f"{call.site.name}: the reference has {sorted(sizes)} image tokens here, this run {own_k.shape[2]}: "
                "it was recorded at another size. Record the reference at this run's height and width."
            )
        if self.mode == "blend":
            k = sum(w * ref_k for w, (ref_k, _) in zip(self.weights, references))
            v = sum(w * ref_v for w, (_, ref_v) in zip(self.weights, references))
        else:
            k = torch.cat([ref_k for ref_k, _ in references], dim=2)
            v = torch.cat([ref_v for _, ref_v in references], dim=2)
        if self.mode == "extend":
            call.extend("reference", k, v)
        else:
            call.replace("image", k, v)


def _rows(items: list[int]) -> slice | list[int]:
    """Batch rows as a slice where they are contiguous (CFG halves are), so that the store's copy is the only one."""
    return slice(items[0], items[-1] + 1) if items == list(range(items[0], items[-1] + 1)) else items


def _batched(store: KVStore, call: AttentionCall, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference K/V for every batch item of this call, in batch order, on the call's device and dtype."""
    entries = {}
    for branch in dict.fromkeys(call.state.branches):
        k, v = store.get(call.site.name, step, branch)
        wanted = len(call.state.batch_index(branch))
        if k.shape[0] not in (1, wanted):
            raise AttnkitError(
                f"{call.site.name}: the reference has {k.shape[0]} item(s) in branch {branch!r}, this call {wanted}; "
                "record the reference with one image per prompt, or with this run's batch."
            )
        entries[branch] = (k, v)
    seen: Counter[str] = Counter()
    ks, vs = [], []
    for branch in call.state.branches:
        k, v = entries[branch]
        item = seen[branch] if k.shape[0] > 1 else 0
        seen[branch] += 1
        ks.append(k[item: item + 1])
        vs.append(v[item: item + 1])
    return torch.cat(ks).to(call.k.device, call.k.dtype), torch.cat(vs).to(call.v.device, call.v.dtype)
