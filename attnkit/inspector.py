"""Shape inspector: the Q, K, V and attention-probability shapes at every site, as a per-layer shape table.

Shapes are reported the way a classic diffusers `AttnProcessor` sees them, heads folded into the batch: (batch x heads, tokens, head_dim) and
(batch x heads, query tokens, key tokens). The probabilities are never materialised to learn their shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .processors import AttentionCall, Control
from .session import attach

__all__ = ["ShapeRecord", "ShapeRecorder", "inspect_shapes"]


@dataclass(frozen=True)
class ShapeRecord:
    """One site call: `index` is its 1-based call order among sites of the same kind."""

    index: int
    site: str
    kind: str
    query: tuple[int, ...]
    key: tuple[int, ...]
    value: tuple[int, ...]
    attention: tuple[int, ...]
    resolution: tuple[int, int] | None

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "site": self.site, "kind": self.kind, "query": list(self.query),
                "key": list(self.key), "value": list(self.value), "attention": list(self.attention)}


class ShapeRecorder(Control):
    """Records every site call of the session's first denoiser forward, i.e. of one denoising step."""

    name = "shape-inspector"

    def __init__(self) -> None:
        self.records: list[ShapeRecord] = []

    def after(self, call: AttentionCall, out: torch.Tensor, lse: torch.Tensor | None) -> None:
        if call.state.forwards > 1:
            return
        batch, heads, q_tokens, head_dim = call.q.shape
        k_tokens = call.k.shape[2]
        index = 1 + sum(r.kind == call.site.kind for r in self.records)
        self.records.append(ShapeRecord(
            index, call.site.name, call.site.kind,
            (batch * heads, q_tokens, head_dim), (batch * heads, k_tokens, call.k.shape[3]),
            (batch * heads, call.v.shape[2], call.v.shape[3]), (batch * heads, q_tokens, k_tokens), call.grid,
        ))


def inspect_shapes(pipe: Any, height: int | None = None, width: int | None = None, prompt: str = "",
                   **call_kwargs: Any) -> list[ShapeRecord]:
    """Run one denoising step of `pipe` (its default guidance, latents out, no decode) and return the shapes."""
    recorder = ShapeRecorder()
    with attach(pipe, recorder), torch.inference_mode():
        size = {k: v for k, v in (("height", height), ("width", width)) if v is not None}  # Sana bins given sizes
        pipe(prompt=prompt, num_inference_steps=1, output_type="latent", **size, **call_kwargs)
    return recorder.records
