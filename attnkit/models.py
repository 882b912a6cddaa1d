"""Model names the CLI accepts: built-in offline pipelines by name, else a local folder or a hub id."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import AttnkitError

__all__ = ["builtin_names", "call_kwargs", "call_parameters", "check_size", "default_size", "guidance_kwargs",
           "load_pipeline", "reusing_pipelines", "size_multiple", "takes_true_cfg"]


def builtin_names() -> tuple[str, ...]:
    from .shapes import MODEL_NAMES
    from .testing import PIPELINE_NAMES

    return tuple(PIPELINE_NAMES) + MODEL_NAMES


def call_kwargs(model: str, pipe: Any) -> dict[str, Any]:
    """Keyword arguments every call of `model`'s pipeline needs: those of shapes models (shipped names, or folders
    written by `attnkit.shapes.train`, which leave a training.json); nothing for any other model."""
    from . import shapes

    return shapes.call_kwargs(pipe) if _is_shapes(model) else {}


def _is_shapes(model: str) -> bool:
    from .shapes import MODEL_NAMES

    return model in MODEL_NAMES or (Path(model) / "training.json").is_file()


def guidance_kwargs(model: str, pipe: Any, scale: float | None) -> dict[str, Any]:
    """Classifier-free guidance at `scale` as `pipe` takes it (`scale` None: a shapes model's benchmark scale, else
    the pipeline's default). On a Flux pipeline without a guidance embedding, where diffusers ignores
    `guidance_scale`, that is true CFG, which runs only against a negative prompt: the empty one is included."""
    from . import shapes

    if scale is None and _is_shapes(model):
        scale = shapes.GUIDANCE
    if scale is None:
        return {}
    guided = shapes.guidance_kwargs(pipe, scale)
    return guided | {"negative_prompt": ""} if "true_cfg_scale" in guided else guided


#: Pipelines by model name while `reusing_pipelines` is active (None: every call loads anew), and their device.
_REUSED: dict[str, Any] | None = None
_DEVICE: Any = None


@contextlib.contextmanager
def reusing_pipelines(device: Any = None) -> Iterator[None]:
    """Within the block, `load_pipeline(model)` loads each model once (moved to `device` if given) and then returns
    the same pipeline, with its progress bar off: a batch of jobs pays the loading once. Features restore the
    pipelines they change."""
    global _REUSED, _DEVICE
    outer = _REUSED, _DEVICE
    _REUSED, _DEVICE = ({} if _REUSED is None else _REUSED), device
    try:
        yield
    finally:
        _REUSED, _DEVICE = outer


def load_pipeline(model: str, **from_pretrained_kwargs: Any) -> Any:
    """A pipeline for `model`: a built-in name, a folder saved with `save_pretrained`, or a hub id."""
    if _REUSED is not None and not from_pretrained_kwargs:
        if model not in _REUSED:
            pipe = _load(model)
            _REUSED[model] = pipe if _DEVICE is None else pipe.to(_DEVICE)
            _REUSED[model].set_progress_bar_config(disable=True)
        return _REUSED[model]
    return _load(model, **from_pretrained_kwargs)


def _load(model: str, **from_pretrained_kwargs: Any) -> Any:
    from diffusers import DiffusionPipeline

    from .shapes import MODEL_NAMES, load

    if model in MODEL_NAMES:
        return load(model, **from_pretrained_kwargs)
    if model in builtin_names():
        from .testing import build_pipeline

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


def size_multiple(pipe: Any) -> int:
    """What image sides must be multiples of for `pipe`: 8 on SD1.x/SDXL, the VAE factor times the patch size on
    SD3, twice the VAE factor on Flux (its pipeline would silently round other sizes down)."""
    import math

    from .sites import architecture_of, denoiser_of, sites

    architecture = architecture_of(denoiser_of(pipe)).name
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    return math.lcm(8, factor) if architecture == "unet" else factor * sites(pipe)[0].stride


def call_parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of `pipe`'s `__call__`: what a feature may pass this family's pipeline, and their defaults."""
    return inspect.signature(type(pipe).__call__).parameters


def takes_true_cfg(pipe: Any) -> bool:
    """Whether `pipe` guides against a negative prompt with `true_cfg_scale` (Flux.1, Qwen-Image)."""
    return "true_cfg_scale" in call_parameters(pipe)


def default_size(pipe: Any) -> int:
    """The image side in pixels `pipe` generates at when given no size, as its `__call__` computes it: from the
    default sample size, or the height its signature defaults to (Z-Image, AuraFlow)."""
    from .sites import denoiser_of

    sample = getattr(pipe, "default_sample_size", None) or denoiser_of(pipe).config.get("sample_size")
    if sample is not None:
        return int(sample * pipe.vae_scale_factor)
    height = call_parameters(pipe).get("height")
    if height is None or not isinstance(height.default, int):
        raise AttnkitError(f"cannot tell the default image size of {type(pipe).__name__}: give --height and --width.")
    return height.default


def check_size(pipe: Any, height: int | None, width: int | None) -> None:
    """An AttnkitError naming the multiple when `pipe` cannot generate at `height` x `width` pixels."""
    multiple = size_multiple(pipe)
    for name, value in (("height", height), ("width", width)):
        if value is not None and value % multiple:
            raise AttnkitError(f"--{name} {value} is not a multiple of {multiple}, which this {type(pipe).__name__} "
                               f"needs; use e.g. --{name} {max(multiple, value // multiple * multiple)}.")
