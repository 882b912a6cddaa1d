"""`attnkit.kv.record` and `attnkit.kv.inject`: K/V controls on a pipeline's self-attention sites, one `with` block each.

    store = attnkit.kv.KVStore()
    with attnkit.kv.record(pipe, store):
        reference = pipe(prompt, generator=torch.Generator().manual_seed(0)).images[0]
    with attnkit.kv.inject(pipe, store, mode="extend"):
        image = pipe(other_prompt, generator=torch.Generator().manual_seed(0)).images[0]

The default sites are where appearance lives and layout is already set: the UNet's up-block self-attention (as in
the cross-frame attention of Rerender-A-Video and MasaCtrl's decoder-only control); on SD3 and Flux every joint and
single-stream site, whose image tokens are extended while text tokens stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import AttnkitError
from ..session import Session
from ..sites import Site, SiteList, architecture_of, choose, denoiser_of, sites
from .control import KVControl, Mode
from .store import KVStore

__all__ = ["DEFAULT_SELECTION", "default_sites", "record", "inject"]

#: Where K/V controls go unless sites are chosen: `SiteList.select` keywords per architecture.
DEFAULT_SELECTION: dict[str, dict[str, Any]] = {
    "unet": {"kind": "self", "block": "up"},
    "sd3": {"kind": "joint"},
    "flux": {"kind": ("joint", "single")},
}


def default_sites(pipe: Any) -> SiteList:
    """The sites K/V controls use on `pipe` when none are chosen."""
    architecture = architecture_of(denoiser_of(pipe)).name
    if architecture not in DEFAULT_SELECTION:
        raise AttnkitError(f"K/V injection has default sites on SD1.x, SD2, SDXL, SD3, SD3.5 and Flux.1 only; "
                           f"{type(pipe).__name__} is a {architecture} model: choose its sites explicitly "
                           "(`sites_=` or selection keywords such as kind='self').")
    return sites(pipe).select(**DEFAULT_SELECTION[architecture])


def _chosen(pipe: Any, sites_: Iterable[Site] | None, selection: dict[str, Any]) -> SiteList:
    chosen = choose(pipe, sites_, selection, default_sites)
    without_image_keys = [s.name for s in chosen if s.kind == "cross"]
    if without_image_keys:
        raise AttnkitError(f"K/V controls act on image keys, which cross-attention sites do not have: "
                           f"{', '.join(without_image_keys[:3])}{' ...' if len(without_image_keys) > 3 else ''}. "
                           "Select self-attention sites (kind='self').")
    return chosen


def record(pipe: Any, store: KVStore, sites_: Iterable[Site] | None = None, **selection: Any) -> Session:
    """A session that puts the image K/V of every selected site, step and CFG branch into `store`."""
    return Session(pipe, [(KVControl(record=[store]), _chosen(pipe, sites_, selection))])


def inject(
    pipe: Any,
    references: KVStore | Sequence[KVStore],
    mode: Mode = "extend",
    *,
    steps: tuple[int, int | None] = (0, None),
    weights: Sequence[float] | None = None,
    record: Sequence[KVStore] = (),
    sites_: Iterable[Site] | None = None,
    **selection: Any,
) -> Session:
    """A session that attends to the references' K/V at the selected sites in `steps` (see `KVControl` for the
    modes), and records this run's own K/V into `record` stores (a video's previous frame)."""
    load = [references] if isinstance(references, KVStore) else list(references)
    return Session(pipe, [(KVControl(load, record, mode, steps, weights), _chosen(pipe, sites_, selection))])
