"""Discovery of attention sites: where attention happens in a denoiser, typed by what it attends over.

A site is one attention module, addressed by its full processor name as diffusers' `attn_processors` keys it, and
typed by its family's description in `attnkit.families` (the UNet's down/mid/up blocks, a DiT's joint and
single-stream blocks, ...).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .errors import AttnkitError
from .families import KINDS, Family, Kind, component_of, denoiser_of, families, family_of

__all__ = ["Site", "SiteList", "KINDS", "choose", "sites", "denoiser_of",
           # earlier names: an architecture is a family
           "Architecture", "ARCHITECTURES", "architecture_of"]


@dataclass(frozen=True)
class Site:
    """One attention module of a denoiser (or of another model of its pipeline, such as a ControlNet).

    `index` is the 1-based position among sites of the same kind in execution order (the numbering of per-layer shape
    tables such as `attnkit inspect`'s). `stride` is how many latent pixels one token spans per side; `resolution` is
    the token grid (rows, cols) once an image size is known. `component` is where the model lies in its pipeline
    when it is not the denoiser ("controlnet"); the site's name then starts with it, so that names stay unique
    across the pipeline's models.
    """

    name: str
    kind: Kind
    block: str
    heads: int
    head_dim: int
    index: int
    stride: int
    family: Family = field(compare=False, repr=False)
    resolution: tuple[int, int] | None = None
    component: str = ""

    @property
    def architecture(self) -> str:
        """The name of the site's family."""
        return self.family.name

    @property
    def module_name(self) -> str:
        return self.name.removesuffix(".processor")

    @property
    def model_path(self) -> str:
        """The module's path inside its own model (the component's, or the denoiser's)."""
        return self.module_name[len(self.component) + 1:] if self.component else self.module_name

    @property
    def stage(self) -> str:
        return self.block.split(".")[0]

    def grid(self, latent: tuple[int, int]) -> tuple[int, int]:
        """Token grid of this site for a denoiser input of `latent` (rows, cols) latent pixels."""
        return self.family.token_grid(latent, self.stride)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "block": self.block, "heads": self.heads,
                "head_dim": self.head_dim}


class SiteList(tuple):
    """Sites in execution order, with selection by kind, block, resolution, index or any predicate."""

    def __new__(cls, items: Iterable[Site] = ()) -> SiteList:
        return super().__new__(cls, tuple(items))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self]

    def get(self, name: str) -> Site:
        """The site called `name` (with or without the `.processor` suffix)."""
        for site in self:
            if name in (site.name, site.module_name):
                return site
        close = difflib.get_close_matches(name, self.names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise AttnkitError(
            f"unknown site {name!r}: this model has {len(self)} sites named like {self[0].name!r}.{hint} "
            "List them with `attnkit.sites(pipe)` or `attnkit sites MODEL`."
        )

    def select(
        self,
        kind: str | Iterable[str] | None = None,
        block: str | Iterable[str] | None = None,
        resolution: int | tuple[int, int] | None = None,
        index: int | range | Iterable[int] | None = None,
        names: Iterable[str] | None = None,
        where: Callable[[Site], bool] | None = None,
    ) -> SiteList:
        """Sites matching every given filter; an error naming the filter when none match.

        `block` matches a stage ("up", "joint") or one block ("up.1", "joint.3"); `resolution` an int matches
        sites whose longer grid side is that many tokens; `index` is the per-kind 1-based `Site.index`.
        """
        chosen = list(self)
        filters: list[str] = []
        if names is not None:
            wanted = {self.get(n).name for n in ([names] if isinstance(names, str) else names)}
            chosen = [s for s in chosen if s.name in wanted]
            filters.append(f"names={sorted(wanted)}")
        if kind is not None:
            kinds = {kind} if isinstance(kind, str) else set(kind)
            unknown = kinds - set(KINDS)
            if unknown:
                raise AttnkitError(f"unknown site kind {sorted(unknown)}: kinds are {', '.join(KINDS)}.")
            chosen = [s for s in chosen if s.kind in kinds]
            filters.append(f"kind={sorted(kinds)}")
        if block is not None:
            blocks = {block} if isinstance(block, str) else set(block)
            chosen = [s for s in chosen if s.block in blocks or s.stage in blocks]
            filters.append(f"block={sorted(blocks)}")
        if resolution is not None:
            if any(s.resolution is None for s in self):
                raise AttnkitError(
                    "selection by resolution needs the image size: call `attnkit.sites(pipe, height=H, width=W)`."
                )
            chosen = [s for s in chosen if _resolution_matches(s.resolution, resolution)]
            filters.append(f"resolution={resolution}")
        if index is not None:
            indices = {index} if isinstance(index, int) else set(index)
            chosen = [s for s in chosen if s.index in indices]
            filters.append(f"index={sorted(indices)}")
        if where is not None:
            chosen = [s for s in chosen if where(s)]
            filters.append("where=<predicate>")
        if not chosen:
            raise AttnkitError(
                f"no site matches {', '.join(filters)}. This model has kinds {sorted({s.kind for s in self})}, "
                f"blocks {_summary(s.block for s in self)}"
                + (f", resolutions {_summary(str(s.resolution) for s in self)}" if self and self[0].resolution else "")
                + ". Loosen the selection."
            )
        return SiteList(chosen)

    def __repr__(self) -> str:
        return f"SiteList({len(self)} sites: {dict(Counter(s.kind for s in self))})"


def _resolution_matches(grid: tuple[int, int] | None, wanted: int | tuple[int, int]) -> bool:
    if grid is None:
        return False
    return tuple(grid) == tuple(wanted) if isinstance(wanted, tuple) else max(grid) == wanted


def _summary(values: Iterable[str]) -> str:
    return "[" + ", ".join(dict.fromkeys(values)) + "]"


def sites(
    obj: Any,
    *,
    component: str | None = None,
    height: int | None = None,
    width: int | None = None,
    latent: tuple[int, int] | None = None,
) -> SiteList:
    """Every attention site of a pipeline's denoiser (or of a denoiser model), in execution order; with
    `component`, of that model of the pipeline instead ("controlnet": its ControlNet, or every ControlNet of a
    `MultiControlNetModel`, one after the other).

    With `height`/`width` (pixels, needs a pipeline) or `latent` (latent pixels), each site's token-grid
    `resolution` is filled in.
    """
    if component:
        model = component_of(obj, component)
        nets = getattr(model, "nets", None)
        if isinstance(nets, torch.nn.ModuleList):  # a MultiControlNetModel holds its ControlNets in `nets`
            return SiteList(site for i in range(len(nets)) for site in
                            sites(obj, component=f"{component}.nets.{i}", height=height, width=width, latent=latent))
    else:
        model = denoiser_of(obj)
    family = family_of(model)
    prefix = f"{component}." if component else ""
    if (height is None) != (width is None):
        raise AttnkitError("give both `height` and `width`, or neither.")
    if height is not None:
        factor = getattr(obj, "vae_scale_factor", None)
        if factor is None:
            raise AttnkitError("`height`/`width` are pixel sizes and need a pipeline; for a bare model pass `latent=(h, w)`.")
        latent = (height // factor, width // factor)
    strides = family.block_stride(model) if family.block_stride is not None else None
    stride = family.stride_of(model)
    found: list[tuple[tuple, Site]] = []
    for module_name, module in model.named_modules():
        if not hasattr(module, "get_processor"):
            continue
        stage, block_index, kind, order = _site_of(family, module_name, module)
        block = f"{stage}.{block_index}"
        heads = int(module.heads)
        head_dim = int(getattr(module, "head_dim", None) or module.inner_dim // heads)
        site = Site(f"{prefix}{module_name}.processor", kind, block, heads, head_dim, 0,
                    stride if strides is None else strides[block], family, component=component or "")
        found.append(((order, block_index, _natural(module_name)), site))
    if not found:
        raise AttnkitError(f"{type(model).__name__} has no attention processors; nothing for attnkit to attach to.")
    ordered = [site for _, site in sorted(found, key=lambda item: item[0])]
    per_kind: dict[str, int] = {}
    numbered = []
    for site in ordered:
        per_kind[site.kind] = per_kind.get(site.kind, 0) + 1
        grid = site.grid(latent) if latent is not None else None
        numbered.append(replace(site, index=per_kind[site.kind], resolution=grid))
    return SiteList(numbered)


def choose(obj: Any, sites_: Iterable[Site] | None, selection: dict[str, Any],
           default: Callable[[Any], SiteList] | None = None, kinds: Iterable[str] | None = None) -> SiteList:
    """The sites a feature runs at: `sites_` as given; else `SiteList.select(**selection)` among the sites of `kinds`
    (all sites where the selection names kinds itself, or where none is of `kinds`); else `default(obj)`; else the
    sites of `kinds` (None: every site where a control can run, i.e. all but linear attention). Giving both sites
    and selection keywords is an error."""
    if sites_ is not None and selection:
        raise AttnkitError("give either explicit sites or selection keywords, not both.")
    if sites_ is not None:
        return SiteList(sites_)
    if not selection and default is not None:
        return default(obj)
    found = sites(obj)
    wanted = None if kinds is None else set(kinds)
    fitting = SiteList(site for site in found if (site.kind != "linear" if wanted is None else site.kind in wanted))
    if not selection:
        return fitting or found
    return (found if "kind" in selection or wanted is None else fitting or found).select(**selection)


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.]", name))


def _site_of(family: Family, module_name: str, module: torch.nn.Module) -> tuple[str, int, Kind, int]:
    """(stage, block index, kind, position of its stage) of an attention module; an error if no pattern matches."""
    stages = list(dict.fromkeys(p.stage for p in family.sites))
    for pattern in family.sites:
        match = re.fullmatch(pattern.pattern, module_name)
        if match:
            block = int(match.group(1)) if match.groups() else 0
            return pattern.stage, block, pattern.kind_of(module), stages.index(pattern.stage)
    raise AttnkitError(
        f"attention module {module_name!r} ({type(module).__name__}) lies outside the sites attnkit knows for "
        f"{family.name} ({', '.join(p.pattern for p in family.sites)}), so attnkit cannot tell its token layout. "
        f"Describe it in attnkit.families.{family.name}."
    )


#: Earlier names: an architecture is a family.
Architecture = Family
ARCHITECTURES: tuple[Family, ...] = families()
architecture_of = family_of
