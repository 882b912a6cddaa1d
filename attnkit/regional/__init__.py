"""Regional prompting on stock diffusers pipelines: every image family whose text input is described (SD1.x, SD2 and
SDXL through cross-attention masks or attention couple; SD3, SD3.5, Flux.1 and the other image DiTs of
`attnkit.families` through joint-attention masks).

`attnkit.regional(pipe, spec)` (see `session.py`); region specs in `spec.py`; prompts encoded one segment per region
in `encode.py`; the mask and its exact split into fused kernel calls in `mask.py`; the `Control` that applies it in
`control.py`, the couple blend in `couple.py`; region outlines drawn on an image in `outline.py`. Regions found from a
word of the base prompt compose this with `attnkit.maps` one layer up (`attnkit.run.word_regions`). Names load on first
use, so the command line starts without torch.
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
