"""The Gradio app of `attnkit ui`: one loaded pipeline behind the Regional, Maps, Segment, Video and Generate tabs.

Gradio only: each tab reads its fields with the run layer's checks and runs the run layer's function of its command
(`attnkit regional`, `maps`, `segment`, `video-edit`, `generate`), so a PNG downloaded here carries the record
`attnkit regional` writes. attnkit sessions swap the pipeline's processors for the span of a
generation, so one lock per pipeline lets a single generation run at a time; Gradio's queue holds the others.
The endpoints are named (`/generate`, `/regional`, `/maps`, `/segment`, `/video_edit`) for `gradio_client` scripts.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import shutil
import socket
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
import yaml
from gradio_image_annotation import image_annotator
from PIL import Image

from ..errors import AttnkitError
from ..kv.defaults import ATTEND, VIDEO_METHODS
from ..run import checks
from ..segment.defaults import DEFAULT_THRESHOLDS
from . import canvas
from .canvas import SHOWN_SIDE, enlarged
from .serving import (
    Keep,
    Keeper,
    Limits,
    check_mask_name,
    exposed,
    read_upload,
)

if TYPE_CHECKING:
    from ..regional.spec import RegionSpec

__all__ = ["DEFAULT_MODEL", "REGION_COLUMNS", "SHOWN_SIDE", "Keep", "Limits", "Studio", "build_app", "check_port",
           "enlarged", "launch", "load", "lock_of", "region_spec"]

DEFAULT_MODEL = "shapes-sd3"

#: Columns of the regions table: a prompt, its optional negative, its box as fractions of the image, and the LoRA
#: adapters for its tokens ("name" or "name:weight", several separated by commas).
REGION_COLUMNS = ("prompt", "negative", "x0", "y0", "x1", "y1", "lora")
_BOX_COLUMNS = REGION_COLUMNS[2:6]
_EXAMPLE_REGIONS = [["a red circle", "", 0.0, 0.0, 0.5, 1.0, ""], ["a blue square", "", 0.5, 0.0, 1.0, 1.0, ""]]
_EXAMPLE_BASE = "a red circle and a blue square"

_LOG = logging.getLogger(__name__)
_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def lock_of(pipe: Any) -> threading.Lock:
    """The one lock of `pipe`, shared by every app serving it: sessions change its processors while they run."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(pipe, threading.Lock())


def _shown(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` with an AttnkitError shown as its message in the page (gr.Error), never as a failed request; any
    other exception is logged with its traceback and fails the request."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except AttnkitError as error:
            raise gr.Error(str(error), duration=None, print_exception=False) from None  # stays until closed
        except Exception:
            _LOG.exception("attnkit ui: %s failed", handler.__name__)
            raise

    return wrapped


def _field(check: checks.Check[Any], value: Any, name: str, blank: str | None = None) -> Any:
    """A field's value read by the run layer's `check`, or an AttnkitError naming the field and what to enter;
    with `blank` (what an empty field means), an empty field is None."""
    if blank is not None and _blank(value):
        return None
    read = check(value)
    if read is None:
        raise AttnkitError(f"{name} is {value!r}; enter {check.wanted}"
                           + (f", or leave it blank for {blank}." if blank is not None else "."))
    return read


def _size(value: Any, name: str) -> int | None:
    """An image side in pixels; blank means the model's default."""
    return _field(checks.POSITIVE, value, name, "the model's")


def _guidance(value: Any) -> float | None:
    return _field(checks.GUIDANCE, value, "guidance", "the model's")


_blank = canvas.blank


def _text(cell: Any) -> str:
    """A cell or field as stripped text, blank as ""."""
    return "" if _blank(cell) else str(cell).strip()


def _fraction(cell: Any, where: str) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        raise AttnkitError(f"{where} is {cell!r}, not a number; enter a fraction of the image from 0 to 1, "
                           "e.g. 0.5.") from None


def region_spec(rows: Sequence[Sequence[Any]] | None, grid: str | None = None, base: str | None = None,
                weight: float | None = None, negative: str | None = None,
                masks: dict[int, Any] | None = None, loras: dict[str, str] | None = None) -> RegionSpec:
    """The RegionSpec of the Regional tab: table rows (prompt, negative, x0, y0, x1, y1, lora; blank rows skipped),
    the grid string that places them instead of boxes, the base prompt and weight, the global negative, the masks
    painted or uploaded for regions (region number -> the spec's mask: rows of 0 and 1, or an image), and LoRA files
    by adapter name (those the regions name go into the spec's `loras`); a region takes its area from its box or from
    its mask."""
    from ..regional.spec import RegionSpec

    grid = _text(grid)
    masks = masks or {}
    regions = []
    for number, row in enumerate(rows or [], start=1):
        cells = list(row) + [None] * (len(REGION_COLUMNS) - len(row))
        mask = masks.get(number)
        if all(_blank(cell) for cell in cells) and mask is None:
            continue
        where = f"region {len(regions) + 1}"
        if not _text(cells[0]):
            raise AttnkitError(f"{where} has no prompt: type what it shows in its prompt cell, e.g. 'a red circle' "
                               "(or delete the row).")
        entry: dict[str, Any] = {"prompt": _text(cells[0])}
        if _text(cells[1]):
            entry["negative"] = _text(cells[1])
        lora = _lora_cell(cells[6], where)
        if lora:
            entry["lora"] = lora
        box = cells[2:6]
        if not all(_blank(cell) for cell in box):
            if mask is not None:
                raise AttnkitError(f"{where} has a box and a mask: clear its box cells (x0, y0, x1, y1) to use the "
                                   "mask, or erase its mask on the mask canvas to use the box.")
            if grid:
                raise AttnkitError(f"{where} has a box and the grid {grid!r} places it too: clear the grid to use the "
                                   "boxes, or clear the box cells to use the grid.")
            missing = [name for name, cell in zip(_BOX_COLUMNS, box) if _blank(cell)]
            if missing:
                raise AttnkitError(f"{where}: the box has no {', '.join(missing)}; fill in x0, y0, x1, y1 as "
                                   "fractions of the image from 0 to 1.")
            entry["box"] = [_fraction(cell, f"{where}: {name}") for name, cell in zip(_BOX_COLUMNS, box)]
        elif mask is not None:
            entry["mask"] = mask
        elif not grid:
            raise AttnkitError(f"{where} has no box: fill in x0, y0, x1, y1 (fractions of the image from 0 to 1), draw "
                               "it on the box canvas, paint its mask, or give a grid such as '1,1' that places every "
                               "region.")
        regions.append(entry)
    if not regions:
        raise AttnkitError("the regions table is empty: add a row with a prompt and a box.")
    data: dict[str, Any] = {"regions": regions}
    if grid:
        data["grid"] = grid
    if _text(base):
        data["base"] = {"prompt": _text(base)} | ({} if weight in (None, "") else {"weight": weight})
    if _text(negative):
        data["negative"] = _text(negative)
    named = {name for entry in regions for name in entry.get("lora", {})}
    if loras and named & set(loras):
        data["loras"] = {name: path for name, path in loras.items() if name in named}
    return RegionSpec.from_dict(data)


def _shipped_loras(model: str) -> str:
    """What the page says of the model's own LoRAs: the shapes models ship theirs."""
    from ..shapes.lora import shipped_loras

    names = list(shipped_loras(model))
    return f"{model} ships {', '.join(names)}" if names else "upload .safetensors files"


def _lora_cell(cell: Any, where: str) -> dict[str, float] | None:
    """A lora cell ("purple", "purple:0.8, striped:0.5") as {adapter: weight}; blank: None."""
    if _blank(cell):
        return None
    adapters = {}
    for part in str(cell).split(","):
        name, _, weight = part.strip().partition(":")
        if not name.strip():
            raise AttnkitError(f"{where}: the lora cell {cell!r} has an empty adapter name; write name or "
                               "name:weight, several separated by commas, e.g. 'red-to-yellow:0.8'.")
        try:
            adapters[name.strip()] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise AttnkitError(f"{where}: the weight of LoRA {name.strip()!r} is {weight.strip()!r}, not a number; "
                               "write name:weight, e.g. 'red-to-yellow:0.8'.") from None
    return adapters


def _spec_fields(spec: RegionSpec) -> tuple[list[list[Any]], str, str, float, str]:
    """A spec as the Regional tab's fields: rows, grid, base prompt, base weight, negative (masks go to the mask
    canvas)."""
    unfit = [i + 1 for i, r in enumerate(spec.regions) if r.from_word is not None]
    if unfit:
        raise AttnkitError(f"region(s) {unfit} take their area from a word, which this page cannot hold (it holds "
                           "boxes, masks or a grid): run this spec with `attnkit regional`.")
    if spec.method is not None:
        raise AttnkitError(f"the spec sets method {spec.method!r}, which this page does not offer: remove it, or run "
                           "the spec with `attnkit regional`.")
    rows = [[r.prompt, r.negative or "", *(r.box if r.box is not None else [None] * 4),
             ", ".join(f"{name}:{weight:g}" for name, weight in (r.lora or {}).items())] for r in spec.regions]
    base = spec.base
    return rows, spec.grid or "", base.prompt if base else "", base.weight if base else 1.0, spec.negative or ""


def _spec_file(paths: Sequence[str], limits: Limits) -> tuple[dict[str, Any], str, dict[str, str]]:
    """The parsed spec of an upload (a .yaml, .yml or .json file and the mask images it names), its file name, and
    the other uploaded files by name."""
    specs = [p for p in paths if Path(p).suffix.lower() in (".yaml", ".yml", ".json")]
    if len(specs) != 1:
        named = ", ".join(Path(p).name for p in specs) or "none"
        raise AttnkitError(f"the upload holds {len(specs)} spec files ({named}); choose one .yaml, .yml or .json "
                           "region spec, with the mask images it names.")
    path = Path(specs[0])
    limits.check_bytes(path, f"the spec {path.name!r}")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise AttnkitError(f"{path.name!r} is not valid {kind} ({error}); save the spec from this page or write it as "
                           "`attnkit regional --spec` reads it.") from None
    others = {Path(p).name: p for p in paths if p != specs[0]}
    return data, path.name, others


def _progress(progress: gr.Progress, steps: int) -> Callable[..., dict[str, Any]]:
    """A `callback_on_step_end` reporting each finished denoising step to the page."""

    def step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        progress((step + 1, steps), desc="denoising", unit="steps")
        return tensors

    return step_end


Masks = dict[int, np.ndarray]  # region number (a row of the table, from 1) -> where it is painted
#: The choice of the mask canvas's region list that adds a row to paint a new region's mask.
_NEW_REGION = 0
#: What each image upload is called in its errors.
_BACKGROUND, _SOURCE, _GIVEN = "the background image", "the image to find regions in", "the image to segment"


class Studio:
    """One loaded pipeline, its lock and the folder of the files it serves (removed under the `keep` budget);
    the upload `limits`; the handlers of every tab."""

    def __init__(self, model: str, pipe: Any, folder: Path | None = None, keep: Keep | None = None,
                 limits: Limits | None = None) -> None:
        self.model = model
        self.pipe = pipe
        self.lock = lock_of(pipe)
        self.folder = Path(tempfile.mkdtemp(prefix="attnkit-ui-")) if folder is None else Path(folder)
        if folder is None:  # a folder of its own goes with it
            weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.keeper = Keeper(self.folder, keep or Keep())
        self.limits = limits or Limits()

    def _request_folder(self) -> Path:
        """A fresh folder for one request's files, so that downloads of concurrent requests never clash; earlier
        requests' files past the budget go first."""
        self.keeper.sweep()
        self.folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.folder))

    @contextmanager
    def _running(self, steps: int, progress: gr.Progress) -> Iterator[dict[str, Any]]:
        """Hold the pipeline for one generation; yields the pipeline arguments that report its steps."""
        progress(0, desc="waiting for the model")
        with self.lock:
            yield {"callback_on_step_end": _progress(progress, steps)}

    def _sampling(self, seed: Any, steps: Any) -> tuple[int, int]:
        return _field(checks.SEED, seed, "seed"), _field(checks.POSITIVE, steps, "steps")

    def _options(self, steps: int, height: Any, width: Any, guidance: Any) -> dict[str, Any]:
        from ..run import sampling_options

        return sampling_options(self.model, self.pipe, steps, _size(height, "height"), _size(width, "width"),
                                _guidance(guidance))

    def _output_size(self, height: Any, width: Any) -> tuple[int, int]:
        """(width, height) of the image the fields ask for, blanks being the model's."""
        from ..pipeline import default_size

        side = default_size(self.pipe)
        return _size(width, "width") or side, _size(height, "height") or side

    def _picture(self, path: str | None, what: str) -> Image.Image | None:
        """An uploaded image (None when none was), read within the upload limits."""
        return None if not path else read_upload(path, what, self.limits)

    def check_upload(self, path: str | None, what: str) -> None:
        """Read an upload as soon as it arrives, so that a bad one is named then, not at the next click."""
        self._picture(path, what)

    def draw_over_last(self, last: Image.Image | None) -> str:
        """The last image generated on the Regional tab, as the canvases' background file."""
        if last is None:
            raise AttnkitError("generate an image on this tab first; it then becomes the background to draw over.")
        path = self._request_folder() / "background.png"
        last.save(path)
        return str(path)

    def generate(self, prompt: str, seed: Any, steps: Any, height: Any, width: Any, guidance: Any,
                 progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, str]:
        """Plain text-to-image, as `attnkit generate`: the image and its PNG with the record embedded."""
        from ..run import generate

        prompt = _prompt(prompt)
        seed, steps = self._sampling(seed, steps)
        path = self._request_folder() / "generate.png"
        with self._running(steps, progress) as extra:
            options = self._options(steps, height, width, guidance)
            result = generate(self.model, self.pipe, prompt, seed, options, out=path, **extra)
        return enlarged(result.image), str(path)

    def regional(self, rows: Any, grid: str, base: str, weight: Any, negative: str, seed: Any, steps: Any,
                 height: Any, width: Any, guidance: Any, true_cfg: Any = None, editor: dict | None = None,
                 painting: Any = None, masks: Masks | None = None, lora_files: Sequence[str] | None = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, str, Image.Image]:
        """Regional prompting, as `attnkit regional`: the image with region outlines, the PNG (no outlines) with the
        record `attnkit regional` embeds (painted masks in it as rows of 0 and 1), and the image for the page's
        "draw over" and "regions from an image". `true_cfg` is `--true-cfg-scale`, on the pipelines that take it;
        `editor` is the mask canvas, painting region `painting`; `masks` the other regions' masks; `lora_files` are
        LoRA files, each under its file name as the adapter name (`--lora NAME=PATH`; a shapes model's shipped LoRAs
        are there by name)."""
        from ..regional.outline import draw_outlines
        from ..run import regional, true_cfg_options

        size = self._output_size(height, width)
        spec = region_spec(rows, grid, base, weight, negative, self._spec_masks(rows, editor, painting, masks, size),
                           self._lora_files(lora_files))
        seed, steps = self._sampling(seed, steps)
        scale = _field(checks.GUIDANCE, true_cfg, "true CFG scale", "none")
        true_cfg = true_cfg_options(self.pipe, scale, "true CFG scale")
        path = self._request_folder() / "regional.png"
        with self._running(steps, progress) as extra:
            options = self._options(steps, height, width, guidance) | true_cfg
            result = regional(self.model, self.pipe, spec, seed, options, out=path, **extra)
        return draw_outlines(enlarged(result.image), result.spec, result.grid), str(path), result.image

    def _lora_files(self, paths: Sequence[str] | None) -> dict[str, str]:
        """Adapter name -> LoRA file: the shapes model's shipped LoRAs, then the uploads (named by file name)."""
        from ..shapes.lora import shipped_loras

        shipped = {name: str(path) for name, path in shipped_loras(self.model).items()}
        uploaded = {}
        for path in paths or []:
            if Path(path).suffix != ".safetensors":
                raise AttnkitError(f"{Path(path).name} is not a .safetensors LoRA file; upload the LoRA's "
                                   ".safetensors file (its name without the suffix is the adapter name).")
            uploaded[Path(path).stem] = str(path)
        return shipped | uploaded

    def _spec_masks(self, rows: Any, editor: dict | None, painting: Any, masks: Masks | None,
                    size: tuple[int, int]) -> dict[int, list[list[int]]]:
        """Every painted or uploaded mask as the spec's rows of 0 and 1 at the output `size`."""
        masks = _painted(masks, editor, painting)
        count = len(rows or [])
        spec_masks = {}
        for region, mask in sorted(masks.items()):
            if region > count:
                raise AttnkitError(f"a mask is painted for region {region}, but the table has {count} row(s): add "
                                   "a row with its prompt, or erase that mask.")
            spec_masks[region] = canvas.mask_rows(mask, *size)
            if not any(any(row) for row in spec_masks[region]):
                raise AttnkitError(f"region {region}'s mask covers no pixel of the {size[0]}x{size[1]} image (an "
                                   "output pixel is in when half of it is painted): paint more of it.")
        return spec_masks

    def save_spec(self, rows: Any, grid: str, base: str, weight: Any, negative: str, height: Any = None,
                  width: Any = None, editor: dict | None = None, painting: Any = None,
                  masks: Masks | None = None) -> list[str]:
        """The Regional tab's spec as spec.yaml and spec.json, checked as `attnkit regional --spec` would, with each
        mask as mask-<region>.png beside them (white = the region, at the output size)."""
        folder = self._request_folder()
        files = {}
        size = self._output_size(height, width)
        for region, rows_of in self._spec_masks(rows, editor, painting, masks, size).items():
            files[region] = folder / f"mask-{region}.png"
            Image.fromarray(np.asarray(rows_of, np.uint8) * 255).save(files[region])
        data = region_spec(rows, grid, base, weight, negative, {k: str(v) for k, v in files.items()}).as_dict()
        for entry in data["regions"]:
            if isinstance(entry.get("mask"), str):
                entry["mask"] = Path(entry["mask"]).name
        (folder / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (folder / "spec.json").write_text(json.dumps(data, indent=2) + "\n")
        return [str(folder / "spec.yaml"), str(folder / "spec.json"), *(str(p) for p in files.values())]

    def load_spec(self, paths: str | Sequence[str] | None, height: Any = None, width: Any = None,
                  background: str | None = None, sent: list | None = None) -> tuple[Any, ...]:
        """A YAML or JSON spec file, uploaded with the mask images it names, as the Regional tab's fields and
        canvases: rows, grid, base prompt, base weight, negative, the box canvas, the masks, the region painted, the
        mask canvas and its region list (and the boxes sent, `sent`). Mask names that lead outside the upload are
        refused."""
        background = self._picture(background, _BACKGROUND)
        from ..regional.spec import RegionSpec

        paths = [paths] if isinstance(paths, str) else list(paths or [])
        if not paths:
            raise AttnkitError("no spec file arrived; choose a .yaml, .yml or .json region spec (with the mask images "
                               "it names).")
        data, name, others = _spec_file(paths, self.limits)
        masks: Masks = {}
        for number, entry in enumerate(data.get("regions") or [] if isinstance(data, dict) else [], start=1):
            if not isinstance(entry, dict) or "mask" not in entry:
                continue
            mask, where = entry["mask"], f"{name}: region {number}"
            if isinstance(mask, list):
                try:
                    masks[number] = np.asarray(mask, dtype=np.float32) >= 0.5
                except (TypeError, ValueError):
                    raise AttnkitError(f"{where}: a mask given as a list must be rows of numbers in [0, 1].") from None
                continue
            mask = check_mask_name(mask, where)
            if mask not in others:
                raise AttnkitError(f"{where}: the mask {mask!r} was not uploaded; choose it together with the spec "
                                   "(both files at once).")
            masks[number] = canvas.mask_from_image(read_upload(others[mask], f"the mask {mask!r}", self.limits))
            entry["mask"] = Image.fromarray(masks[number].astype(np.uint8) * 255)
        spec = RegionSpec.from_dict(data)
        rows, grid, base, weight, negative = _spec_fields(spec)
        size = canvas.canvas_size(*self._output_size(height, width))
        boxes = self._boxes(rows, size, background, masks)
        return (rows, grid, base, weight, negative, boxes, masks, 1, _editor(size, background, rows, masks, 1),
                _painting(rows, masks, 1), _sent(sent, boxes))

    # ---- the canvases ----

    def _boxes(self, rows: Any, size: tuple[int, int], background: Image.Image | None,
               masks: Masks | None) -> dict[str, Any]:
        """The box canvas: the table's boxes over the background, the masks tinted."""
        return {"image": canvas.backdrop(size, background, masks), "boxes": canvas.table_boxes(rows, size)}

    def show_table(self, rows: Any, height: Any, width: Any, background: str | None, masks: Masks | None,
                   sent: list | None = None) -> tuple[Any, ...]:
        """The box canvas and the region list after the table was typed in."""
        background = self._picture(background, _BACKGROUND)
        size = canvas.canvas_size(*self._output_size(height, width))
        boxes = self._boxes(rows, size, background, masks)
        return boxes, _painting(rows, masks or {}), _sent(sent, boxes)

    def boxes_drawn(self, value: dict | None, rows: Any, masks: Masks | None,
                    sent: list | None = None) -> tuple[Any, ...]:
        """The table after a box was drawn, moved, resized or removed on the box canvas; the boxes relabelled with
        their region numbers; the region list; the boxes sent. Nothing changes while a box is still being drawn, nor
        when the canvas only shows boxes this server sent (`sent`): those are the table's own, perhaps older than
        what was typed since."""
        skip = gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if not value or not value.get("image"):
            return skip
        if value.get("orientation"):
            raise AttnkitError("the box canvas is turned; turn it back upright (the rotate buttons under it): boxes "
                               "are read on the upright image.")
        if _signature(value.get("boxes") or []) in (sent or []):
            return skip
        with Image.open(value["image"]) as image:
            size = image.size
        table = canvas.rows_from_boxes(rows, value.get("boxes") or [], size)
        if table is None:
            return skip
        boxes = {"image": value["image"], "boxes": canvas.table_boxes(table, size)}
        return table, boxes, _painting(table, masks or {}), _sent(sent, boxes)

    def redraw(self, rows: Any, height: Any, width: Any, background: str | None, editor: dict | None,
               painting: Any, masks: Masks | None, sent: list | None = None) -> tuple[Any, ...]:
        """Both canvases at the output size over the background (after either changed), and the masks with what the
        mask canvas holds."""
        background = self._picture(background, _BACKGROUND)
        size = canvas.canvas_size(*self._output_size(height, width))
        masks = _painted(masks, editor, painting)
        region = painting if isinstance(painting, int) and painting >= 1 else 1
        boxes = self._boxes(rows, size, background, masks)
        return boxes, _editor(size, background, rows, masks, region), masks, _sent(sent, boxes)

    def switch_region(self, choice: Any, rows: Any, height: Any, width: Any, background: str | None,
                      editor: dict | None, editing: Any, masks: Masks | None) -> tuple[Any, ...]:
        """The mask canvas on region `choice` (a new row for "new region"), the region it held kept in the masks:
        rows, masks, the region painted, the mask canvas, the region list."""
        background = self._picture(background, _BACKGROUND)
        masks = _painted(masks, editor, editing)
        table = [list(row) for row in rows or []]
        if choice == _NEW_REGION or choice is None:
            table.append(["", "", None, None, None, None, ""])
            choice = len(table)
        size = canvas.canvas_size(*self._output_size(height, width))
        return table, masks, choice, _editor(size, background, table, masks, choice), _painting(table, masks, choice)

    def upload_mask(self, path: str | None, rows: Any, height: Any, width: Any, background: str | None,
                    editor: dict | None, painting: Any, masks: Masks | None, sent: list | None = None
                    ) -> tuple[Any, ...]:
        """An uploaded mask image (white = the region) as the mask of the region being painted; its box, if any, is
        cleared, since a region takes one or the other: rows, box canvas, masks, mask canvas, region list."""
        background = self._picture(background, _BACKGROUND)
        if not path:
            raise AttnkitError("no mask image arrived; choose a PNG or JPEG where white marks the region.")
        table = [list(row) + [None] * (len(REGION_COLUMNS) - len(row)) for row in rows or []]
        if not isinstance(painting, int) or not 1 <= painting <= len(table):
            raise AttnkitError("choose the region the mask is for in the mask canvas's region list first.")
        mask = canvas.mask_from_image(read_upload(path, "the mask image", self.limits))
        if not mask.any():
            raise AttnkitError("the mask image is entirely black (or transparent): white marks the region; upload a "
                               "mask with the region in white.")
        masks = _painted(masks, editor, painting) | {painting: mask}
        if not all(_blank(cell) for cell in table[painting - 1][2:6]):
            table[painting - 1][2:6] = [None] * 4
            gr.Info(f"region {painting} now takes its area from the uploaded mask; its box was cleared.")
        size = canvas.canvas_size(*self._output_size(height, width))
        boxes = self._boxes(table, size, background, masks)
        return (table, boxes, masks, _editor(size, background, table, masks, painting),
                _painting(table, masks, painting), _sent(sent, boxes))

    def segment_regions(self, image: str | None, prompt: str, seed: Any, last: Image.Image | None,
                        threshold: Any = DEFAULT_THRESHOLDS[0],
                        progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, dict[str, Any]]:
        """Segments of the uploaded image, or else of the last image generated on this tab (`attnkit.segment`, as
        `attnkit segment --threshold` runs it): the overlay to click, and the segmentation (the page's state)."""
        from ..run import segment

        source = self._picture(image, _SOURCE) or last
        if source is None:
            raise AttnkitError("upload an image to find regions in, or generate one on this tab first (the last "
                               "generated image is used when none is uploaded).")
        seed = _field(checks.SEED, seed, "seed")
        kl = _field(checks.KL, threshold, "threshold")
        progress(0, desc="waiting for the model")
        with self.lock:
            progress(0, desc="segmenting")
            result = segment(self.model, self.pipe, _text(prompt), source.convert("RGB"), seed, {},
                             {"thresholds": (kl,) * len(DEFAULT_THRESHOLDS)})
        found = result.segmentation
        return enlarged(found.overlay()), {"labels": found.labels, "names": [s.label for s in found.segments]}

    def pick_segment(self, found: dict[str, Any] | None, rows: Any, height: Any, width: Any,
                     background: str | None, editor: dict | None, painting: Any, masks: Masks | None,
                     sent: list | None, event: gr.SelectData) -> tuple[Any, ...]:
        """The segment clicked on the overlay as a new region: a row named by the segment's word (blank without a
        prompt) whose mask is the segment: rows, box canvas, masks, region painted, mask canvas, region list."""
        background = self._picture(background, _BACKGROUND)
        if not found:
            raise AttnkitError("find the segments first (the Segment button), then click one on the overlay.")
        labels = found["labels"]
        height_px, width_px = labels.shape
        factor = max(1, math.ceil(SHOWN_SIDE / min(height_px, width_px)))  # the overlay is shown enlarged
        x, y = (int(v) for v in event.index)
        segment = int(labels[min(max(y // factor, 0), height_px - 1), min(max(x // factor, 0), width_px - 1)])
        name = found["names"][segment] if segment < len(found["names"]) else None
        masks = _painted(masks, editor, painting)
        table = [list(row) for row in rows or []] + [[name or "", "", None, None, None, None]]
        region = len(table)
        masks[region] = labels == segment
        size = canvas.canvas_size(*self._output_size(height, width))
        boxes = self._boxes(table, size, background, masks)
        return (table, boxes, masks, region, _editor(size, background, table, masks, region),
                _painting(table, masks, region), _sent(sent, boxes))

    def maps(self, prompt: str, seed: Any, steps: Any, height: Any, width: Any, guidance: Any,
             progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, Any, str, str, dict[str, str]]:
        """The image, one choice per prompt word, the first word's overlay, maps.safetensors, and every word's
        overlay file (the page's state)."""
        from ..maps import plot
        from ..run import maps as word_maps

        prompt = _prompt(prompt)
        seed, steps = self._sampling(seed, steps)
        folder = self._request_folder()
        with self._running(steps, progress) as extra:
            options = self._options(steps, height, width, guidance)
            result = word_maps(self.model, self.pipe, prompt, seed, options, **extra)
            result.trace.save(folder / "maps.safetensors")
        image, maps = result.image, result.maps
        if not maps:
            raise AttnkitError(f"the prompt {prompt!r} has no words to map; enter a prompt with words.")
        overlays = {}
        for index, (word, heat) in enumerate(maps.items()):
            overlays[word] = str(folder / f"word-{index}.png")
            plot.overlay(enlarged(image), heat).save(overlays[word])
        first = next(iter(overlays))
        return (enlarged(image), gr.Radio(choices=list(overlays), value=first), overlays[first],
                str(folder / "maps.safetensors"), overlays)

    def segment(self, prompt: str, image: str | None, seed: Any, steps: Any, height: Any, width: Any,
                guidance: Any, progress: gr.Progress = gr.Progress()) -> tuple[Image.Image, Image.Image, list[list]]:
        """Segments of the uploaded image, or of one generated from the prompt, as `attnkit segment`: the image, its
        overlay, and a row (id, label, area, box) per segment."""
        from ..run import segment

        prompt = _text(prompt)
        seed, steps = self._sampling(seed, steps)
        image = self._picture(image, _GIVEN)
        if image is None and not prompt:
            raise AttnkitError("enter a prompt to segment a generated image, or upload an image (a prompt describing "
                               "it then names the segments).")
        with self._running(steps, progress) as extra:
            options = {} if image is not None else self._options(steps, height, width, guidance)
            given = None if image is None else image.convert("RGB")
            result = segment(self.model, self.pipe, prompt, given, seed, options, **extra)
        segments = result.segmentation.segments
        rows = [[s.id, s.label or "", s.area, " ".join(str(v) for v in s.bbox)] for s in segments]
        return enlarged(result.image), enlarged(result.segmentation.overlay()), rows

    def video_edit(self, video: str | None, prompt: str, attend: str, strength: Any, frames: Any, seed: Any,
                   steps: Any, guidance: Any, progress: gr.Progress = gr.Progress()) -> tuple[str, list[Image.Image]]:
        """A video (mp4, GIF) edited frame by frame, as `attnkit video-edit`: the mp4 and its frames. `attend` is a
        published method's name (`--method`) or the frames later frames attend to (`--attend`)."""
        from ..run import video_edit
        from ..videoio import read_frames

        if not video:
            raise AttnkitError("no video arrived; upload an .mp4 or .gif clip to edit.")
        prompt = _prompt(prompt)
        seed, steps = self._sampling(seed, steps)
        count = _field(checks.POSITIVE, frames, "frames", "all")
        amount = _field(checks.STRENGTH, strength, "strength")
        total = sum(1 for _ in read_frames(video, count))
        out = self._request_folder() / "video.mp4"
        progress(0, desc="waiting for the model")
        with self.lock:
            method = attend if attend in VIDEO_METHODS else None
            video_edit(self.model, self.pipe, Path(video), out, prompt, method=method,
                       attend=None if method else attend, strength=amount, steps=steps,
                       seed=seed, guidance=_guidance(guidance), frames=count,
                       on_frame=lambda done: progress((done, total), desc="editing frames", unit="frames"))
        return str(out), [enlarged(frame) for frame in read_frames(out)]


def _painted(masks: Masks | None, editor: dict | None, region: Any) -> Masks:
    """The masks with what the mask canvas holds for `region` (its one layer; erased to nothing, no mask)."""
    masks = dict(masks or {})
    layers = (editor or {}).get("layers") or []
    if not isinstance(region, int) or region < 1 or not layers:
        return masks
    if len(layers) > 1:
        raise AttnkitError(f"the mask canvas holds {len(layers)} layers; it paints one region at a time: send one "
                           "layer, the mask of the region chosen in its region list.")
    painted = canvas.mask_from_layer(layers[0])
    if painted.any():
        masks[region] = painted
    else:
        masks.pop(region, None)
    return masks


def _signature(boxes: Sequence[dict[str, Any]]) -> tuple:
    """What identifies a set of boxes on the box canvas: labels and pixels, in any order."""
    return tuple(sorted((str(b.get("label")), b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in boxes))


def _sent(sent: list | None, boxes: dict[str, Any], kept: int = 16) -> list:
    """The signatures of the last `kept` box sets this server put on a page's box canvas, `boxes` the newest."""
    return [*(sent or [])[-(kept - 1):], _signature(boxes["boxes"])]


def _editor(size: tuple[int, int], background: Image.Image | None, rows: Any, masks: Masks,
            region: int) -> dict[str, Any]:
    """The mask canvas painting `region`: its mask as the one layer, over the background with the other regions'
    masks and boxes."""
    return {"background": canvas.backdrop(size, background, masks, rows, skip=region),
            "layers": [canvas.mask_layer(masks.get(region), size, region)], "composite": None}


def _painting(rows: Any, masks: Masks, value: int | None = None) -> gr.Radio:
    """The mask canvas's region list: a choice per row (marked when it has a mask), and one for a new region."""
    choices = [(canvas.box_label(number, row[0] if row else "") + (" (mask)" if number in masks else ""), number)
               for number, row in enumerate(rows or [], start=1)]
    return gr.Radio(choices=[*choices, ("new region", _NEW_REGION)], **({} if value is None else {"value": value}))


def _prompt(prompt: Any) -> str:
    if not _text(prompt):
        raise AttnkitError("the prompt is empty; enter what to generate, e.g. 'a red circle'.")
    return _text(prompt)


def _show_word(word: str | None, overlays: dict[str, str] | None) -> str | None:
    """The overlay of the word clicked on the Maps tab."""
    return (overlays or {}).get(word)


def _sampling_inputs(tab: str, size: int) -> list[gr.components.Component]:
    """Seed, steps, height, width (shown at the model's default `size`) and guidance fields of one tab."""
    with gr.Row():
        fields = [gr.Number(label="seed", value=0, precision=0, elem_id=f"{tab}-seed"),
                  gr.Number(label="steps", value=28, precision=0, elem_id=f"{tab}-steps"),
                  gr.Number(label="height", value=size, precision=0, elem_id=f"{tab}-height"),
                  gr.Number(label="width", value=size, precision=0, elem_id=f"{tab}-width"),
                  gr.Textbox(label="guidance (blank: the model's)", elem_id=f"{tab}-guidance")]
    return fields


def build_app(studio: Studio) -> gr.Blocks:
    """The page: a tab per feature, each button an endpoint named after its command."""
    from ..pipeline import default_size, takes_true_cfg

    size = default_size(studio.pipe)
    shown = canvas.canvas_size(size, size)
    with gr.Blocks(title=f"attnkit · {studio.model}", analytics_enabled=False) as app:
        gr.Markdown(f"## attnkit · `{studio.model}`")
        with gr.Tab("Regional", id="regional"):
            masks = gr.State({})
            editing = gr.State(1)  # the region the mask canvas holds
            last = gr.State(None)  # the last image generated on this tab
            found = gr.State(None)  # the segmentation whose segments can be clicked
            first = studio._boxes(_EXAMPLE_REGIONS, shown, None, {})
            sent = gr.State(_sent([], first))  # box sets this server put on the box canvas, to tell echoes from drawing
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Tabs():
                        with gr.Tab("Boxes", id="boxes-tab"):
                            boxes = image_annotator(
                                first, image_type="filepath",
                                disable_edit_boxes=True, sources=[], show_clear_button=False,
                                show_download_button=False, show_share_button=False, box_min_size=4,
                                label="boxes: the square button draws a new region, the hand moves and resizes; "
                                      "each box is a row of the table", elem_id="box-canvas")
                        with gr.Tab("Masks", id="masks-tab"):
                            painting = gr.Radio(label="region to paint (the brush paints it, the eraser unpaints; a "
                                                      "region with a mask leaves its box cells blank)",
                                                choices=[(canvas.box_label(i + 1, r[0]), i + 1)
                                                         for i, r in enumerate(_EXAMPLE_REGIONS)]
                                                + [("new region", _NEW_REGION)], value=1, elem_id="painting")
                            editor = gr.ImageEditor(
                                value=_editor(shown, None, _EXAMPLE_REGIONS, {}, 1), type="pil", image_mode="RGBA",
                                layers=False, transforms=(), sources=(), format="png", canvas_size=shown,
                                brush=gr.Brush(colors=["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"],
                                               default_size=12, color_mode="fixed"),
                                eraser=gr.Eraser(default_size=12), label="mask of the region chosen above",
                                elem_id="mask-canvas")
                            mask_file = gr.UploadButton("Upload a mask for this region (white = inside)",
                                                        file_types=["image"], size="sm", elem_id="upload-mask")
                        with gr.Tab("Regions from an image", id="from-image-tab"):
                            source = gr.File(label="image to find regions in (blank: the last image generated here)",
                                             file_types=["image"], elem_id="regions-source")
                            describe = gr.Textbox(label="what it shows (names the segments), e.g. a red circle",
                                                  elem_id="regions-prompt")
                            threshold = gr.Number(label="threshold: KL distance under which segments merge; lower "
                                                        "splits more (the shapes models need about 0.15)",
                                                  value=DEFAULT_THRESHOLDS[0], elem_id="regions-threshold")
                            find = gr.Button("Segment", elem_id="regions-segment")
                            segments = gr.Image(label="segments: click one to make it a region", format="png",
                                                interactive=False, elem_id="regions-segments")
                    background = gr.File(label="background image to draw over (optional)", file_types=["image"],
                                         elem_id="canvas-background")
                    use_last = gr.Button("Draw over the last generated image", size="sm", elem_id="use-last")
                with gr.Column(scale=2):
                    rows = gr.Dataframe(value=_EXAMPLE_REGIONS, headers=list(REGION_COLUMNS),
                                        datatype=["str", "str", "number", "number", "number", "number", "str"],
                                        column_count=len(REGION_COLUMNS), type="array",
                                        interactive=True, elem_id="regions",
                                        label="regions: a prompt per row, its box as fractions of the image "
                                              "(x0, y0 top left; x1, y1 bottom right; later rows win overlaps), "
                                              "and LoRA adapters for its tokens (name or name:weight)")
                    grid = gr.Textbox(label="grid instead of boxes (regional-prompter ratios, e.g. 1,1)",
                                      elem_id="grid")
                    with gr.Row():
                        base = gr.Textbox(label="base prompt (whole image)", value=_EXAMPLE_BASE, elem_id="base")
                        weight = gr.Number(label="base weight", value=0.5, elem_id="base-weight")
                    negative = gr.Textbox(label="negative prompt", elem_id="negative")
                    with gr.Accordion(f"LoRA files for the lora column ({_shipped_loras(studio.model)})",
                                      open=False):
                        lora_files = gr.File(label="adapter name = file name", file_count="multiple",
                                             file_types=[".safetensors"], elem_id="lora-files")
                    sampling = _sampling_inputs("regional", size)
                    true_cfg = gr.Textbox(label="true CFG scale, against the negatives (blank: none)",
                                          elem_id="true-cfg", visible=takes_true_cfg(studio.pipe))
                    run = gr.Button("Generate", variant="primary", elem_id="regional-generate")
                    outlined = gr.Image(label="image with region outlines", format="png", elem_id="regional-image")
                    png = gr.File(label="PNG with the spec embedded", elem_id="regional-png")
                    with gr.Row():
                        upload = gr.UploadButton("Load spec (with its mask images)",
                                                 file_types=[".yaml", ".yml", ".json", "image"],
                                                 file_count="multiple", size="sm", elem_id="load-spec")
                        save = gr.Button("Save spec", size="sm", elem_id="save-spec")
                    spec_files = gr.File(label="spec files (YAML, JSON and mask PNGs)", file_count="multiple",
                                         height=120, elem_id="spec-files")
            height, width = sampling[2], sampling[3]
            fields = [rows, grid, base, weight, negative]
            private = {"api_visibility": "private"}
            run.click(_shown(studio.regional), fields + sampling + [true_cfg, editor, painting, masks, lora_files],
                      [outlined, png, last], api_name="regional")
            save.click(_shown(studio.save_spec), fields + [height, width, editor, painting, masks], spec_files,
                       api_name="save_spec")
            upload.upload(_shown(studio.load_spec), [upload, height, width, background, sent],
                          fields + [boxes, masks, editing, editor, painting, sent], api_name="load_spec")
            rows.input(_shown(studio.show_table), [rows, height, width, background, masks, sent],
                       [boxes, painting, sent], **private)
            boxes.change(_shown(studio.boxes_drawn), [boxes, rows, masks, sent], [rows, boxes, painting, sent],
                         **private)
            redraw = (_shown(studio.redraw), [rows, height, width, background, editor, painting, masks, sent],
                      [boxes, editor, masks, sent])
            for changed in (background.change, height.input, width.input):
                changed(*redraw, **private)
            painting.input(_shown(studio.switch_region),
                           [painting, rows, height, width, background, editor, editing, masks],
                           [rows, masks, editing, editor, painting], **private)
            mask_file.upload(_shown(studio.upload_mask),
                             [mask_file, rows, height, width, background, editor, painting, masks, sent],
                             [rows, boxes, masks, editor, painting, sent], **private)
            use_last.click(_shown(studio.draw_over_last), last, background, **private)
            find.click(_shown(studio.segment_regions), [source, describe, sampling[0], last, threshold],
                       [segments, found],
                       api_name="regions_from_image")
            segments.select(_shown(studio.pick_segment),
                            [found, rows, height, width, background, editor, painting, masks, sent],
                            [rows, boxes, masks, editing, editor, painting, sent], **private)
            for upload_field, what in ((source, _SOURCE), (background, _BACKGROUND)):
                upload_field.upload(_shown(functools.partial(studio.check_upload, what=what)), upload_field, None,
                                    **private)  # a bad upload is named at once, not at the next click

        with gr.Tab("Maps", id="maps"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="prompt", value=_EXAMPLE_BASE, elem_id="maps-prompt")
                    sampling = _sampling_inputs("maps", size)
                    run = gr.Button("Generate", variant="primary", elem_id="maps-generate")
                    words = gr.Radio(label="words: click one to see where it went", choices=[], elem_id="words")
                    file = gr.File(label="maps.safetensors", elem_id="maps-file")
                with gr.Column():
                    image = gr.Image(label="image", format="png", elem_id="maps-image")
                    overlay = gr.Image(label="word map", format="png", elem_id="word-overlay")
            overlays = gr.State({})
            run.click(_shown(studio.maps), [prompt] + sampling, [image, words, overlay, file, overlays],
                      api_name="maps")
            words.select(_show_word, [words, overlays], overlay, api_visibility="private")

        with gr.Tab("Segment", id="segment"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="prompt (with an uploaded image: its description, to name segments)",
                                        value="a red circle", elem_id="segment-prompt")
                    given = gr.File(label="image to segment (optional; it keeps its own size: height and width apply "
                                          "to a generated image)", file_types=["image"], elem_id="segment-input")
                    sampling = _sampling_inputs("segment", size)
                    run = gr.Button("Segment", variant="primary", elem_id="segment-run")
                with gr.Column():
                    image = gr.Image(label="image", format="png", elem_id="segment-image")
                    overlay = gr.Image(label="segments", format="png", elem_id="segment-overlay")
                    labels = gr.Dataframe(headers=["id", "label", "area", "box (left top right bottom)"],
                                          interactive=False, label="segments", elem_id="segment-labels")
            run.click(_shown(studio.segment), [prompt, given] + sampling, [image, overlay, labels], api_name="segment")
            given.upload(_shown(functools.partial(studio.check_upload, what=_GIVEN)), given, None,
                         api_visibility="private")

        with gr.Tab("Video", id="video"):
            with gr.Row():
                with gr.Column():
                    clip = gr.File(label="video to edit (.mp4 or .gif)", file_types=[".mp4", ".gif"],
                                   elem_id="video-input")
                    prompt = gr.Textbox(label="prompt: what the edited frames show", elem_id="video-prompt")
                    attend = gr.Radio(label="cross-frame attention: a published method, or the frames later frames "
                                            "attend to", choices=[*VIDEO_METHODS, *ATTEND],
                                      value="first+previous", elem_id="video-attend")
                    with gr.Row():
                        strength = gr.Number(label="strength", value=0.6, elem_id="video-strength")
                        frames = gr.Number(label="frames (blank: all)", precision=0, elem_id="video-frames")
                        seed = gr.Number(label="seed", value=0, precision=0, elem_id="video-seed")
                        steps = gr.Number(label="steps", value=28, precision=0, elem_id="video-steps")
                        guidance = gr.Textbox(label="guidance (blank: the model's)", elem_id="video-guidance")
                    run = gr.Button("Edit", variant="primary", elem_id="video-run")
                with gr.Column():
                    edited = gr.File(label="edited video (mp4)", elem_id="video-output")
                    gallery = gr.Gallery(label="edited frames", columns=4, elem_id="video-frames-out")
            run.click(_shown(studio.video_edit), [clip, prompt, attend, strength, frames, seed, steps, guidance],
                      [edited, gallery], api_name="video_edit")

        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="prompt", value=_EXAMPLE_BASE, elem_id="generate-prompt")
                    sampling = _sampling_inputs("generate", size)
                    run = gr.Button("Generate", variant="primary", elem_id="generate-run")
                with gr.Column():
                    image = gr.Image(label="image", format="png", elem_id="generate-image")
                    png = gr.File(label="PNG with the prompt embedded", elem_id="generate-png")
            run.click(_shown(studio.generate), [prompt] + sampling, [image, png], api_name="generate")
    app.queue(default_concurrency_limit=None)  # the pipeline's lock orders generations; waiting ones show it
    studio.keeper.attach(app)
    return app


def load(model: str, loader: Callable[[str], Any] | None = None) -> Any:
    """`model`'s pipeline from `loader` (default `attnkit.run.load_pipeline`); a file that cannot be read as a model
    is an AttnkitError that names the model, anything else (a bug) keeps its traceback."""
    from ..run import load_pipeline

    try:
        return (loader or load_pipeline)(model)
    except AttnkitError:
        raise
    except (OSError, ValueError, ImportError) as error:
        raise AttnkitError(f"cannot load the model {model!r} ({type(error).__name__}: {error}). Give a built-in name, "
                           "a folder written by `save_pretrained`, or a hub id that is downloaded.") from error


def check_port(host: str, port: int) -> None:
    """An AttnkitError naming the address when nothing could listen there, before the model takes time to load."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise AttnkitError(f"cannot serve on {host}:{port} ({error.strerror or error}): another program may be "
                           "listening there; stop it, or pick a free port with --port.") from None


def launch(model: str = DEFAULT_MODEL, host: str = "127.0.0.1", port: int = 7860,
           loader: Callable[[str], Any] | None = None, keep: Keep | None = None, limits: Limits | None = None,
           auth: tuple[str, str] | None = None, **launch_kwargs: Any) -> gr.Blocks:
    """Load `model` once (with `loader`, default `attnkit.run.load_pipeline`) and serve the app on `host`:`port`,
    behind Gradio's login when `auth` (user, password) is given; request files are removed under the `keep` budget,
    uploads refused past `limits`. `launch_kwargs` go to `gr.Blocks.launch` (e.g. `prevent_thread_lock=True` to
    return at once, serving on). Serving beyond this machine prints a warning."""
    check_port(host, port)
    studio = Studio(model, load(model, loader), keep=keep, limits=limits)
    app = build_app(studio)
    if exposed(host):
        print(f"attnkit: warning: serving on {host}: anyone who can reach this machine on the network can use this "
              "page, and so its GPU" + ("" if auth else ", with no login (add --auth USER:PASS)")
              + "; serve on 127.0.0.1 to keep it to this machine.", file=sys.stderr)
    try:
        app.launch(server_name=host, server_port=port, auth=auth, max_file_size=studio.limits.max_bytes,
                   **launch_kwargs)
    except OSError as error:
        raise AttnkitError(f"cannot serve on {host}:{port} ({error}); pick a free port with --port.") from None
    studio.keeper.run_every(min(60.0, studio.keeper.keep.max_age / 2))
    atexit.register(studio.keeper.sweep, math.inf)  # what is left goes with the server
    return app
