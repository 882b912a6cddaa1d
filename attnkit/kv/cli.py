"""`attnkit video-edit MODEL --video IN --prompt P --out OUT`: per-frame img2img made consistent by cross-frame
attention (see `attnkit.kv.video`). Reads and writes mp4, GIF or a folder of frames, one frame at a time."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..cli import MODEL_HELP, add_generation_options, checked_float, positive_int, strength
from ..errors import AttnkitError

__all__ = ["edit_file", "register"]

ATTEND = ("none", "first", "first+previous")  # the choices of attnkit.kv.video.ATTEND, known without torch


_fps = checked_float(lambda value: value > 0, "a positive number of frames per second, e.g. 8")


def register(commands: Any) -> None:
    """Add the `video-edit` subcommand to the `attnkit` parser's subcommands."""
    p = commands.add_parser("video-edit", help="edit a video frame by frame with img2img, kept consistent by "
                            "cross-frame attention to the first and previous frame")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--video", required=True, type=Path, help="input: an .mp4 (or other video), a .gif, or a folder "
                   "of frame images")
    p.add_argument("--prompt", required=True, help="what the edited video shows")
    p.add_argument("--out", required=True, type=Path, help="output: .mp4, .gif, or a folder (numbered PNGs)")
    p.add_argument("--controlnet", default=None, help="an edge ControlNet (shapes-sd15-edges, a folder or a hub id): "
                   "ControlNet img2img with each frame's edge map as the condition")
    p.add_argument("--attend", choices=ATTEND, default="first+previous", help="cross-frame attention: none (plain "
                   "per-frame img2img), first (Text2Video-Zero), first+previous (Rerender-A-Video; the default)")
    p.add_argument("--strength", type=strength, default=0.6, help="img2img strength in (0, 1] (default 0.6)")
    add_generation_options(p, ("--seed", "--steps", "--guidance"))
    p.add_argument("--height", type=positive_int, default=None, help="frame height in pixels (default: the input's)")
    p.add_argument("--width", type=positive_int, default=None, help="frame width in pixels (default: the input's)")
    p.add_argument("--frames", type=positive_int, default=None, help="edit only the first N frames")
    p.add_argument("--fps", type=_fps, default=None, help="output frames per second (default: the input's)")
    p.set_defaults(run=_video_edit)


def _video_edit(args: argparse.Namespace) -> None:
    from ..models import load_pipeline
    from .videoio import probe

    probe(args.video)  # a bad video fails before the model loads
    count = edit_file(args.model, load_pipeline(args.model), args.video, args.out, args.prompt, attend=args.attend,
                      strength=args.strength, steps=args.steps, seed=args.seed, guidance=args.guidance,
                      height=args.height, width=args.width, frames=args.frames, fps=args.fps,
                      controlnet=args.controlnet)
    print(f"wrote {count} frame(s) to {args.out}")


def edit_file(model: str, pipe: Any, video: Path, out: Path, prompt: str, *, attend: str = "first+previous",
              strength: float = 0.6, steps: int = 28, seed: int = 0, guidance: float | None = None,
              height: int | None = None, width: int | None = None, frames: int | None = None,
              fps: float | None = None, controlnet: str | None = None,
              on_frame: Callable[[int], None] | None = None) -> int:
    """`attnkit video-edit` on a loaded `pipe` of `model`: the frames of `video` edited and written to `out`; returns
    how many. `on_frame(count)` is called after each edited frame (a progress display)."""
    from ..models import call_kwargs, check_size, guidance_kwargs
    from .video import edit_video, img2img_pipeline
    from .videoio import probe, read_frames, write_frames

    (video_width, video_height), video_fps = probe(video)
    width, height = width or video_width, height or video_height
    check_size(pipe, height, width)
    net = _controlnet(controlnet) if controlnet else None
    editor = img2img_pipeline(pipe, net)
    editor.set_progress_bar_config(disable=True)  # the bar over frames says how far the edit is
    options = call_kwargs(model, pipe) | guidance_kwargs(model, editor, guidance)
    resized = (frame.resize((width, height)) if frame.size != (width, height) else frame
               for frame in read_frames(video, frames))
    edited = edit_video(editor, resized, prompt, attend=attend, strength=strength, num_inference_steps=steps,
                        seed=seed, controlnet=net, progress=on_frame is None, **options)
    return write_frames(out, _reporting(edited, on_frame), fps or video_fps)


def _reporting(frames: Iterable[Any], on_frame: Callable[[int], None] | None) -> Iterator[Any]:
    for count, frame in enumerate(frames, 1):
        yield frame
        if on_frame is not None:
            on_frame(count)


def _controlnet(name: str) -> Any:
    from diffusers import ControlNetModel

    from ..shapes import CONTROLNETS
    from ..shapes.controlnet import load_controlnet

    if name in CONTROLNETS.values():
        return load_controlnet(name)
    try:
        return ControlNetModel.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise AttnkitError(f"could not load the ControlNet {name!r} ({error}); give a folder written by "
                           "`ControlNetModel.save_pretrained` or a hub id.") from error
