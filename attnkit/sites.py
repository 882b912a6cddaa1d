"""Discovery of attention sites: where attention happens in a denoiser, typed by what it attends over.

A site is one attention module, addressed by its full processor name as diffusers' `attn_processors` keys it.
UNets (SD1.x, SD2, SDXL) are typed here, by their down/mid/up blocks; every transformer (SD3, Flux and the other
DiTs) by its family's description in `attnkit.families`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from diffusers import UNet2DConditionModel

from .errors import AttnkitError
from .families import DiT, dit_of, dits

__all__ = ["Site", "SiteList", "Architecture", "ARCHITECTURES", "KINDS", "choose", "sites", "denoiser_of",
           "architecture_of"]

Kind = Literal["self", "cross", "joint", "single", "self2", "text", "linear"]
#: "text": text over text (a DiT's caption refiner); "linear": attention without a softmax (Sana's ReLU linear
#: attention), listed for completeness: no controls run there, since no attention probabilities exist.
KINDS: tuple[str, ...] = ("self", "cross", "joint", "single", "self2", "text", "linear")
_STAGE_ORDER = {"down": 0, "mid": 1, "up": 2}  # UNet stages; a DiT's come in the order of its `SitePattern`s


@dataclass(frozen=True)
class Architecture:
    """One supported denoiser family: the UNet, whose hand-written site processor (in `processors`) knows its token
    layout, or a DiT described declaratively (`dit`, see `attnkit.families`)."""

    name: str
    model_class: type
    dit: DiT | None = None

    def matches(self, model: torch.nn.Module) -> bool:
        return isinstance(model, self.model_class)


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("unet", UNet2DConditionModel),
)


@dataclass(frozen=True)
class Site:
    """One attention module of a denoiser.

    `index` is the 1-based position among sites of the same kind in execution order (the numbering of per-layer shape tables such as `attnkit inspect`'s).
    `stride` is how many latent pixels one token spans per side; `resolution` is the token grid (rows, cols) once
    an image size is known.
    """

    name: str
    kind: Kind
    block: str
    heads: int
    head_dim: int
    index: int
    stride: int
    architecture: str
    resolution: tuple[int, int] | None = None

    @property
    def module_name(self) -> str:
        return self.name.removesuffix(".processor")

    @property
    def stage(self) -> str:
        return self.block.split(".")[0]

    def grid(self, latent: tuple[int, int]) -> tuple[int, int]:
        """Token grid of this site for a denoiser input of `latent` (rows, cols) latent pixels."""
        if self.architecture == "unet":  # each down-sampling conv rounds odd sizes up
            return math.ceil(latent[0] / self.stride), math.ceil(latent[1] / self.stride)
        return latent[0] // self.stride, latent[1] // self.stride

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


def denoiser_of(obj: Any) -> torch.nn.Module:
    """The attention-bearing denoiser of a pipeline (its `transformer` or `unet`), or the model itself."""
    if isinstance(obj, torch.nn.Module):
        model = obj
    else:
        components = getattr(obj, "components", None)
        if not isinstance(components, dict):
            raise AttnkitError(
                f"expected a diffusers pipeline or model, got {type(obj).__name__}. "
                "Pass e.g. a StableDiffusion3Pipeline or its `transformer`."
            )
        model = next((components[k] for k in ("transformer", "unet") if components.get(k) is not None), None)
        if model is None:
            raise AttnkitError(
                f"{type(obj).__name__} has no `transformer` or `unet` component, so attnkit finds no denoiser. "
                f"Components: {sorted(k for k, v in components.items() if v is not None)}."
            )
    architecture_of(model)
    return model


def architecture_of(model: torch.nn.Module) -> Architecture:
    for arch in ARCHITECTURES:
        if arch.matches(model):
            return arch
    dit = dit_of(model)
    if dit is not None:
        return Architecture(dit.name, dit.model_class, dit)
    modules = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "get_processor")})
    reason = (f"it has attention modules ({', '.join(modules)}), but attnkit does not know their token layout"
              if modules else "it has no attention processors at all")
    known = [a.model_class.__name__ for a in ARCHITECTURES] + [d.model for d in dits()]
    raise AttnkitError(
        f"unsupported model {type(model).__name__}: {reason}. attnkit supports {', '.join(known)}; a new DiT "
        "family is described in one module of `attnkit.families`."
    )


def sites(
    obj: Any,
    *,
    height: int | None = None,
    width: int | None = None,
    latent: tuple[int, int] | None = None,
) -> SiteList:
    """Every attention site of a pipeline's denoiser (or of a denoiser model), in execution order.

    With `height`/`width` (pixels, needs a pipeline) or `latent` (latent pixels), each site's token-grid
    `resolution` is filled in.
    """
    model = denoiser_of(obj)
    arch = architecture_of(model)
    if (height is None) != (width is None):
        raise AttnkitError("give both `height` and `width`, or neither.")
    if height is not None:
        factor = getattr(obj, "vae_scale_factor", None)
        if factor is None:
            raise AttnkitError("`height`/`width` are pixel sizes and need a pipeline; for a bare model pass `latent=(h, w)`.")
        latent = (height // factor, width // factor)
    strides = _unet_strides(model) if arch.dit is None else {}
    found: list[tuple[tuple, Site]] = []
    for module_name, module in model.named_modules():
        if not hasattr(module, "get_processor"):
            continue
        if arch.dit is not None:
            stage, block_index, kind, order = _dit_site(arch.dit, module_name, module)
            stride = arch.dit.stride_of(model)
        else:
            stage, block_index = _block_of(module_name)
            kind: Kind = "cross" if getattr(module, "is_cross_attention", False) else "self"
            order, stride = _STAGE_ORDER[stage], strides[f"{stage}.{block_index}"]
        heads = int(module.heads)
        head_dim = int(getattr(module, "head_dim", None) or module.inner_dim // heads)
        site = Site(f"{module_name}.processor", kind, f"{stage}.{block_index}", heads, head_dim, 0, stride, arch.name)
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
           default: Callable[[Any], SiteList] | None = None) -> SiteList:
    """The sites a feature runs at: `sites_` as given, else `SiteList.select(**selection)`, else `default(obj)`
    (when None: every site where a control can run, i.e. all but linear attention); giving both sites and
    selection keywords is an error."""
    if sites_ is not None and selection:
        raise AttnkitError("give either explicit sites or selection keywords, not both.")
    if sites_ is not None:
        return SiteList(sites_)
    if selection:
        return sites(obj).select(**selection)
    return default(obj) if default is not None else SiteList(s for s in sites(obj) if s.kind != "linear")


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.]", name))


def _block_of(module_name: str) -> tuple[str, int]:
    parts = module_name.split(".")
    head = parts[0]
    if head in ("down_blocks", "up_blocks"):
        return head.removesuffix("_blocks"), int(parts[1])
    if head == "mid_block":
        return "mid", 0
    raise AttnkitError(f"attention module {module_name!r} lies outside the blocks attnkit knows for this model.")


def _dit_site(dit: DiT, module_name: str, module: torch.nn.Module) -> tuple[str, int, Kind, int]:
    """(stage, block index, kind, position of its stage) of a DiT attention module; an error if none matches."""
    stages = list(dict.fromkeys(p.stage for p in dit.sites))
    for pattern in dit.sites:
        match = re.fullmatch(pattern.pattern, module_name)
        if match:
            block = int(match.group(1)) if match.groups() else 0
            return pattern.stage, block, pattern.kind, stages.index(pattern.stage)
    raise AttnkitError(
        f"attention module {module_name!r} ({type(module).__name__}) lies outside the sites attnkit knows for "
        f"{dit.name} ({', '.join(p.pattern for p in dit.sites)}), so attnkit cannot tell its token layout. "
        f"Describe it in attnkit.families.{dit.name}."
    )




def _unet_strides(model: torch.nn.Module) -> dict[str, int]:
    """Token stride per UNet block, found by walking the down- and up-samplers in execution order."""
    strides: dict[str, int] = {}
    stride = 1
    for i, block in enumerate(model.down_blocks):
        strides[f"down.{i}"] = stride
        if getattr(block, "downsamplers", None):
            stride *= 2
    strides["mid.0"] = stride
    for i, block in enumerate(model.up_blocks):
        strides[f"up.{i}"] = stride
        if getattr(block, "upsamplers", None):
            stride //= 2
    return strides
