"""Files attnkit writes, byte-identical for identical contents (a batch run's outputs must not depend on the process
that wrote them)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["save_safetensors"]


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
