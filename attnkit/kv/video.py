"""`attnkit.kv.edit_video`: edit a video frame by frame with img2img, consistent through cross-frame attention.

Every frame is edited by the same img2img pass with the same noise; what ties the frames together is self-attention:
frame 0 records its image K/V at every selected site and step, and each later frame attends to the first frame's
(`attend="first"`, the cross-frame attention of Text2Video-Zero) or to the first and the previous frame's
(`attend="first+previous"`, Rerender-A-Video): the first frame's pass stores, the later ones load, as in the
STORE/LOAD passes of cross-frame attention. Where the frame's image attends to its image alone (self-attention, as on
UNets) its keys and values are replaced by the references' (as both methods do); where image and text share one joint
sequence (SD3, Flux) they are extended, the frame keeping its own beside them (a frame whose own keys are gone
drifted on shapes-flux-128). `mode` chooses either on any model; text tokens of joint attention always keep their
own, so the prompt reaches every frame. The previous frame's store is overwritten site by site as the current frame
is recorded, so memory holds two frames' K/V however long the video is, and frames are taken and given back one at a
time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import AttnkitError
from ..pipeline import image_pipeline, takes_size
from ..session import Session
from ..sites import Site, SiteList
from ..state import StepRange, step_range
from .control import KVControl, Mode
from .defaults import ATTEND
from .methods import METHOD_OPTIONS, Setup, setup
from .places import chosen_sites
from .store import KVStore

__all__ = ["ATTEND", "edit_video", "img2img_pipeline", "edges"]


def img2img_pipeline(pipe: Any, controlnet: Any = None) -> Any:
    """The img2img pipeline of `pipe`'s family on the same components (ControlNet img2img when `controlnet` is
    given); `pipe` itself when it already is one."""
    return image_pipeline(pipe, controlnet=controlnet)


def edges(image: Image.Image) -> Image.Image:
    """An edge map of `image` (white edges on black, same size): the condition of an edge ControlNet.

    The Sobel gradient is taken per RGB channel (values 0-1) and its largest magnitude over the channels is
    thresholded at a fixed level: a straight step of height h gives 4h, so the threshold 1.0 is a step of a quarter
    of the range in any one channel, an edge however bright the rest of the image is (every shapes colour differs
    from the background and from each other by over 0.4 in some channel), while smooth gradients and pixel noise of a
    few grey levels stay far below it.
    """
    from scipy import ndimage

    threshold = 1.0

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    magnitude = np.zeros(rgb.shape[:2], dtype=np.float32)
    for c in range(3):
        channel = rgb[..., c]
        np.maximum(magnitude, np.hypot(ndimage.sobel(channel, axis=0), ndimage.sobel(channel, axis=1)), out=magnitude)
    mask = magnitude > threshold
    return Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")


def edit_video(
    pipe: Any,
    frames: Iterable[Image.Image],
    prompt: str,
    *,
    method: str | None = None,
    attend: str | None = None,
    steps: StepRange | None = None,
    strength: float = 0.6,
    num_inference_steps: int = 20,
    seed: int = 0,
    controlnet: Any = None,
    first: KVStore | None = None,
    previous: KVStore | None = None,
    sites_: Iterable[Site] | None = None,
    mode: Mode | None = None,
    progress: bool = True,
    **call_kwargs: Any,
) -> Iterator[Image.Image]:
    """Edited frames, one per input frame, as they are made.

    `pipe` is any SD1.x, SDXL, SD3 or Flux pipeline (its img2img sibling is made from the same components);
    `controlnet` runs ControlNet img2img with each frame's `edges` as the condition. `method` ("text2video-zero",
    "rerender"; `attnkit.kv.methods`, its options passed by their names, e.g. `cross_period=(0, 0.5)`) sets up the
    cross-frame attention as that method's code does; without one, later frames attend to the stored frames of
    `attend` (default "first+previous") at `sites_` (default `default_sites`) in `steps` ([start, end), default all),
    and `mode` is how: "replace" their own image K/V or "extend" them (None: replace at self-attention sites, extend
    at joint ones). `call_kwargs` go to every pipeline call (guidance, negative prompt); frames must already have the
    size to edit at. `first` and `previous` are where the first and the previous frame's K/V are kept (new `KVStore`s
    unless given: pass your own to keep them as float16, on the CPU, or under a budget). Processors are put back after
    each frame and the stores emptied after the last, also when a frame raises.
    """
    if attend not in (None, *ATTEND):
        raise AttnkitError(f"attend={attend!r}: choose one of {', '.join(ATTEND)}.")
    if mode not in (None, "replace", "extend"):
        raise AttnkitError(f"mode={mode!r}: cross-frame attention either replaces a frame's K/V with the stored "
                           "frames' ('replace') or appends them ('extend').")
    if not 0 < strength <= 1:
        raise AttnkitError(f"strength={strength}: img2img needs 0 < strength <= 1.")
    editor = image_pipeline(pipe, controlnet=controlnet)
    if editor is not pipe:  # a sibling made here: the bar over frames says how far the edit is
        editor.set_progress_bar_config(disable=True)
    plan = _plan(editor, method, attend, steps, sites_, mode, call_kwargs)
    sized = takes_size(editor)
    first = KVStore() if first is None else first
    previous = KVStore() if previous is None else previous
    bar = _progress(progress)
    try:
        for index, frame in enumerate(frames):
            kwargs = {"prompt": prompt, "image": frame, "strength": strength,
                      "num_inference_steps": num_inference_steps,
                      "generator": torch.Generator().manual_seed(seed), **call_kwargs}
            if sized:  # SD3 and Flux img2img take the output size from these, not from the image
                kwargs |= {"height": frame.height, "width": frame.width}
            if controlnet is not None:
                kwargs["control_image"] = edges(frame)
            with _frame_session(editor, plan, index, first, previous), torch.inference_mode():
                edited = editor(**kwargs).images[0]
            bar.update(1)
            yield edited
    finally:
        bar.close()
        first.clear()
        previous.clear()


def _plan(editor: Any, method: str | None, attend: str | None, steps: StepRange | None,
          sites_: Iterable[Site] | None, mode: Mode | None, call_kwargs: dict[str, Any]) -> Setup | None:
    """How each later frame attends to the stored frames (None: plain per-frame img2img); a method's options are
    taken out of `call_kwargs`, which go to the pipeline."""
    if method is None:
        attend = attend or "first+previous"
        if attend == "none":
            return None
        chosen = chosen_sites(editor, sites_, {})
        return Setup(chosen, mode or _mode(chosen), steps=step_range(steps or (0, None)), attend=attend)
    given = [name for name, value in (("attend", attend), ("steps", steps), ("sites_", sites_), ("mode", mode))
             if value is not None]
    if given:
        raise AttnkitError(f"method {method!r} sets its own frames, sites, steps and mode as its authors' code does; "
                           f"leave out {', '.join(given)}, or give no method to choose them yourself.")
    options = {name: call_kwargs.pop(name) for name in list(call_kwargs) if name in METHOD_OPTIONS}
    return setup(editor, method, options, video=True)


def _frame_session(editor: Any, plan: Setup | None, index: int, first: KVStore, previous: KVStore) -> Any:
    """The session of frame `index`: the first frame records, later ones attend to the stored frames as `plan`
    says; frame 1 has no previous frame but the first, then `previous` is overwritten as it is read."""
    if plan is None:
        return contextlib.nullcontext()
    if index == 0:
        control = KVControl(record=[first])
    elif plan.attend == "first":
        control = KVControl(load=[first], mode=plan.mode, steps=plan.steps, when=plan.when)
    else:
        control = KVControl(load=[first, first if index == 1 else previous], record=[previous], mode=plan.mode,
                            steps=plan.steps, when=plan.when)
    return Session(editor, [(control, plan.sites)])


def _mode(chosen: SiteList) -> Mode:
    """Cross-frame attention's default: replace the image K/V where the image attends to itself alone, extend them
    where it shares a joint sequence with the text (the better choice on each, as measured by
    `benchmarks/cross_frame_modes.py`)."""
    return "replace" if all(site.kind == "self" for site in chosen) else "extend"


def _progress(enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc="frames", unit="frame", disable=not enabled)
