"""`attnkit video-edit MODEL --video IN --prompt P --out OUT`: per-frame img2img made consistent by cross-frame
attention (see `attnkit.kv.video`). Reads and writes mp4, GIF or a folder of frames, one frame at a time."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli import MODEL_HELP, add_generation_options, checked_float, positive_int, strength
from ..errors import AttnkitError

__all__ = ["register"]

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
    from ..models import call_kwargs, check_size, guidance_kwargs, load_pipeline
    from .video import edit_video, img2img_pipeline
    from .videoio import probe, read_frames, write_frames

    (width, height), fps = probe(args.video)
    width, height = args.width or width, args.height or height
    pipe = load_pipeline(args.model)
    check_size(pipe, height, width)
    controlnet = _controlnet(args.controlnet) if args.controlnet else None
    editor = img2img_pipeline(pipe, controlnet)
    editor.set_progress_bar_config(disable=True)  # the bar over frames says how far the edit is
    options = call_kwargs(args.model, pipe) | guidance_kwargs(args.model, editor, args.guidance)
    frames = (frame.resize((width, height)) if frame.size != (width, height) else frame
              for frame in read_frames(args.video, args.frames))
    edited = edit_video(editor, frames, args.prompt, attend=args.attend, strength=args.strength,
                        num_inference_steps=args.steps, seed=args.seed, controlnet=controlnet, **options)
    count = write_frames(args.out, edited, args.fps or fps)
    print(f"wrote {count} frame(s) to {args.out}")


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
