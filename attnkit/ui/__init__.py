"""`attnkit ui`: a Gradio web app over one loaded pipeline — regional prompting (drawn on a canvas), word maps,
segmentation; `canvas` holds the Regional tab's canvases as plain values, `serving` the upload checks and the
keeper of request files.

Names load on first use, so the `attnkit ui` command line is built without gradio or torch.
"""

from .. import _lazy

__all__ = ["DEFAULT_MODEL", "Keep", "Limits", "Studio", "build_app", "launch", "region_spec"]

_lazy.make_lazy(__name__, {".app": ("DEFAULT_MODEL", "Keep", "Limits", "Studio", "build_app", "launch", "region_spec")},
                submodules=("app", "canvas", "serving"))
