"""Files attnkit reads and writes; what it writes is byte-identical for identical contents (a batch run's outputs
must not depend on the process that wrote them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .errors import AttnkitError

__all__ = ["METADATA_KEY", "read_image", "save_png", "save_safetensors"]

#: PNG text chunk holding the JSON of what made an image (command, model, seed, sizes, prompt or spec).
METADATA_KEY = "attnkit"


def save_png(image: Image.Image, path: Path, record: dict[str, Any]) -> None:
    """Write `image` as PNG with `record` as JSON in its `attnkit` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)


def read_image(path: Path, option: str, mode: str) -> Image.Image:
    """The image at `path` in PIL `mode` ("RGB" for an init image, "L" for a mask); an error naming `option`."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except OSError as error:
        raise AttnkitError(f"cannot read {option} {path} ({error}); give a PNG or JPEG file.") from error


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file`, with the JSON header's keys sorted: safetensors writes them in hash-map order,
    which differs from one process to the next."""
    from safetensors.torch import save

    data = save({name: tensor.contiguous() for name, tensor in tensors.items()}, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + length]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    encoded = header.encode()
    if len(encoded) > length:  # never: the same JSON, reordered, has the same length
        raise RuntimeError(f"safetensors header grew from {length} to {len(encoded)} bytes when sorted")
    Path(path).write_bytes(data[:8] + encoded.ljust(length) + data[8 + length:])
