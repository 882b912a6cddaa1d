"""The shapes models attnkit's wheel leaves out (shapes-flux, shapes-sd3-128, shapes-flux-128): `attnkit.shapes`
loads them from `MODELS_DIR` when this package is installed."""

from pathlib import Path

__all__ = ["MODELS_DIR"]

#: Shapes models in `<name>/` folders written by `save_pretrained`, as in `attnkit/shapes/models/`.
MODELS_DIR = Path(__file__).parent / "models"
