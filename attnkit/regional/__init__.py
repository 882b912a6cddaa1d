"""Regional prompting on stock diffusers pipelines: SD3, SD3.5 and Flux.1 through joint-attention masks, SD1.x,
SD2 and SDXL through cross-attention masks or attention couple.

`attnkit.regional(pipe, spec)` (see `session.py`); region specs in `spec.py`; the mask and its exact split into
fused kernel calls in `mask.py`; the `Control` that applies it in `control.py`, the couple blend in `couple.py`;
regions found from a word of the base prompt in `words.py`; init images for img2img and inpainting in `images.py`.
Names load on first use, so the `attnkit regional` command line can be built without torch.
"""

from .. import _lazy

__all__ = [
    "BASE", "PAD", "Base", "CoupleControl", "Encoded", "Plan", "Region", "RegionSpec", "Regional", "RegionalControl",
    "RegionalOptions", "Rules", "Schedule", "Token", "allowed", "load_spec", "parse_grid", "regional", "supports",
]

_lazy.make_lazy(__name__, {
    ".control": ("RegionalControl", "Schedule"),
    ".couple": ("CoupleControl",),
    ".encode": ("Encoded",),
    ".mask": ("PAD", "Plan", "Rules", "Token", "allowed"),
    ".session": ("Regional", "RegionalOptions", "regional", "supports"),
    ".spec": ("BASE", "Base", "Region", "RegionSpec", "load_spec", "parse_grid"),
}, submodules=("control", "couple", "encode", "mask", "session", "spec"))
