"""`attnkit.kv.record` and `attnkit.kv.inject`: K/V controls on a pipeline's self-attention sites, one `with` block each.

    store = attnkit.kv.KVStore()
    with attnkit.kv.record(pipe, store):
        reference = pipe(prompt, generator=torch.Generator().manual_seed(0)).images[0]
    with attnkit.kv.inject(pipe, store, mode="extend"):
        image = pipe(other_prompt, generator=torch.Generator().manual_seed(0)).images[0]

The default sites are where image tokens attend to image tokens, in the stage where appearance is drawn once the
layout is set where the family has one: the UNet's up-block self-attention (as in the cross-frame attention of
Rerender-A-Video and MasaCtrl's decoder-only control); on SD3 and Flux every joint and single-stream site, whose image
tokens are extended while text tokens stay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import AttnkitError
from ..families import family_of
from ..session import Session
from ..sites import Site, SiteList, choose, sites
from .control import KVControl, Mode
from .store import KVStore

__all__ = ["IMAGE_KINDS", "default_sites", "chosen_sites", "record", "inject"]

#: Site kinds where image tokens attend to image tokens: where K/V controls keep and lend image keys by default.
IMAGE_KINDS: tuple[str, ...] = ("self", "joint", "single")


def default_sites(pipe: Any) -> SiteList:
    """The sites K/V controls use on `pipe` when none are chosen: those of `IMAGE_KINDS`, in the family's decoder
    stage where it has one."""
    found = sites(pipe)
    kinds = [kind for kind in IMAGE_KINDS if any(site.kind == kind for site in found)]
    if not kinds:
        raise AttnkitError(f"{type(pipe).__name__} has no site where image tokens attend to image tokens (kinds "
                           f"{', '.join(IMAGE_KINDS)}; it has {', '.join(sorted({s.kind for s in found}))}), so K/V "
                           "injection has no image keys to lend or take there.")
    return found.select(kind=kinds, block=family_of(pipe).decoder)


def chosen_sites(pipe: Any, sites_: Iterable[Site] | None, selection: dict[str, Any]) -> SiteList:
    """The sites a K/V control runs at: `sites_`, the selection, or `default_sites`; an error for sites without
    image keys."""
    chosen = choose(pipe, sites_, selection, default_sites)
    without_image_keys = [s.name for s in chosen if s.kind == "cross"]
    if without_image_keys:
        raise AttnkitError(f"K/V controls act on image keys, which cross-attention sites do not have: "
                           f"{', '.join(without_image_keys[:3])}{' ...' if len(without_image_keys) > 3 else ''}. "
                           "Select self-attention sites (kind='self').")
    return chosen


def record(pipe: Any, store: KVStore, sites_: Iterable[Site] | None = None, **selection: Any) -> Session:
    """A session that puts the image K/V of every selected site, step and CFG branch into `store`."""
    return Session(pipe, [(KVControl(record=[store]), chosen_sites(pipe, sites_, selection))])


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
    return Session(pipe, [(KVControl(load, record, mode, steps, weights), chosen_sites(pipe, sites_, selection))])
