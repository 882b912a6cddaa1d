"""Attention couple on UNet cross-attention: the regional-prompter "attention" mode.

Each cross-attention call is computed once per region prompt (a full softmax over that prompt's tokens only) and the
outputs are blended pixel by pixel with the regions' soft masks, normalised to sum 1 at every pixel; the base prompt,
if any, takes part everywhere with its `weight` as its mask value (weight 1: on a par with a region that fully
covers the pixel). Unlike the one-pass mask method, no image token ever competes for attention between prompts, so
each region's prompt is followed as strongly as in a plain generation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import AttnkitError
from ..processors import AttentionCall, Control
from .control import Schedule, _inside
from .encode import Encoded
from .mask import PAD
from .spec import BASE, RegionSpec

__all__ = ["CoupleControl"]


class CoupleControl(Control):
    """Blends per-region cross-attention outputs by normalised region masks, in the schedule's steps."""

    name = "regional"
    masks = True

    def __init__(self, spec: RegionSpec, encoded: Encoded, schedule: Schedule):
        self.spec = spec
        self.encoded = encoded
        self.schedule = schedule
        self._weights: dict[tuple, list[tuple[slice, torch.Tensor]]] = {}

    def before(self, call: AttentionCall) -> None:
        if not _inside(self.schedule.steps, call.state.step):
            return
        if call.has_mask:
            raise AttnkitError(f"{call.site.name}: the couple method blends separate softmaxes and cannot also apply "
                               "the attention mask set here; use method 'mask' to combine them.")
        branches = call.state.branches or ("cond",) * call.q.shape[0]
        segments = {branch: self.segments(call, branch) for branch in set(branches)}
        call.use_kernel(lambda c: (_blend(c, branches, segments), None), self.name)

    def segments(self, call: AttentionCall, branch: str) -> list[tuple[slice, torch.Tensor]]:
        """(text tokens, blend weight of every image token (Lq,)) per prompt of `branch` that any pixel uses."""
        latent = call.state.latent
        key = (branch, latent, call.site.stride, call.q.device)
        if key not in self._weights:
            if latent is None:
                raise AttnkitError(f"{call.site.name}: the latent size is unknown; run the pipeline inside the "
                                   "`with attnkit.regional(...)` block.")
            self.spec.check_grid(latent)
            self._weights[key] = self._segment_weights(branch, latent, call.site.stride, call.q.device)
        self.encoded.check_text_tokens(call.site.name, call.k.shape[2], branch)
        return self._weights[key]

    def _segment_weights(self, branch: str, latent: tuple[int, int], stride: int, device: torch.device
                         ) -> list[tuple[slice, torch.Tensor]]:
        cover = self.spec.coverage_at(latent, stride).flatten(1)
        segments = self.encoded.segments(branch)
        plain_negative = branch == "uncond" and not self.encoded.regional_negatives
        weight = self.spec.base.weight if self.spec.base is not None else 0.0
        masks, start = [], 0
        for owner, n in segments:
            if owner == PAD:
                mask = None
            elif plain_negative:  # the global negative, once, everywhere: plain cross-attention
                mask = torch.ones(cover.shape[1])
            else:
                mask = torch.full((cover.shape[1],), weight) if owner == BASE else cover[owner]
            masks.append((slice(start, start + n), mask))
            start += n
        total = sum(mask for _, mask in masks if mask is not None)
        if bool((total <= 0).any()):
            raise AttnkitError("with the couple method some pixels get no prompt: no region covers them and the base "
                               "weight is 0. Cover the image with regions or give the base prompt a weight > 0.")
        return [(tokens, (mask / total).to(device)) for tokens, mask in masks if mask is not None and bool(mask.any())]


def _blend(call: AttentionCall, branches: tuple[str, ...], segments: dict[str, list[tuple[slice, torch.Tensor]]]
           ) -> torch.Tensor:
    """Σ over prompts of (that prompt's weight at the pixel) x (attention over that prompt's tokens only)."""
    total = torch.promote_types(call.q.dtype, torch.float32)  # at least float32, float64 in a float64 model
    out = torch.zeros(call.q.shape, dtype=total, device=call.q.device)
    for branch, found in segments.items():
        items = [i for i, b in enumerate(branches) if b == branch]
        index = slice(items[0], items[-1] + 1) if items == list(range(items[0], items[-1] + 1)) else torch.tensor(
            items, device=call.q.device)
        q = call.q[index]
        for tokens, weight in found:
            part = F.scaled_dot_product_attention(q, call.k[index][:, :, tokens], call.v[index][:, :, tokens],
                                                  scale=call.scale)
            out[index] += weight[:, None].to(total) * part.to(total)
    return out.to(call.q.dtype)
