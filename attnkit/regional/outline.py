"""Region outlines drawn on a generated image, along token borders: what the mask really used, not the spec's
fractions (a box edge inside a token moves to the border the overlap rule picked)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from .spec import BASE, RegionSpec

__all__ = ["draw_outlines"]

_COLOURS = ((255, 64, 64), (64, 160, 255), (80, 220, 80), (255, 200, 0), (200, 80, 255), (0, 220, 220))


def draw_outlines(image: Image.Image, spec: RegionSpec, grid: tuple[int, int]) -> Image.Image:
    """A copy of `image` with each region's border on the token grid and its number at its centre."""
    rows, cols = grid
    owners = spec.owners(grid).view(rows, cols).tolist()
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    sy, sx = out.height / rows, out.width / cols
    width = max(1, round(min(sx, sy) / 8))
    for r in range(rows):
        for c in range(cols):
            owner = owners[r][c]
            if owner == BASE:
                continue
            colour = _COLOURS[owner % len(_COLOURS)]
            x0, y0, x1, y1 = c * sx, r * sy, (c + 1) * sx, (r + 1) * sy
            if c + 1 == cols or owners[r][c + 1] != owner:
                draw.line([(x1 - width / 2, y0), (x1 - width / 2, y1)], fill=colour, width=width)
            if c == 0 or owners[r][c - 1] != owner:
                draw.line([(x0 + width / 2, y0), (x0 + width / 2, y1)], fill=colour, width=width)
            if r + 1 == rows or owners[r + 1][c] != owner:
                draw.line([(x0, y1 - width / 2), (x1, y1 - width / 2)], fill=colour, width=width)
            if r == 0 or owners[r - 1][c] != owner:
                draw.line([(x0, y0 + width / 2), (x1, y0 + width / 2)], fill=colour, width=width)
    for index in range(len(spec.regions)):
        cells = [(r, c) for r in range(rows) for c in range(cols) if owners[r][c] == index]
        if cells:
            y = (sum(r for r, _ in cells) / len(cells) + 0.5) * sy
            x = (sum(c for _, c in cells) / len(cells) + 0.5) * sx
            draw.text((x, y), str(index + 1), fill=_COLOURS[index % len(_COLOURS)], anchor="mm")
    return out
