"""attnkit: control and observe attention inside stock diffusers pipelines.

Typed attention **sites** -> composable **controls** run by one processor per site -> explicit **state** read from
the pipeline; sessions restore the pipeline's own processors on exit.
"""

from . import ops
from .errors import AttnkitError
from .inspector import ShapeRecord, ShapeRecorder, inspect_shapes
from .processors import AttentionCall, Control, TokenLayout
from .session import Session, attach
from .sites import Site, SiteList, sites
from .state import State

__all__ = [
    "AttnkitError", "AttentionCall", "ops", "Control", "Session", "ShapeRecord", "ShapeRecorder", "Site", "SiteList",
    "State", "TokenLayout", "attach", "inspect_shapes", "sites",
]
__version__ = "0.1.0"

from .regional import regional  # noqa: E402  (after the foundation, which it builds on)
__all__ += ["regional"]
