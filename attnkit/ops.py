"""Attention kernels that also return the log-sum-exp, and the exact merge of partial attentions.

The log-sum-exp (lse) of every query row lets a feature compute attention probabilities for any subset of keys as
exp(q . k * scale + mask - lse) without materialising the full matrix, and lets attention over disjoint key sets be
computed by separate fused calls and merged exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import AttnkitWarning

__all__ = ["attention", "explicit_attention", "merge", "additive", "allow_extra_keys", "probabilities", "working"]

_QUERY_CHUNK_BYTES = 256 * 2**20

Kernel = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def working(dtype: torch.dtype) -> torch.dtype:
    """The dtype probabilities and log-sum-exps are computed in: float32, or float64 for float64 inputs (so that a
    float64 model's maps keep its precision)."""
    return torch.promote_types(dtype, torch.float32)


def additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask (True = attend) as an additive float mask; float masks pass through in `dtype`."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask.to(dtype)


def allow_extra_keys(mask: torch.Tensor, count: int) -> torch.Tensor:
    """`mask` with `count` more key columns that every query may attend to (True, or 0 in an additive mask); the
    very same tensor when `count` is 0, so that callers can still tell their own mask by identity."""
    if count == 0:
        return mask
    return F.pad(mask, (0, count), value=True) if mask.dtype == torch.bool else F.pad(mask, (0, count))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output (B, H, Lq, D) and its log-sum-exp (B, H, Lq) in float32 (float64 for float64 inputs), from a
    fused kernel when one fits.

    `mask` broadcasts to (B, H, Lq, Lk), bool (True = attend) or additive float. A query row whose keys are all
    masked gives output 0 and log-sum-exp -inf on every path. Where no fused kernel that returns the lse takes these
    inputs (chosen by capability, before running anything), the explicit query-chunked computation gives the same
    numbers, and attnkit says so once.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    bias = additive(mask, q.dtype)
    kernel = _fused_kernel(q, k, v, bias)
    if kernel is None:
        warnings.warn(f"no fused attention kernel returning the log-sum-exp takes {q.dtype} inputs on "
                      f"{q.device.type}; attnkit computes attention explicitly in query chunks (same numbers, slower).",
                      AttnkitWarning, stacklevel=2)
        return explicit_attention(q, k, v, mask, scale)
    out, lse = kernel(q, k, v, bias, scale)
    return _empty_rows_zeroed(out, lse.to(working(q.dtype)), bias)


def _cpu_flash(q, k, v, bias, scale):
    full = None if bias is None else bias.expand(*q.shape[:2], *bias.shape[-2:])
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=full,
                                                                     scale=scale)[:2]


def _cuda_flash(q, k, v, bias, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]


def _cuda_efficient(q, k, v, bias, scale):
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, _full_bias(q, k, bias), True, 0.0,
                                                                     False, scale=scale)[:2]
    return out, lse[..., : q.shape[2]]  # the kernel pads the lse's query axis


_EFFICIENT_BIAS_ALIGNMENT = 16


def _full_bias(q, k, bias):
    """The bias expanded to (B, H, Lq, Lk), its rows padded in memory to 16 elements: the memory-efficient kernel
    reads the bias with aligned strides, which SDPA's own front end arranges the same way before calling it."""
    if bias is None:
        return None
    if any(stride % _EFFICIENT_BIAS_ALIGNMENT for stride in bias.stride()[:-1]):
        columns = bias.shape[-1]
        bias = F.pad(bias, (0, -columns % _EFFICIENT_BIAS_ALIGNMENT))[..., :columns]
    return bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _fused_kernel(q, k, v, bias) -> Kernel | None:
    """The fused kernel that takes these inputs and returns the lse, by capability check; None if none does."""
    if q.device.type == "cpu":
        return _cpu_flash if q.dtype in _CPU_DTYPES else None
    if q.device.type != "cuda":
        return None
    if bias is None and torch.backends.cuda.can_use_flash_attention(_sdpa_params(q, k, v, None)):
        return _cuda_flash
    if torch.backends.cuda.can_use_efficient_attention(_sdpa_params(q, k, v, _full_bias(q, k, bias))):
        return _cuda_efficient
    return None


def _sdpa_params(q, k, v, bias) -> torch.backends.cuda.SDPAParams:
    return torch.backends.cuda.SDPAParams(q, k, v, bias, 0.0, False, False)


def _empty_rows_zeroed(out: torch.Tensor, lse: torch.Tensor, bias: torch.Tensor | None):
    """Output 0 and lse -inf where a query row may attend to no key: fused kernels disagree about such rows."""
    if bias is None:
        return out, lse
    empty = torch.isneginf(bias).all(-1).expand(lse.shape)
    if not empty.any():
        return out, lse
    return out.masked_fill(empty[..., None], 0), lse.masked_fill(empty, float("-inf"))


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference softmax(q k^T * scale + mask) v, chunked over queries so memory stays bounded; a row with no
    allowed key gives output 0 and lse -inf."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    work = working(q.dtype)
    bias = additive(mask, work)
    rows_per_chunk = max(1, _QUERY_CHUNK_BYTES // max(1, 4 * q.shape[0] * q.shape[1] * k.shape[2]))
    outs, lses = [], []
    for start in range(0, q.shape[2], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        scores = torch.matmul(q[:, :, rows].to(work), k.to(work).transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + (bias[..., rows, :] if bias.shape[-2] != 1 else bias)
        lse = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - _finite(lse)[..., None])
        outs.append(torch.matmul(weights, v.to(work)).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over the union of disjoint key sets from each set's (output, lse); a part whose lse is -inf
    (no key for that row, whatever its output holds) adds nothing."""
    work = working(parts[0][0].dtype)
    lses = torch.stack([lse.to(work) for _, lse in parts])
    total = torch.logsumexp(lses, dim=0)
    out = sum(
        torch.where(torch.isneginf(lse)[..., None], 0.0, torch.exp(lse - _finite(total))[..., None] * o.to(work))
        for o, lse in parts
    )
    return out.to(parts[0][0].dtype), total


def _finite(lse: torch.Tensor) -> torch.Tensor:
    """lse with -inf (an empty row) as 0, so that exp(score - lse) is 0 there instead of NaN."""
    return lse.masked_fill(torch.isneginf(lse), 0.0)


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
    work = working(q.dtype)
    scores = torch.matmul(q.to(work), k.to(work).transpose(-1, -2)).mul_(scale)
    bias = additive(mask, work)
    if bias is not None:
        scores = scores + bias
    return scores.sub_(lse[..., None].to(work)).exp_()
