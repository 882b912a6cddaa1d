"""Regional prompting on SD3, SD3.5 and Flux.1 through joint-attention masks, on stock diffusers pipelines.

`attnkit.regional(pipe, spec)` (see `session.py`); region specs in `spec.py`; the mask and its exact split into
fused kernel calls in `mask.py`; the `Control` that applies it in `control.py`.
"""

from .control import RegionalControl, Schedule
from .encode import Encoded
from .mask import PAD, Plan, Rules, Token, allowed
from .session import Regional, RegionalOptions, regional, supports
from .spec import BASE, Base, Region, RegionSpec, load_spec, parse_grid

__all__ = [
    "BASE", "PAD", "Base", "Encoded", "Plan", "Region", "RegionSpec", "Regional", "RegionalControl",
    "RegionalOptions", "Rules", "Schedule", "Token", "allowed", "load_spec", "parse_grid", "regional", "supports",
]
