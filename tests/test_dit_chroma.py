"""Chroma specifics the generic family tests cannot see: the grid on a non-square image, the stock attention mask
(float 0/1 over [text | image], added to the logits) and exact word maps under it, and the CFG branch of Chroma's
second, negative-prompt forward per step."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers.pipelines.chroma")

import attnkit  # noqa: E402
from attnkit import maps  # noqa: E402
from attnkit.families import dit_of  # noqa: E402
from dit_helpers import Keep, forward_arguments, pipe_fixture  # noqa: E402

PROMPT = "a red circle"

pipe = pipe_fixture("tiny-chroma")


def _record(call):
    return (call.state.step, tuple(call.state.branches), call.q.clone(), call.k.clone(), call.mask, call.layout,
            call.grid, call.scale)


def test_grid_follows_a_non_square_image(pipe):
    (bound, *_) = forward_arguments(pipe, PROMPT, height=64, width=96, guidance_scale=1.0)  # 8 x 12 packed tokens
    grid = dit_of(pipe.transformer).grid(bound, pipe.transformer)
    assert (grid.frames, grid.rows, grid.cols) == (1, 8, 12)
    assert bound["hidden_states"].shape[1] == grid.tokens
    ids = bound["img_ids"].reshape(-1, 3)
    assert torch.equal(ids[:, 1] * grid.cols + ids[:, 2], torch.arange(grid.tokens))  # row-major


def test_the_stock_mask_keeps_the_prompt_and_one_padding_token(pipe):
    (bound, *_) = forward_arguments(pipe, PROMPT, guidance_scale=1.0)
    mask = bound["attention_mask"]
    text = bound["encoder_hidden_states"].shape[1]
    prompt = len(pipe.tokenizer(PROMPT).input_ids)  # words and </s>
    assert mask.shape == (1, text + 64) and mask.dtype == torch.float32
    assert torch.equal(mask[0, :text].nonzero().flatten(), torch.arange(prompt + 1))
    assert bool(mask[0, text:].all())


def test_word_maps_are_exact_under_the_additive_mask_without_cfg(pipe):
    site = next(s for s in attnkit.sites(pipe) if s.kind == "joint")
    keep = Keep(_record)
    with maps.trace(pipe, prompt=PROMPT, sites_=[site], steps=[0]) as trace, attnkit.attach(pipe, keep, [site]):
        with torch.inference_mode():
            pipe(PROMPT, num_inference_steps=2, guidance_scale=1.0, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
    _, _, q, k, mask, layout, grid, scale = keep.calls[0]
    assert mask is not None and mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, 1.0}
    probabilities = (q.double() @ k.double().transpose(-1, -2) * scale + mask.double()).softmax(-1)
    rows, cols = layout.span("queries", "image"), layout.span("keys", "text")
    reference = probabilities[:, :, rows, cols].sum(1).transpose(1, 2)
    reference = reference.reshape(*reference.shape[:2], *grid) / q.shape[1]
    assert torch.allclose(trace.maps.double(), reference, atol=1e-5)


def test_the_negative_prompt_forward_is_the_uncond_branch(pipe):
    site = next(s for s in attnkit.sites(pipe) if s.kind == "joint")
    keep = Keep(_record)
    with attnkit.attach(pipe, keep, [site]), torch.inference_mode():
        pipe(PROMPT, num_inference_steps=1, guidance_scale=5.0, output_type="latent")
    assert [branches for _, branches, *_ in keep.calls] == [("cond",), ("uncond",)]
    keep.calls.clear()
    with attnkit.attach(pipe, keep, [site]), torch.inference_mode():  # two prompts: still one forward per branch
        pipe([PROMPT, "a blue square"], num_inference_steps=2, guidance_scale=5.0, output_type="latent")
    assert [branches for _, branches, *_ in keep.calls] == [("cond", "cond"), ("uncond", "uncond")] * 2
