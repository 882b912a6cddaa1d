"""The Regional tab's canvas, as plain values: region boxes as the box canvas draws them, region masks as the mask
canvas paints them, and the regions table they stay in step with.

The canvas is the output image scaled up by a whole factor (at least SHOWN_SIDE a side), so that a box drawn to the
canvas's pixel is a box to a fraction of the image well under one percent. The table holds the truth (fractions);
the canvas is drawn from it, and a box moved on the canvas writes back only the rows it changed, so a typed 0.3
stays 0.3. A mask is a boolean array of any size (white where the region is); the spec takes it as rows of 0 and 1
at the output size, which the image's record then carries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHOWN_SIDE",
    "backdrop",
    "blank",
    "box_label",
    "canvas_size",
    "colour",
    "enlarged",
    "mask_from_image",
    "mask_from_layer",
    "mask_layer",
    "mask_rows",
    "rows_from_boxes",
    "table_boxes",
]

#: Smallest side the page shows an image at: small models (the shapes models draw 64 px) would be specks.
SHOWN_SIDE = 384

#: Region colours on the canvases (region k takes colour k - 1, cycling).
_COLOURS = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127)]
_LABEL = re.compile(r"^\s*(\d+)\b")


def colour(region: int) -> tuple[int, int, int]:
    """The canvas colour of region `region` (1-based)."""
    return _COLOURS[(region - 1) % len(_COLOURS)]


def enlarged(image: Image.Image) -> Image.Image:
    """`image` scaled up by a whole factor, pixels kept square (nearest neighbour), to at least SHOWN_SIDE a side
    for the page; downloads keep the generated size."""
    factor = max(1, math.ceil(SHOWN_SIDE / min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def canvas_size(width: int, height: int) -> tuple[int, int]:
    """The canvas of a `width` x `height` output: the output scaled by the smallest whole factor that gives it at
    least SHOWN_SIDE a side."""
    factor = max(1, math.ceil(SHOWN_SIDE / min(width, height)))
    return width * factor, height * factor


def blank(cell: Any) -> bool:
    """An empty table cell: None, NaN (pandas' blank) or whitespace."""
    if isinstance(cell, str):
        return not cell.strip()
    return cell is None or (isinstance(cell, float) and math.isnan(cell))


def _number(cell: Any) -> float | None:
    try:
        number = float(cell)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _box(row: Sequence[Any]) -> list[float] | None:
    """The row's box as four numbers, or None when a cell is blank or not a number (the table reports those)."""
    cells = list(row[2:6]) + [None] * (6 - len(row))
    numbers = [_number(cell) for cell in cells[:4]]
    return None if any(n is None for n in numbers) else numbers  # type: ignore[return-value]


def box_label(region: int, prompt: Any) -> str:
    """A box's label on the canvas: the region's number, then its prompt."""
    text = "" if blank(prompt) else str(prompt).strip()
    return f"{region} · {text}" if text else str(region)


def _pixels(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    return (round(box[0] * width), round(box[1] * height), round(box[2] * width), round(box[3] * height))


def table_boxes(rows: Sequence[Sequence[Any]] | None, size: tuple[int, int]) -> list[dict[str, Any]]:
    """The box canvas's boxes for the table's rows that hold a box, in pixels of a canvas of `size` (width,
    height), labelled with their region number and prompt."""
    boxes = []
    for index, row in enumerate(rows or [], start=1):
        box = _box(row)
        if box is None:
            continue
        xmin, ymin, xmax, ymax = _pixels(box, size)
        boxes.append({"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax, "label": box_label(index, row[0]),
                      "color": colour(index)})
    return boxes


def _region_of(label: Any) -> int | None:
    match = _LABEL.match(label) if isinstance(label, str) else None
    return int(match.group(1)) if match else None


def rows_from_boxes(rows: Sequence[Sequence[Any]] | None, boxes: Sequence[dict[str, Any]],
                    size: tuple[int, int]) -> list[list[Any]] | None:
    """The table after the user drew on the box canvas, or None when nothing changed: a box moved or resized
    rewrites its row's box (as fractions to 4 places), a new box (no region label yet) adds a row with a blank
    prompt, a box removed clears its row's box cells. A box still being drawn (no width or height) changes
    nothing yet."""
    width, height = size
    table = [list(row) + [None] * (6 - len(row)) for row in rows or []]
    if any(box["xmax"] <= box["xmin"] or box["ymax"] <= box["ymin"] for box in boxes):
        return None
    changed = False
    drawn: dict[int, dict[str, Any]] = {}
    new = []
    for box in reversed(boxes):  # the canvas lists the newest box first
        region = _region_of(box.get("label"))
        if region is None or not 1 <= region <= len(table) or region in drawn:
            new.append(box)
        else:
            drawn[region] = box
    for index, row in enumerate(table, start=1):
        old = _box(row)
        box = drawn.get(index)
        if box is None:
            if old is not None:
                row[2:6] = [None] * 4
                changed = True
            continue
        pixels = (box["xmin"], box["ymin"], box["xmax"], box["ymax"])
        if old is None or _pixels(old, size) != pixels:
            row[2:6] = _fractions(pixels, width, height)
            changed = True
    for box in new:
        table.append(["", "", *_fractions((box["xmin"], box["ymin"], box["xmax"], box["ymax"]), width, height)])
        changed = True
    return table if changed else None


def _fractions(pixels: Sequence[int], width: int, height: int) -> list[float]:
    x0, y0, x1, y1 = pixels
    return [round(min(max(x0 / width, 0.0), 1.0), 4), round(min(max(y0 / height, 0.0), 1.0), 4),
            round(min(max(x1 / width, 0.0), 1.0), 4), round(min(max(y1 / height, 0.0), 1.0), 4)]


def backdrop(size: tuple[int, int], background: Image.Image | None, masks: dict[int, np.ndarray] | None = None,
             rows: Sequence[Sequence[Any]] | None = None, skip: int | None = None) -> Image.Image:
    """What the canvases draw over: the background image stretched to the canvas (light grey without one), other
    regions' masks tinted in their colours and their boxes outlined (all but region `skip`)."""
    image = (background.convert("RGB").resize(size, Image.Resampling.BILINEAR) if background is not None
             else Image.new("RGB", size, (236, 236, 236)))
    tint = Image.new("RGBA", size, (0, 0, 0, 0))
    for region, mask in sorted((masks or {}).items()):
        if region == skip or not mask.any():
            continue
        shown = Image.fromarray(mask.astype(np.uint8) * 90).resize(size, Image.Resampling.NEAREST)
        tint.paste(Image.new("RGBA", size, (*colour(region), 255)), (0, 0), shown)
    image = Image.alpha_composite(image.convert("RGBA"), tint)
    draw = ImageDraw.Draw(image)
    for index, row in enumerate(rows or [], start=1):
        box = _box(row)
        if index != skip and box is not None:
            draw.rectangle(_pixels(box, size), outline=(*colour(index), 255), width=2)
    return image.convert("RGB")


def mask_layer(mask: np.ndarray | None, size: tuple[int, int], region: int) -> Image.Image:
    """Region `region`'s mask as the mask canvas's layer: its colour, opaque where the mask is, at the canvas
    `size` (nearest neighbour, so the painted pixels stay exact)."""
    alpha = (Image.new("L", size, 0) if mask is None
             else Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST))
    layer = Image.new("RGBA", size, (*colour(region), 0))
    layer.putalpha(alpha)
    return layer


def mask_from_layer(layer: Image.Image | np.ndarray) -> np.ndarray:
    """The painted pixels of a mask canvas layer: at least half opaque (the eraser makes pixels transparent)."""
    image = layer if isinstance(layer, Image.Image) else Image.fromarray(np.asarray(layer))
    if "A" not in image.getbands():
        return np.asarray(image.convert("L")) >= 128  # an uploaded layer without alpha: white paints
    return np.asarray(image.getchannel("A")) >= 128


def mask_from_image(image: Image.Image) -> np.ndarray:
    """An uploaded mask image: white (at least half grey) marks the region; a transparent pixel is outside."""
    grey = np.asarray(image.convert("L")) >= 128
    if "A" in image.getbands():
        grey &= np.asarray(image.getchannel("A")) >= 128
    return grey


def mask_rows(mask: np.ndarray, width: int, height: int) -> list[list[int]]:
    """A mask at the output size, as the spec's rows of 0 and 1: each output pixel is in the region when at least
    half of what was painted over it is (area average)."""
    area = Image.fromarray(mask.astype(np.float32)).resize((width, height), Image.Resampling.BOX)
    return (np.asarray(area) >= 0.5).astype(int).tolist()
