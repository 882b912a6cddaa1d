"""Models by the names the command line, the web app and batch jobs take: built-in offline pipelines (the shipped
shapes models and the tiny random ones), else a local folder or a hub id; and what every call of a model needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import AttnkitError

__all__ = ["Pipelines", "builtin_names", "call_kwargs", "guidance_kwargs", "load_controlnet", "load_pipeline"]


def builtin_names() -> tuple[str, ...]:
    from ..shapes import MODEL_NAMES
    from ..testing import PIPELINE_NAMES

    return tuple(PIPELINE_NAMES) + MODEL_NAMES


def call_kwargs(model: str, pipe: Any) -> dict[str, Any]:
    """Keyword arguments every call of `model`'s pipeline needs: those of shapes models (shipped names, or folders
    written by `attnkit.shapes.train`, which leave a training.json); nothing for any other model."""
    from .. import shapes

    return shapes.call_kwargs(pipe) if _is_shapes(model) else {}


def _is_shapes(model: str) -> bool:
    from ..shapes import MODEL_NAMES

    return model in MODEL_NAMES or (Path(model) / "training.json").is_file()


def guidance_kwargs(model: str, pipe: Any, scale: float | None) -> dict[str, Any]:
    """Classifier-free guidance at `scale` as `pipe` takes it (`scale` None: a shapes model's benchmark scale, else
    the pipeline's default). On a Flux pipeline without a guidance embedding, where diffusers ignores
    `guidance_scale`, that is true CFG, which runs only against a negative prompt: the empty one is included."""
    from .. import shapes

    if scale is None and _is_shapes(model):
        scale = shapes.GUIDANCE
    if scale is None:
        return {}
    guided = shapes.guidance_kwargs(pipe, scale)
    return guided | {"negative_prompt": ""} if "true_cfg_scale" in guided else guided


def load_pipeline(model: str, **from_pretrained_kwargs: Any) -> Any:
    """A pipeline for `model`: a built-in name, a folder saved with `save_pretrained`, or a hub id."""
    from diffusers import DiffusionPipeline

    from ..shapes import MODEL_NAMES, load

    if model in MODEL_NAMES:
        return load(model, **from_pretrained_kwargs)
    if model in builtin_names():
        from ..testing import build_pipeline

        return build_pipeline(model)
    path = Path(model)
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise AttnkitError(f"{model!r} is a folder without model_index.json; point at a folder written by "
                               "`pipe.save_pretrained(...)` or at a hub id.")
        return DiffusionPipeline.from_pretrained(path, **from_pretrained_kwargs)
    if "/" not in model:
        raise AttnkitError(f"unknown model {model!r}: built-in names are {', '.join(builtin_names())}; "
                           "or give a local pipeline folder or a hub id such as 'org/name'.")
    try:
        return DiffusionPipeline.from_pretrained(model, **from_pretrained_kwargs)
    except (OSError, ValueError) as error:
        raise AttnkitError(f"could not load {model!r} from the hub or the local cache ({error}). "
                           "Check the id, or download it first, or use a built-in name.") from error


class Pipelines:
    """Pipelines by model name, each loaded once, moved to `device` if given, with its progress bar off: what a
    batch of jobs reuses, so that it pays each model's loading once. Features restore the pipelines they change."""

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self._loaded: dict[str, Any] = {}

    def __call__(self, model: str) -> Any:
        if model not in self._loaded:
            pipe = load_pipeline(model)
            pipe = pipe if self.device is None else pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self._loaded[model] = pipe
        return self._loaded[model]


def load_controlnet(name: str) -> Any:
    """A ControlNet by name: a shipped shapes ControlNet, a folder written by `ControlNetModel.save_pretrained`, or
    a hub id."""
    from diffusers import ControlNetModel

    from ..shapes import CONTROLNETS
    from ..shapes.controlnet import load_controlnet as load_shipped

    if name in CONTROLNETS.values():
        return load_shipped(name)
    try:
        return ControlNetModel.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise AttnkitError(f"could not load the ControlNet {name!r} ({error}); give a folder written by "
                           "`ControlNetModel.save_pretrained` or a hub id.") from error
