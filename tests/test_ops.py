"""Attention kernels with log-sum-exp: they must equal an explicit fp64 softmax reference, mask or not."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import ops

pytestmark = pytest.mark.core


def reference(q, k, v, mask, scale):
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    return torch.softmax(scores, -1) @ v.double(), lse


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 3), lq=st.integers(1, 40), lk=st.integers(1, 40),
       dim=st.sampled_from([4, 8, 16]), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_fused_and_explicit_attention_match_reference(batch, heads, lq, lk, dim, masked, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=g) for n in (lq, lk, lk))
    mask = None
    if masked:
        mask = torch.rand(batch, 1, lq, lk, generator=g) > 0.4
        mask[..., 0] = True  # every query keeps at least one key
    scale = 1 / math.sqrt(dim)
    want_out, want_lse = reference(q, k, v, mask, scale)
    for fn in (ops.attention, ops.explicit_attention):
        out, lse = fn(q, k, v, mask, scale)
        torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)


def test_merge_of_disjoint_key_sets_is_exact():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (17, 30, 30))
    parts = [ops.attention(q, k[:, :, s], v[:, :, s]) for s in (slice(0, 11), slice(11, 30))]
    out, lse = ops.merge(parts)
    want_out, want_lse = reference(q, k, v, None, 8**-0.5)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)


def test_probabilities_for_a_key_subset_use_the_full_normaliser():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for n in (9, 12, 12))
    _, lse = ops.attention(q, k, v)
    p = ops.probabilities(q, k[:, :, 4:], lse, 8**-0.5)
    full = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * 8**-0.5, -1)
    torch.testing.assert_close(p.double(), full[..., 4:], rtol=1e-5, atol=1e-6)
