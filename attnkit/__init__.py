"""attnkit: control and observe attention inside stock diffusers pipelines.

Typed attention **sites** -> composable **controls** run by one processor per site -> explicit **state** read from
the pipeline; sessions restore the pipeline's own processors on exit.

The package is layered (docs/architecture.md): ground, the core (sites, families, processors, state, sessions,
recorders), the features (`regional`, `maps`, `segment`, `kv`), the run layer (`attnkit.run`: what each command
does, on a loaded pipeline) and the front ends (command line, web app, batch). Public names load on first use
(`attnkit.attach` imports torch and diffusers; `import attnkit.errors` or `attnkit --help` does not).
"""

from . import _lazy
from .errors import AttnkitError, AttnkitWarning

__all__ = [
    "AttnkitError", "AttnkitWarning", "AttentionCall", "ops", "Control", "Session", "ShapeRecord", "ShapeRecorder",
    "Site", "SiteList", "State", "TokenLayout", "attach", "inspect_shapes", "sites", "regional",
]
#: The package version: written here only (pyproject.toml reads it; CHANGELOG.md has a section per release).
__version__ = "0.3.0"

_lazy.make_lazy(__name__, {
    ".inspector": ("ShapeRecord", "ShapeRecorder", "inspect_shapes"),
    ".processors": ("AttentionCall", "Control", "TokenLayout"),
    ".session": ("Session", "attach"),
    ".sites": ("Site", "SiteList", "sites"),
    ".state": ("State",),
    ".regional": ("regional",),
}, submodules=("families", "inspector", "kv", "maps", "ops", "processors", "run", "segment", "session", "state"))
