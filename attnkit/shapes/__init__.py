"""Shapes world: small models trained on synthetic flat-colour scenes, shipped inside the package.

Their ground truth is known, so the effect of every attnkit feature can be *seen* (the red circle on the left) and
*measured* (colour segmentation of the output) offline. Importing this package is cheap; diffusers loads lazily.

    pipe = attnkit.shapes.load("shapes-sd3")             # or "shapes-sd15", "shapes-flux"
    image = pipe("a red circle", **attnkit.shapes.call_kwargs(pipe),
                 **attnkit.shapes.guidance_kwargs(pipe), negative_prompt="").images[0]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import AttnkitError

__all__ = ["CONTROLNETS", "GUIDANCE", "MODEL_NAMES", "MODELS_DIR", "STEPS", "call_kwargs", "guidance_kwargs",
           "image_size", "load", "model_folder", "shipped_names"]

#: Models shipped in `attnkit/shapes/models/<name>/` (real `save_pretrained` folders).
MODEL_NAMES: tuple[str, ...] = ("shapes-sd3", "shapes-sd15", "shapes-flux", "shapes-sd3-128", "shapes-flux-128")
MODELS_DIR = Path(__file__).parent / "models"
#: The shipped ControlNet of each shipped model that has one (an edge ControlNet: `attnkit.kv.video.edges`).
CONTROLNETS: dict[str, str] = {"shapes-sd15": "shapes-sd15-edges"}
#: Sampler settings of the demo and the benchmark (chosen on the shipped model, see its card).
STEPS, GUIDANCE = 28, 7.0


def call_kwargs(pipe: Any) -> dict[str, Any]:
    """Keyword arguments every call of a shapes pipeline needs (also valid as `attnkit.regional` options).
    shapes-sd3 has no T5: without `max_sequence_length=0` the pipeline pads the text with 256 zero "T5" tokens the
    model never saw in training (much worse images, 3x slower). A shapes Flux pipeline was trained on its T5's
    16 tokens, not Flux's default 512. SD1.x pipelines need nothing."""
    from ..families import family_of
    from .tokenizer import MAX_LENGTH

    if hasattr(pipe, "text_encoder_3"):
        return {"max_sequence_length": 0}
    return {"max_sequence_length": MAX_LENGTH} if family_of(pipe).name == "flux" else {}


def image_size(pipe: Any) -> int:
    """Side in pixels of the scenes a shapes pipeline was trained on (its VAE's `sample_size`): 64, or the size
    `python -m attnkit.shapes.train --size` gave it."""
    return int(pipe.vae.config.sample_size)


def guidance_kwargs(pipe: Any, scale: float = GUIDANCE) -> dict[str, Any]:
    """Classifier-free guidance at `scale`: `guidance_scale` for SD pipelines; `true_cfg_scale` for a Flux pipeline
    without a guidance embedding (on which diffusers ignores `guidance_scale`), with a negative prompt ("" is
    fine) passed as well, or it samples unguided."""
    flux_without_embedding = getattr(getattr(pipe, "transformer", None), "config", {}).get("guidance_embeds") is False
    return {"true_cfg_scale": scale} if flux_without_embedding else {"guidance_scale": scale}


def model_folder(name: str) -> Path:
    """The folder of shipped model `name`: in this package (a checkout has them all; the attnkit wheel shapes-sd3
    and shapes-sd15), else in the attnkit-shapes-extra package where that is installed (shapes-flux and the 128-px
    research models)."""
    folder = MODELS_DIR / name
    if not folder.is_dir():
        try:
            from attnkit_shapes_extra import MODELS_DIR as extra
        except ImportError:
            return folder
        if (extra / name).is_dir():
            return extra / name
    return folder


def shipped_names() -> tuple[str, ...]:
    """The shapes models of `MODEL_NAMES` present in this installation."""
    return tuple(name for name in MODEL_NAMES if (model_folder(name) / "model_index.json").is_file())


def load(model: str, **from_pretrained_kwargs: Any) -> Any:
    """The stock diffusers pipeline of shipped model `model` (loaded with `from_pretrained` from the package
    folder), or of a folder written by `attnkit.shapes.train`."""
    import json

    from diffusers import DiffusionPipeline

    from ..families import family_of

    folder = model_folder(model) if model in MODEL_NAMES else Path(model)
    if model in MODEL_NAMES and not (folder / "model_index.json").is_file():
        raise AttnkitError(f"{model} is not in attnkit's wheel (which ships {', '.join(shipped_names())}): install "
                           "the attnkit-shapes-extra wheel (`python -m build --wheel packaging/attnkit-shapes-extra` "
                           "in attnkit's repository), or attnkit from a checkout (`pip install -e .`)")
    if not (folder / "model_index.json").is_file():
        raise AttnkitError(f"no shapes model at {folder}: give one of {', '.join(MODEL_NAMES)} or a pipeline folder "
                           "written by `python -m attnkit.shapes.train`")
    # Components saved as [null, null] (SD3 without T5) must be passed as None explicitly to from_pretrained.
    for key, value in json.loads((folder / "model_index.json").read_text()).items():
        if value == [None, None]:
            from_pretrained_kwargs.setdefault(key, None)
    pipe = DiffusionPipeline.from_pretrained(folder, **from_pretrained_kwargs)
    if family_of(pipe).name == "flux":  # FluxPipeline defaults to 128 latents (512 px) per side
        pipe.default_sample_size = image_size(pipe) // pipe.vae_scale_factor
    return pipe
