"""Replacing or extending a frame's K/V in cross-frame attention: flicker and edit adherence of each on a shapes model.

    python benchmarks/cross_frame_modes.py [MODEL ...]   # writes benchmarks/results/cross-frame-modes-<model>.json

The video edits of `attnkit eval` (same videos, strength, steps and seeds), once with each `edit_video` mode: later
frames' image keys and values replaced by the stored frames' (Text2Video-Zero, Rerender-A-Video) or extended by them
(the frame keeps its own beside them). Per-frame img2img does not depend on the mode and is reported once. Flicker is
the mean change between consecutive frames on pixels that stay still in the input, motion the same on the pixels the
moving object enters or leaves: a mode that freezes the video lowers both, one that steadies it only the first.
"""

from __future__ import annotations

import sys
import time

import torch

from attnkit.shapes import CONTROLNETS, MODEL_NAMES, load
from attnkit.shapes.controlnet import load_controlnet
from attnkit.shapes.evaluate import video_editing
from per_model import per_model_main

VIDEOS = 8  # as `attnkit eval`


def measure(model: str) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    pipe = load(model)
    pipe.set_progress_bar_config(disable=True)
    controlnet = load_controlnet(CONTROLNETS[model]) if model in CONTROLNETS else None
    result: dict = {"model": model, "videos": VIDEOS, "controlnet": controlnet is not None}
    for mode in ("replace", "extend"):
        edits = video_editing(pipe, VIDEOS, controlnet, mode=mode)
        result |= {key: edits[key] for key in ("flicker_per_frame", "motion_per_frame")}
        result[mode] = {"edit_adherence": edits["edit_adherence"]}
        for attend in ("first", "first_previous"):
            for quantity in ("flicker", "motion"):
                key = f"{quantity}_{attend}"
                result[mode] |= {key: edits[key], f"{key}_ratio": edits[key] / edits[f"{quantity}_per_frame"]}
    result |= {"seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
    return result


def main(argv: list[str] | None = None) -> None:
    per_model_main(__doc__, measure, "cross-frame-modes", MODEL_NAMES, argv)


if __name__ == "__main__":
    sys.exit(main())
