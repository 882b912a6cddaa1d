"""Attention kernels that also return the log-sum-exp, and the exact merge of partial attentions.

The log-sum-exp (lse) of every query row lets a feature compute attention probabilities for any subset of keys as
exp(q . k * scale + mask - lse) without materialising the full matrix, and lets attention over disjoint key sets be
computed by separate fused calls and merged exactly.
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention", "explicit_attention", "merge", "additive", "probabilities"]

_QUERY_CHUNK_BYTES = 256 * 2**20


def additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask (True = attend) as an additive float mask; float masks pass through in `dtype`."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask.to(dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output (B, H, Lq, D) and its log-sum-exp (B, H, Lq) in float32, from a fused kernel when one fits.

    `mask` broadcasts to (B, H, Lq, Lk), bool (True = attend) or additive float. Falls back to the explicit,
    query-chunked computation where no fused kernel returning the lse takes these inputs; the numbers agree.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    bias = additive(mask, q.dtype)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=None if bias is None else bias.expand(*q.shape[:2], *bias.shape[-2:]),
            scale=scale,
        )
        return out, lse.float()
    if q.device.type == "cuda":
        fused = _cuda_attention(q, k, v, bias, scale)
        if fused is not None:
            return fused
    return explicit_attention(q, k, v, mask, scale)


def _cuda_attention(q, k, v, bias, scale) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Flash attention when there is no mask, memory-efficient attention with a bias; None if neither accepts."""
    try:
        if bias is None:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
        else:
            full = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, full, True, 0.0, False,
                                                                             scale=scale)[:2]
    except RuntimeError:
        return None
    return out, lse[..., : q.shape[2]].float()


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference softmax(q k^T * scale + mask) v, chunked over queries so memory stays bounded."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    bias = additive(mask, torch.float32)
    rows_per_chunk = max(1, _QUERY_CHUNK_BYTES // max(1, 4 * q.shape[0] * q.shape[1] * k.shape[2]))
    outs, lses = [], []
    for start in range(0, q.shape[2], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        scores = torch.matmul(q[:, :, rows].float(), k.float().transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + (bias[..., rows, :] if bias.shape[-2] != 1 else bias)
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse[..., None]), v.float()).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over the union of disjoint key sets from each set's (output, lse)."""
    lses = torch.stack([lse for _, lse in parts])
    total = torch.logsumexp(lses, dim=0)
    out = sum(torch.exp(lse - total)[..., None] * o.float() for o, lse in parts)
    return out.to(parts[0][0].dtype), total


def probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention probabilities of `q` over the keys `k` only, normalised over all keys through `lse`.

    The score block is the one large tensor here: it is made once and updated in place (the same numbers, about
    half the time of out-of-place updates when a recorder calls this at every layer and step)."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)).mul_(scale)
    bias = additive(mask, torch.float32)
    if bias is not None:
        scores = scores + bias
    return scores.sub_(lse[..., None]).exp_()
