"""Earlier home of two things now in their layers: models by name (`attnkit.run.models`) and what a loaded pipeline
takes (`attnkit.pipeline`). Nothing below the run layer imports this module."""

from .pipeline import call_parameters, check_size, default_size, size_multiple, takes_true_cfg
from .run.models import builtin_names, call_kwargs, guidance_kwargs, load_pipeline

__all__ = ["builtin_names", "call_kwargs", "call_parameters", "check_size", "default_size", "guidance_kwargs",
           "load_pipeline", "size_multiple", "takes_true_cfg"]
