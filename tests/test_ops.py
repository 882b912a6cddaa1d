"""Attention kernels with log-sum-exp: they must equal an explicit fp64 softmax reference, mask or not."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import ops
from attnkit.errors import AttnkitWarning

pytestmark = pytest.mark.core


PATHS = {"fused": ops.attention, "explicit": ops.explicit_attention}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def reference(q, k, v, mask, scale):
    """fp64 softmax attention; a row with no allowed key gives output 0 and lse -inf."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    weights = torch.exp(scores - lse.masked_fill(torch.isneginf(lse), 0)[..., None])
    return weights @ v.double(), lse


def inputs(draw_seed, batch, heads, lq, lk, dim, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(draw_seed)
    return [torch.randn(batch, heads, n, dim, generator=g).to(device, dtype) for n in (lq, lk, lk)]


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 3), lq=st.integers(1, 40), lk=st.integers(1, 40),
       dim=st.sampled_from([4, 8, 16]), masking=st.sampled_from(["none", "random", "empty rows", "all empty"]),
       device=st.sampled_from(DEVICES), seed=st.integers(0, 2**16))
def test_every_path_matches_the_fp64_reference_including_fully_masked_rows(batch, heads, lq, lk, dim, masking,
                                                                           device, seed):
    q, k, v = inputs(seed, batch, heads, lq, lk, dim, device)
    g = torch.Generator().manual_seed(seed + 1)
    mask = None
    if masking != "none":
        mask = torch.rand(batch, 1, lq, lk, generator=g) > 0.4
        mask[..., 0] = True
        if masking == "empty rows":
            mask[..., ::3, :] = False
        elif masking == "all empty":
            mask[:] = False
        mask = mask.to(device)
    scale = 1 / math.sqrt(dim)
    want_out, want_lse = reference(q.cpu(), k.cpu(), v.cpu(), None if mask is None else mask.cpu(), scale)
    for name, fn in PATHS.items():
        out, lse = fn(q, k, v, mask, scale)
        assert out.shape == q.shape and lse.shape == q.shape[:3] and lse.dtype == torch.float32, name
        torch.testing.assert_close(out.cpu().double(), want_out, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(lse.cpu().double(), want_lse, rtol=1e-5, atol=1e-5, msg=name)


@settings(max_examples=30, deadline=None)
@given(lq=st.integers(1, 20), cuts=st.lists(st.integers(0, 30), min_size=1, max_size=3),
       empty_rows=st.booleans(), device=st.sampled_from(DEVICES), seed=st.integers(0, 2**16))
def test_merge_of_disjoint_key_sets_equals_attention_over_their_union(lq, cuts, empty_rows, device, seed):
    """Parts may be empty (no keys at all) or hide every key from some rows; they add nothing to the merge."""
    q, k, v = inputs(seed, 2, 2, lq, 30, 8, device)
    bounds = [0, *sorted(cuts), 30]
    mask = torch.ones(lq, 30, dtype=torch.bool, device=device)
    if empty_rows:
        mask[::2, : bounds[-2]] = False  # even rows see only the last part's keys (maybe none at all)
    parts = []
    for start, end in zip(bounds, bounds[1:]):
        if start == end:
            parts.append((torch.full_like(q, float("nan")), torch.full(q.shape[:3], float("-inf"), device=device)))
        else:
            parts.append(ops.attention(q, k[:, :, start:end], v[:, :, start:end], mask[:, start:end], 8**-0.5))
    out, lse = ops.merge(parts)
    want_out, want_lse = reference(q.cpu(), k.cpu(), v.cpu(), mask.cpu(), 8**-0.5)
    torch.testing.assert_close(out.cpu().double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.cpu().double(), want_lse, rtol=1e-5, atol=1e-5)


HALF_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 3e-3}  # a few units of the output's last place


@settings(max_examples=30, deadline=None)
@given(lq=st.integers(1, 40), lk=st.integers(1, 40), dim=st.sampled_from([8, 16, 64]),
       masking=st.sampled_from(["none", "random", "empty rows"]), dtype=st.sampled_from(list(HALF_TOLERANCE)),
       device=st.sampled_from(DEVICES), seed=st.integers(0, 2**16))
def test_half_precision_inputs_take_a_fused_kernel_within_rounding_of_the_fp64_reference(lq, lk, dim, masking, dtype,
                                                                                        device, seed):
    """Real models run in bf16/fp16: on CUDA that is the flash kernel without a mask and the memory-efficient one
    with a mask (whose rows must be aligned in memory), on CPU the CPU flash kernel."""
    q, k, v = inputs(seed, 2, 2, lq, lk, dim, device, dtype)
    mask = None
    if masking != "none":
        mask = torch.rand(2, 1, lq, lk, generator=torch.Generator().manual_seed(seed + 1)) > 0.4
        mask[..., 0] = True
        if masking == "empty rows":
            mask[..., ::3, :] = False
        mask = mask.to(device)
    scale = 1 / math.sqrt(dim)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttnkitWarning)  # the explicit fallback would warn
        out, lse = ops.attention(q, k, v, mask, scale)
    want_out, want_lse = reference(q.cpu(), k.cpu(), v.cpu(), None if mask is None else mask.cpu(), scale)
    assert out.dtype == dtype and lse.dtype == torch.float32
    tolerance = HALF_TOLERANCE[dtype]
    torch.testing.assert_close(out.cpu().double(), want_out, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(lse.cpu().double(), want_lse, rtol=1e-3, atol=1e-3)


def test_a_device_without_fused_kernel_falls_back_to_the_explicit_path_and_says_so():
    q, k, v = (torch.empty(1, 2, n, 8, device="meta") for n in (5, 7, 7))
    with pytest.warns(AttnkitWarning, match="no fused attention kernel .* on meta; .* explicitly"):
        out, lse = ops.attention(q, k, v)
    assert out.shape == (1, 2, 5, 8) and lse.shape == (1, 2, 5) and lse.dtype == torch.float32


def test_probabilities_for_a_key_subset_use_the_full_normaliser():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for n in (9, 12, 12))
    _, lse = ops.attention(q, k, v)
    p = ops.probabilities(q, k[:, :, 4:], lse, 8**-0.5)
    full = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * 8**-0.5, -1)
    torch.testing.assert_close(p.double(), full[..., 4:], rtol=1e-5, atol=1e-6)
