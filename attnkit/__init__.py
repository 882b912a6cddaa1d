"""attnkit: control and observe attention inside stock diffusers pipelines.

Typed attention **sites** -> composable **controls** run by one processor per site -> explicit **state** read from
the pipeline; sessions restore the pipeline's own processors on exit.

Public names load on first use (`attnkit.attach` imports torch and diffusers; `import attnkit.errors` or `attnkit
--help` does not).
"""

from . import _lazy
from .errors import AttnkitError, AttnkitWarning

__all__ = [
    "AttnkitError", "AttnkitWarning", "AttentionCall", "ops", "Control", "Session", "ShapeRecord", "ShapeRecorder", "Site", "SiteList",
    "State", "TokenLayout", "attach", "inspect_shapes", "sites", "regional",
]
__version__ = "0.1.0"

_lazy.make_lazy(__name__, {
    ".inspector": ("ShapeRecord", "ShapeRecorder", "inspect_shapes"),
    ".processors": ("AttentionCall", "Control", "TokenLayout"),
    ".session": ("Session", "attach"),
    ".sites": ("Site", "SiteList", "sites"),
    ".state": ("State",),
    ".regional": ("regional",),
}, submodules=("inspector", "ops", "processors", "session", "state"))
