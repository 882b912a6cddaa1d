"""Where K/V controls run: the sites where image tokens attend to image tokens, by default in the family's decoder
stage (the UNet's up blocks) where it has one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import AttnkitError
from ..families import family_of
from ..sites import Site, SiteList, choose, sites

__all__ = ["IMAGE_KINDS", "chosen_sites", "default_sites"]

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
