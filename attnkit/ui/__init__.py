"""`attnkit ui`: a Gradio web app over one loaded pipeline — regional prompting, word maps, segmentation.

Names load on first use, so the `attnkit ui` command line is built without gradio or torch.
"""

from .. import _lazy

__all__ = ["DEFAULT_MODEL", "Studio", "build_app", "launch", "region_spec"]

_lazy.make_lazy(__name__, {".app": ("DEFAULT_MODEL", "Studio", "build_app", "launch", "region_spec")},
                submodules=("app",))
