"""A video file edited frame by frame with cross-frame attention, as `attnkit video-edit` and the web app run it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..pipeline import check_size
from ..videoio import probe, read_frames, write_frames
from .models import call_kwargs, guidance_kwargs, load_controlnet

__all__ = ["video_edit"]


def video_edit(model: str, pipe: Any, video: Path, out: Path, prompt: str, *, method: str | None = None,
               attend: str | None = None, strength: float = 0.6, steps: int = 28, seed: int = 0,
               guidance: float | None = None,
               height: int | None = None, width: int | None = None, frames: int | None = None,
               fps: float | None = None, controlnet: str | None = None,
               on_frame: Callable[[int], None] | None = None) -> int:
    """The frames of `video` (the first `frames` of them, resized to `height` x `width` if given) edited by
    `attnkit.kv.edit_video` on `pipe` of `model` (with a published `method`, or attending to the frames of `attend`)
    and written to `out` (mp4, GIF or a folder) at `fps` (default: the input's); returns how many. `controlnet`: a
    ControlNet by name (a shipped one, a folder, a hub id). `on_frame(count)` is called after each edited frame (a
    progress display)."""
    from ..kv import edit_video

    (video_width, video_height), video_fps = probe(video)
    width, height = width or video_width, height or video_height
    check_size(pipe, height, width)
    net = load_controlnet(controlnet) if controlnet else None
    options = call_kwargs(model, pipe) | guidance_kwargs(model, pipe, guidance)
    resized = (frame.resize((width, height)) if frame.size != (width, height) else frame
               for frame in read_frames(video, frames))
    edited = edit_video(pipe, resized, prompt, method=method, attend=attend, strength=strength,
                        num_inference_steps=steps,
                        seed=seed, controlnet=net, progress=on_frame is None, **options)
    return write_frames(out, _reporting(edited, on_frame), fps or video_fps)


def _reporting(frames: Iterable[Any], on_frame: Callable[[int], None] | None) -> Iterator[Any]:
    for count, frame in enumerate(frames, 1):
        yield frame
        if on_frame is not None:
            on_frame(count)
