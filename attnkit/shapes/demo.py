"""The demo behind `attnkit demo`: one seed, a plain prompt next to the same objects placed by regional prompting.

Images are shown at 256 px (64 px models scaled up 4x, nearest, so the flat shapes stay crisp). Region outlines are
drawn in the colour their prompt asks for, so a glance shows whether each object landed in its own region.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..maps import trace
from . import CONTROLNETS, GUIDANCE, STEPS, call_kwargs, guidance_kwargs, image_size, load
from .data import PALETTE, SIZE, random_video
from .evaluate import VIDEO_STRENGTH, generate, halves, recolour_prompt
from .regional import regional_images

__all__ = ["DEMO_LAYOUT", "run_demo", "video_demo"]

#: Red circle on the left, blue square on the right.
DEMO_LAYOUT: tuple[tuple[str, str], tuple[str, str]] = (("red", "circle"), ("blue", "square"))
_SCALE = 4
_MAP_WORDS = ("red", "circle", "blue", "square")


def _big(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image).resize((SIZE * _SCALE, SIZE * _SCALE), Image.NEAREST)


def _titled(image: Image.Image, title: str) -> Image.Image:
    canvas = Image.new("RGB", (image.width, image.height + 16), (255, 255, 255))
    canvas.paste(image, (0, 16))
    ImageDraw.Draw(canvas).text((4, 2), title, fill=(0, 0, 0))
    return canvas


def _outlined(image: np.ndarray) -> Image.Image:
    """The image with each half outlined in the colour its region prompt names."""
    big = _big(image)
    draw = ImageDraw.Draw(big)
    for region, (color, _) in zip(halves(), DEMO_LAYOUT):
        cols = np.nonzero(region.any(0))[0]
        box = (int(cols[0]) * _SCALE + 1, 1, (int(cols[-1]) + 1) * _SCALE - 2, SIZE * _SCALE - 2)
        draw.rectangle(box, outline=PALETTE[color], width=2)
    return big


def _heat(image: np.ndarray, heat: torch.Tensor) -> Image.Image:
    """The map (stretched to [0, 1]) as a white glow over a darkened image."""
    h = torch.nn.functional.interpolate(heat.float()[None, None], size=(SIZE * _SCALE,) * 2, mode="bilinear")[0, 0]
    h = ((h - h.min()) / (h.max() - h.min()).clamp_min(1e-12)).numpy()[..., None]
    base = np.asarray(_big(image), dtype=np.float32) * 0.35
    return Image.fromarray((base + (255 - base) * h).clip(0, 255).astype(np.uint8))


def _row(panels: list[Image.Image]) -> Image.Image:
    row = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), max(p.height for p in panels)),
                    (255, 255, 255))
    x = 0
    for panel in panels:
        row.paste(panel, (x, 0))
        x += panel.width + 8
    return row


def run_demo(model: str, out: Path, seed: int = 0) -> list[Path]:
    """Writes plain.png, regional.png, maps.png and demo.png."""
    pipe = load(model)
    pipe.set_progress_bar_config(disable=True)
    left, right = DEMO_LAYOUT
    prompt = f"a {left[0]} {left[1]} and a {right[0]} {right[1]}"
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with torch.inference_mode():
        with trace(pipe, prompt) as tc:
            plain = generate(pipe, [prompt], [seed])[0]
        maps = [_titled(_heat(plain, tc.heatmap(w)), f'map of "{w}"') for w in _MAP_WORDS]
        panels = [_titled(_outlined(plain), f"plain: {prompt}")]
        _big(plain).save(out / "plain.png")
        written.append(out / "plain.png")
        regional = regional_images(pipe, [DEMO_LAYOUT], [seed])[0]
        panels.append(_titled(_outlined(regional), f"regional: {left[0]} {left[1]} | {right[0]} {right[1]}"))
        _outlined(regional).save(out / "regional.png")
        written.append(out / "regional.png")
    _row(maps).save(out / "maps.png")
    written.append(out / "maps.png")
    _row(panels).save(out / "demo.png")
    written.append(out / "demo.png")
    return written


def video_demo(model: str, out: Path, seed: int = 0, frames: int = 8) -> Path:
    """Writes video.gif: a shapes-world video (one object sliding past a still one), its per-frame img2img edit and
    its edit with cross-frame attention to the first and previous frame, side by side, recolouring the mover."""
    from ..kv import edit_video

    from .controlnet import load_controlnet

    pipe = load(model)
    pipe.set_progress_bar_config(disable=True)
    controlnet = load_controlnet(CONTROLNETS[model]) if model in CONTROLNETS else None
    video = random_video(3000 + seed, frames=frames, size=image_size(pipe))
    prompt, _ = recolour_prompt(video)
    source = [Image.fromarray(f) for f in video.frames]
    columns = {"input": source}
    for title, attend in (("per-frame img2img", "none"), ("first + previous frame", "first+previous")):
        columns[title] = list(edit_video(pipe, source, prompt, attend=attend, strength=VIDEO_STRENGTH,
                                         num_inference_steps=STEPS, seed=seed, controlnet=controlnet, progress=False,
                                         negative_prompt="",
                                         **call_kwargs(pipe), **guidance_kwargs(pipe, GUIDANCE)))
    sheets = [_row([_titled(_big(np.asarray(column[t])), title) for title, column in columns.items()])
              for t in range(frames)]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "video.gif"
    sheets[0].save(path, save_all=True, append_images=sheets[1:], duration=250, loop=0)
    return path
