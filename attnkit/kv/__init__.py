"""Self-attention K/V injection and consistent video editing, built only on sites, controls and state.

`KVStore` keeps image keys and values per (site, step, CFG branch); `KVControl` loads them into another generation
(replace, extend or blend) and records its own; `record` / `inject` attach it in one `with` block, as a published
method sets it up (`methods`: MasaCtrl, StyleAligned) or as you choose; `invert` takes a real image back to the
noise its regeneration starts from, so those methods edit it; `edit_video` edits a video frame by frame with
cross-frame attention to the first and previous frame (Text2Video-Zero, Rerender-A-Video). Names load on first use,
so the command line starts without torch.
"""

from .. import _lazy

__all__ = ["ATTEND", "IMAGE_KINDS", "Inversion", "KVControl", "KVStore", "METHODS", "MODES", "VIDEO_METHODS",
           "default_sites", "edit_video", "encode_image", "inject", "invert", "record", "record_image", "reference"]

_lazy.make_lazy(__name__, {
    ".control": ("KVControl", "MODES"),
    ".inversion": ("Inversion", "encode_image", "invert"),
    ".methods": ("METHODS",),
    ".session": ("IMAGE_KINDS", "default_sites", "inject", "record"),
    ".reference": ("record_image", "reference"),
    ".store": ("KVStore",),
    ".defaults": ("ATTEND", "VIDEO_METHODS"),
    ".video": ("edit_video",),
}, submodules=("control", "defaults", "inversion", "methods", "session", "store", "video"))
