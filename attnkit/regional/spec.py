"""Region specs: which prompt goes where, as plain Python objects that load from YAML or JSON.

```yaml
method: mask                                    # optional, UNets: mask (default) or couple
negative: "blurry"                              # optional, global
base: {prompt: "a park at noon", weight: 0.3}   # optional: a whole-image prompt mixed in
regions:
  - prompt: "a red circle"
    box: [0.0, 0.0, 0.5, 1.0]                   # x0 y0 x1 y1, fractions of width / height
  - prompt: "a blue square"
    mask: right.png                             # any size; area-averaged onto the token grid
    negative: "green"                           # optional per-region negative
  - prompt: "a straw hat"
    from_word: hat                              # where the base prompt's "hat" went in a first pass
    threshold: 0.4                              # optional: share of the map's range that counts as inside
    lora: {straw: 0.8}                          # optional: LoRA adapters for this region's tokens, with weights
# or, instead of box / mask per region:  grid: "1,1"  (sd-webui-regional-prompter ratios)
loras: {straw: straw-lora.safetensors}          # optional: LoRA files attnkit loads (and unloads) by adapter name
```

Overlap rule: every image token belongs to exactly one region, the one covering the largest share of the token's
area; on a tie the region listed later wins (regions are painted in order). A token no region touches belongs to
the base prompt alone, so a spec that leaves tokens uncovered needs `base`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, UnidentifiedImageError

from ..errors import AttnkitError
from ..tokens import WORD_THRESHOLD

__all__ = ["Base", "Region", "RegionSpec", "load_spec", "owners_of", "parse_grid", "BASE", "DEFAULT_WORD_THRESHOLD"]

#: How a UNet applies the regions: one masked cross-attention pass, or one cross-attention per region blended.
METHODS = ("mask", "couple")

#: Owner of the image tokens that no region covers (they see the base prompt only), and of the base prompt's text.
BASE = -1

MaskSource = str | Path | Image.Image | torch.Tensor | list  # list: rows of numbers in [0, 1]

#: Share of a word map's range (min to max) above which a pixel belongs to a `from_word` region.
DEFAULT_WORD_THRESHOLD = WORD_THRESHOLD


@dataclass(frozen=True)
class Base:
    """A whole-image prompt, visible to every image token.

    `weight` w is a logit bias of log(w) on the base prompt's tokens for every image query: it multiplies the
    unnormalised attention an image token pays them by w, against its own region's text and the image. w = 1 treats
    the base prompt like the token's own region prompt, 0 hides it (its text still sees the whole image, and image
    tokens that no region covers then see no text at all).
    """

    prompt: str
    weight: float = 1.0
    lora: dict[str, float] | None = None

    def __post_init__(self) -> None:
        _check_prompt(self.prompt, "base")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight < 0:
            raise AttnkitError(f"base weight must be a finite number >= 0, got {self.weight!r}.")
        _check_lora(self.lora, "base")


@dataclass(frozen=True)
class Region:
    """One prompt and the part of the image it describes: a `box` (x0, y0, x1, y1 as fractions), a `mask` (an
    image path, a PIL image, a 2-D tensor or rows of numbers in [0, 1]; any size), or `from_word`: the pixels where
    that word of the base prompt went in a first pass (the regional-prompter "prompt" mode), thresholded at
    `threshold` of the word map's range. Once derived, the mask is kept beside `from_word`. `lora` names LoRA
    adapters (loaded into the pipeline, or listed in the spec's `loras`) that apply to this region's tokens only,
    each at its weight."""

    prompt: str
    box: tuple[float, float, float, float] | None = None
    mask: MaskSource | None = None
    negative: str | None = None
    from_word: str | None = None
    threshold: float | None = None
    lora: dict[str, float] | None = None


@dataclass(frozen=True)
class RegionSpec:
    """Regions (in order: later ones win overlaps), an optional base prompt and an optional global negative.

    `grid` (sd-webui-regional-prompter ratio syntax) replaces per-region boxes; `root` is the folder that relative
    mask paths are read from (the spec file's folder when loaded from a file). `method` picks how a UNet applies
    the regions ("mask" or "couple"; see `attnkit.regional.RegionalOptions`), None for the default. `loras` maps
    adapter names to LoRA files (relative to `root`) that the regional session loads and unloads.
    """

    regions: tuple[Region, ...]
    negative: str | None = None
    base: Base | None = None
    grid: str | None = None
    method: str | None = None
    loras: dict[str, str] | None = None
    root: Path | None = field(default=None, compare=False)
    _areas: tuple[Callable[[tuple[int, int]], torch.Tensor] | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", tuple(self.regions))
        if not self.regions:
            raise AttnkitError("the region spec has no regions: give `regions: [{prompt: ..., box: [...]}, ...]`.")
        if self.negative is not None:
            _check_prompt(self.negative, "negative", allow_empty=True)
        if self.method not in (None, *METHODS):
            raise AttnkitError(f"method {self.method!r}: choose one of {', '.join(METHODS)}.")
        boxes = parse_grid(self.grid, len(self.regions)) if self.grid is not None else None
        areas = []
        for i, region in enumerate(self.regions):
            if not isinstance(region, Region):
                raise AttnkitError(f"region {i + 1} is a {type(region).__name__}, not a `Region`; build specs from "
                                   "dicts with `RegionSpec.from_dict` or `attnkit.regional.load_spec`.")
            where = f"region {i + 1} ({region.prompt!r})" if isinstance(region.prompt, str) else f"region {i + 1}"
            _check_prompt(region.prompt, where)
            _check_lora(region.lora, where)
            if region.negative is not None:
                _check_prompt(region.negative, f"{where} negative", allow_empty=True)
            if region.from_word is not None or region.threshold is not None:
                _check_word(region, self.base, boxes is not None, where)
                areas.append(None if region.mask is None else _mask_area(region.mask, self.root, where))
                continue
            if boxes is not None:
                if region.box is not None or region.mask is not None:
                    raise AttnkitError(f"{where} has a box or mask, but the spec divides the image by `grid`; "
                                       "use one or the other.")
                areas.append(_box_area(boxes[i], where))
            elif (region.box is None) == (region.mask is None):
                raise AttnkitError(f"{where} needs exactly one of `box: [x0, y0, x1, y1]`, `mask: file.png` or "
                                   "`from_word: word` (or give the spec a `grid`).")
            elif region.box is not None:
                areas.append(_box_area(region.box, where))
            else:
                areas.append(_mask_area(region.mask, self.root, where))
        object.__setattr__(self, "_areas", tuple(areas))
        if self.loras is not None and (not isinstance(self.loras, dict) or not all(
                isinstance(k, str) and k and isinstance(v, (str, Path)) for k, v in self.loras.items())):
            raise AttnkitError(f"`loras` maps adapter names to LoRA files, e.g. {{purple: purple.safetensors}}; got "
                               f"{self.loras!r}.")
        unused = sorted(set(self.loras or {}) - {name for named in self.adapters.values() for name in named})
        if unused:
            raise AttnkitError(f"`loras` lists {unused}, which no region (and not the base) names in its `lora`: "
                               "give a region `lora: {name: weight}`, or leave the file out.")

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.regions]

    @property
    def adapters(self) -> dict[int, dict[str, float]]:
        """The LoRA adapters and weights of every owner that names some: region indices, and `BASE`."""
        named = {i: dict(r.lora) for i, r in enumerate(self.regions) if r.lora}
        return named | ({BASE: dict(self.base.lora)} if self.base is not None and self.base.lora else {})

    def lora_path(self, name: str) -> Path:
        """Where the spec's `loras` says adapter `name`'s file is (relative paths from `root`)."""
        path = Path(self.loras[name])
        return path if self.root is None or path.is_absolute() else self.root / path

    @property
    def negatives_given(self) -> bool:
        """Whether the spec or any region gives a negative prompt (an explicit "" counts: CFG against the empty
        prompt)."""
        return self.negative is not None or any(r.negative is not None for r in self.regions)

    def pending_error(self) -> str:
        """What to do about the first region whose mask is still to be found from a word."""
        i = self.pending[0]
        return (f"region {i + 1} takes its mask from the word {self.regions[i].from_word!r} in a first pass, which "
                "has not run: `spec = attnkit.run.word_regions(pipe, spec, generator=..., num_inference_steps=...)`, "
                "given the arguments of the regional generation to come, generates the base prompt and returns the "
                "spec with that mask, for `attnkit.regional(pipe, spec)` (`attnkit regional` and `attnkit ui` run it "
                "for you).")

    @property
    def pending(self) -> list[int]:
        """Indices of the regions whose mask is still to be found from a word of the base prompt."""
        return [i for i, area in enumerate(self._areas) if area is None]

    def coverage(self, grid: tuple[int, int]) -> torch.Tensor:
        """Share (0..1) of every token's area that each region covers: (regions, rows, cols)."""
        if self.pending:
            raise AttnkitError(self.pending_error())
        return torch.stack([area(grid) for area in self._areas])

    def coverage_at(self, latent: tuple[int, int], stride: int) -> torch.Tensor:
        """Coverage on the token grid of a UNet level whose tokens span `stride` x `stride` latent pixels: the
        latent grid's coverage averaged over the latent pixels each token spans. Each down-sampling conv rounds an
        odd size up, so the last row or column of tokens spans fewer pixels."""
        cover = self.coverage(latent)
        if stride == 1:
            return cover
        rows, cols = latent
        padding = (0, -cols % stride, 0, -rows % stride)
        summed = F.avg_pool2d(F.pad(cover, padding), stride, divisor_override=1)
        counts = F.avg_pool2d(F.pad(torch.ones(1, rows, cols), padding), stride, divisor_override=1)
        return summed / counts

    def owners(self, grid: tuple[int, int]) -> torch.Tensor:
        """The region index of every image token in row-major order, `BASE` where no region reaches (the overlap
        rule of this module: most area wins, ties go to the later region)."""
        return owners_of(self.coverage(grid))

    def check_grid(self, grid: tuple[int, int]) -> torch.Tensor:
        """`owners(grid)`, after checking that every token has a prompt and every region has a token."""
        owners = self.owners(grid)
        rows, cols = grid
        uncovered = (owners == BASE).nonzero().flatten()
        if self.base is None and len(uncovered):
            first = int(uncovered[0])
            raise AttnkitError(
                f"{len(uncovered)} of the {rows}x{cols} image tokens lie in no region (the first at row "
                f"{first // cols}, column {first % cols}) and the spec has no base prompt to give them: extend the "
                "regions to cover the image, or add `base: {prompt: ...}`."
            )
        counts = torch.bincount(owners[owners != BASE], minlength=len(self.regions))
        empty = [i + 1 for i, n in enumerate(counts.tolist()) if n == 0]
        if empty:
            raise AttnkitError(
                f"region(s) {empty} get no image token on the {rows}x{cols} token grid: each is smaller than a "
                "token or lies under later regions (the later region wins an overlap). Enlarge or reorder them."
            )
        return owners

    def as_dict(self) -> dict[str, Any]:
        """The spec in its file form (masks given as tensors or images are noted, not embedded)."""
        data: dict[str, Any] = {}
        if self.method is not None:
            data["method"] = self.method
        if self.negative is not None:
            data["negative"] = self.negative
        if self.base is not None:
            data["base"] = {k: v for k, v in asdict(self.base).items() if k != "lora" or v}
        if self.grid is not None:
            data["grid"] = self.grid
        if self.loras:
            data["loras"] = {name: str(path) for name, path in self.loras.items()}
        regions = []
        for region in self.regions:
            entry: dict[str, Any] = {"prompt": region.prompt}
            if region.box is not None:
                entry["box"] = [float(x) for x in region.box]
            if region.mask is not None:
                entry["mask"] = _mask_entry(region)
            if region.negative is not None:
                entry["negative"] = region.negative
            if region.from_word is not None:
                entry["from_word"] = region.from_word
            if region.threshold is not None:
                entry["threshold"] = region.threshold
            if region.lora:
                entry["lora"] = dict(region.lora)
            regions.append(entry)
        data["regions"] = regions
        return data

    @classmethod
    def from_dict(cls, data: Any, root: Path | None = None) -> RegionSpec:
        """A spec from the parsed YAML / JSON form; unknown keys are an error naming the known ones."""
        if not isinstance(data, dict):
            raise AttnkitError(f"a region spec is a mapping with `regions:`, got {type(data).__name__}.")
        _check_keys(data, {"method", "negative", "base", "regions", "grid", "loras"}, "the spec")
        regions = data.get("regions")
        if not isinstance(regions, list):
            raise AttnkitError("the region spec has no regions: give `regions: [{prompt: ..., box: [...]}, ...]`.")
        parsed = []
        for i, entry in enumerate(regions):
            if not isinstance(entry, dict):
                raise AttnkitError(f"region {i + 1} must be a mapping with `prompt` and `box` or `mask`, got {entry!r}.")
            _check_keys(entry, {"prompt", "box", "mask", "negative", "from_word", "threshold", "lora"},
                        f"region {i + 1}")
            box = entry.get("box")
            parsed.append(Region(entry.get("prompt"), tuple(box) if isinstance(box, list) else box, entry.get("mask"),
                                 entry.get("negative"), entry.get("from_word"), entry.get("threshold"),
                                 entry.get("lora")))
        base = data.get("base")
        if base is not None:
            if isinstance(base, str):
                base = {"prompt": base}
            if not isinstance(base, dict):
                raise AttnkitError(f"`base` must be `{{prompt: ..., weight: ...}}`, got {base!r}.")
            _check_keys(base, {"prompt", "weight", "lora"}, "base")
            base = Base(base.get("prompt"), base.get("weight", 1.0), base.get("lora"))
        return cls(tuple(parsed), data.get("negative"), base, data.get("grid"), data.get("method"), data.get("loras"),
                   root)


def owners_of(cover: torch.Tensor) -> torch.Tensor:
    """Owners (row-major) of the tokens of a coverage (regions, rows, cols): the overlap rule of this module."""
    cover = cover.flatten(1)
    best = cover.flip(0).argmax(0)  # argmax returns the first maximum: flipped, the last listed region
    owners = len(cover) - 1 - best
    return torch.where(cover.amax(0) > 0, owners, torch.full_like(owners, BASE))


def load_spec(source: RegionSpec | dict | str | Path) -> RegionSpec:
    """A spec from a `RegionSpec`, a dict, or a YAML / JSON file (relative mask paths resolve next to the file)."""
    if isinstance(source, RegionSpec):
        return source
    if isinstance(source, dict):
        return RegionSpec.from_dict(source)
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as error:
        raise AttnkitError(f"cannot read the region spec {str(path)!r}: {error.strerror or error}.") from error
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise AttnkitError(f"{str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from error
    return RegionSpec.from_dict(data, root=path.parent)


def parse_grid(grid: str, count: int) -> list[tuple[float, float, float, float]]:
    """Boxes of a regional-prompter ratio string, in reading order.

    "1,2,1" divides the width into columns 1:2:1. With ";" the string lists rows: "1,1;2,3,1" is a row of height
    1 holding one cell, then a row of height 2 split 3:1; a row with a single number is one full-width cell.
    """
    if not isinstance(grid, str) or not grid.strip():
        raise AttnkitError(f"`grid` must be a ratio string such as '1,1' or '1;2,1,1', got {grid!r}.")
    try:
        rows = [[float(x) for x in row.split(",")] for row in grid.split(";")]
    except ValueError:
        raise AttnkitError(f"grid {grid!r}: ratios must be numbers separated by ',' (columns) and ';' (rows).") from None
    if any(x <= 0 or not math.isfinite(x) for row in rows for x in row):
        raise AttnkitError(f"grid {grid!r}: every ratio must be a positive number.")
    if len(rows) == 1:
        cells = [[1.0, *rows[0]]]
    else:
        cells = [[row[0], *(row[1:] or [1.0])] for row in rows]
    found = sum(len(row) - 1 for row in cells)
    if found != count:
        raise AttnkitError(f"grid {grid!r} divides the image into {found} cells, but the spec has {count} region "
                           f"prompts: give one region per cell, in reading order.")
    boxes = []
    height_total = sum(row[0] for row in cells)
    top = 0.0
    for height, *widths in cells:
        bottom = top + height / height_total
        left = 0.0
        for width in widths:
            right = left + width / sum(widths)
            boxes.append((left, top, right, bottom))
            left = right
        top = bottom
    return boxes


def _check_prompt(prompt: Any, where: str, allow_empty: bool = False) -> None:
    if not isinstance(prompt, str) or (not allow_empty and not prompt.strip()):
        raise AttnkitError(f"{where}: the prompt must be a non-empty string, got {prompt!r}.")


def _check_lora(lora: Any, where: str) -> None:
    """`lora`: adapter names with finite weights."""
    if lora is None:
        return
    if not isinstance(lora, dict) or not lora:
        raise AttnkitError(f"{where}: `lora` maps adapter names to weights, e.g. {{purple: 1.0}}; got {lora!r}.")
    for name, weight in lora.items():
        if not isinstance(name, str) or not name:
            raise AttnkitError(f"{where}: LoRA adapter names are non-empty strings, got {name!r}.")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise AttnkitError(f"{where}: the weight of LoRA {name!r} must be a finite number (1: full strength), "
                               f"got {weight!r}.")


def _check_keys(data: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise AttnkitError(f"{where} has unknown key(s) {unknown}; known keys are {sorted(known)}.")


def _box_area(box: Any, where: str):
    """Coverage of each token of a grid by the box, exactly by area."""
    if not isinstance(box, (tuple, list)) or len(box) != 4 or not all(isinstance(x, (int, float)) for x in box):
        raise AttnkitError(f"{where}: box must be four numbers [x0, y0, x1, y1], got {box!r}.")
    x0, y0, x1, y1 = (float(x) for x in box)
    if not all(0.0 <= x <= 1.0 for x in (x0, y0, x1, y1)):
        raise AttnkitError(f"{where}: box {list(box)} lies outside [0, 1]; coordinates are fractions of the image.")
    if x1 <= x0 or y1 <= y0:
        raise AttnkitError(f"{where}: box {list(box)} is empty; it needs x0 < x1 and y0 < y1.")

    def area(grid: tuple[int, int]) -> torch.Tensor:
        rows, cols = grid
        return _overlap(y0, y1, rows)[:, None] * _overlap(x0, x1, cols)[None, :]

    return area


def _overlap(start: float, end: float, cells: int) -> torch.Tensor:
    """Share of each of `cells` equal cells of [0, 1] that lies inside [start, end]."""
    edges = torch.arange(cells + 1, dtype=torch.float64) / cells
    return ((torch.minimum(edges[1:], torch.tensor(end)) - torch.maximum(edges[:-1], torch.tensor(start))) * cells
            ).clamp(0, 1).float()


def _check_word(region: Region, base: Base | None, gridded: bool, where: str) -> None:
    """A `from_word` region: a word of the base prompt, a threshold in (0, 1), and no box."""
    if region.from_word is None:
        raise AttnkitError(f"{where} has a threshold but no `from_word`; the threshold cuts a word's map.")
    if not isinstance(region.from_word, str) or not region.from_word.strip():
        raise AttnkitError(f"{where}: from_word must be a word of the base prompt, got {region.from_word!r}.")
    if region.box is not None or gridded:
        raise AttnkitError(f"{where} has `from_word` and a box (or the spec a `grid`); the word's map is the region's "
                           "area, so give one or the other.")
    if base is None:
        raise AttnkitError(f"{where} takes its mask from the word {region.from_word!r} of the base prompt, but the "
                           "spec has no `base`: add `base: {prompt: ...}` naming it.")
    threshold = region.threshold
    if threshold is not None and (not isinstance(threshold, (int, float)) or not 0 < threshold < 1):
        raise AttnkitError(f"{where}: threshold must be a number between 0 and 1 (a share of the word map's range), "
                           f"got {threshold!r}.")


def _mask_entry(region: Region) -> Any:
    """A mask as the spec file writes it: its path; rows of 0/1 for a mask derived from a word (so that the image's
    spec reproduces it); a note for other in-memory masks."""
    if isinstance(region.mask, (str, Path)):
        return str(region.mask)
    if isinstance(region.mask, list):
        return region.mask
    if region.from_word is not None and isinstance(region.mask, torch.Tensor):
        return [[int(v) for v in row] for row in region.mask.round().int().tolist()]
    return "<in-memory mask>"


def _mask_area(mask: MaskSource, root: Path | None, where: str):
    """Coverage of each token by a mask image, by area averaging (PIL's box filter) onto the token grid."""
    image = _read_mask(mask, root, where)
    if image.getextrema()[1] == 0:
        raise AttnkitError(f"{where}: the mask is entirely black, so the region covers nothing.")

    def area(grid: tuple[int, int]) -> torch.Tensor:
        rows, cols = grid
        small = image.resize((cols, rows), Image.Resampling.BOX)
        return torch.from_numpy(np.asarray(small, dtype=np.float32).copy())

    return area


def _read_mask(mask: MaskSource, root: Path | None, where: str) -> Image.Image:
    """The mask as a float ("F") PIL image with values in [0, 1]."""
    if isinstance(mask, list):
        try:
            mask = torch.tensor(mask, dtype=torch.float32)
        except (TypeError, ValueError):
            raise AttnkitError(f"{where}: a mask given as a list must be rows of numbers in [0, 1].") from None
    if isinstance(mask, torch.Tensor):
        if mask.ndim != 2 or mask.numel() == 0 or not bool(((mask >= 0) & (mask <= 1)).all()):
            raise AttnkitError(f"{where}: a tensor mask must be 2-D with values in [0, 1], got shape "
                               f"{tuple(mask.shape)}.")
        return Image.fromarray(mask.detach().float().cpu().numpy(), mode="F")
    if isinstance(mask, Image.Image):
        image = mask
    elif isinstance(mask, (str, Path)):
        path = Path(mask) if root is None or Path(mask).is_absolute() else root / mask
        try:
            with Image.open(path) as opened:
                image = opened.copy()
        except (OSError, UnidentifiedImageError) as error:
            raise AttnkitError(f"{where}: cannot read mask {str(path)!r} ({error}). Give a PNG/JPEG path, relative "
                               "to the spec file, where white marks the region.") from error
    else:
        raise AttnkitError(f"{where}: mask must be an image path, a PIL image or a 2-D tensor, got "
                           f"{type(mask).__name__}.")
    return image.convert("L").convert("F").point(lambda value: value * (1 / 255))
