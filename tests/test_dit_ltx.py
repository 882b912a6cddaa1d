"""LTX-Video specifics the generic DiT tests cannot see: the token order and grid of a non-square multi-frame run,
the cross-attention's text-mask bias, and the tiny pipeline's small defaults on the stock class."""

from __future__ import annotations

import inspect

import pytest
import torch

import attnkit
from attnkit.processors import Control
from dit_helpers import grids as _grids
from dit_helpers import pipe_fixture

diffusers = pytest.importorskip("diffusers")
if not hasattr(diffusers, "LTXPipeline"):
    pytest.skip("this diffusers has no LTXPipeline", allow_module_level=True)

pipe = pipe_fixture("tiny-ltx")


def test_grid_of_a_non_square_multi_frame_run(pipe):
    # 17 frames -> 3 latent frames; 64x128 px -> 2x4 latent = tokens per frame (patch 1)
    grids = _grids(pipe, height=64, width=128, num_frames=17)
    assert grids and all((g.frames, g.rows, g.cols) == (3, 2, 4) and shape[1] == 24 for g, shape in grids)


def test_video_tokens_are_frame_major_then_row_major(pipe):
    latents = torch.randn(1, pipe.transformer.config.in_channels, 3, 2, 4)
    tokens = type(pipe)._pack_latents(latents, 1, 1)[0]
    for f in range(3):
        for r in range(2):
            for c in range(4):
                assert torch.equal(tokens[(f * 2 + r) * 4 + c], latents[0, :, f, r, c])


class _Masks(Control):
    name = "masks"

    def __init__(self):
        self.seen = []

    def before(self, call):
        self.seen.append((call.site.kind, None if call.mask is None else call.mask.clone(), call.k.shape[2]))


def test_cross_attention_masks_the_text_padding(pipe):
    masks = _Masks()
    with attnkit.attach(pipe, masks), torch.inference_mode():
        pipe("a red circle", num_inference_steps=1, output_type="latent")
    cross = [(mask, keys) for kind, mask, keys in masks.seen if kind == "cross"]
    assert cross and all(mask is None for kind, mask, _ in masks.seen if kind == "self")
    # [uncond | cond]: the negative prompt "" is eos alone; the prompt is 3 words and eos
    for mask, keys in cross:
        assert keys == 128 and mask.shape == (2, pipe.transformer.config.num_attention_heads, 1, 128)
        for row, tokens in ((0, 1), (1, len(pipe.tokenizer("a red circle").input_ids))):
            assert (mask[row, ..., :tokens] == 0).all() and (mask[row, ..., tokens:] == -10000).all()


def test_tiny_pipeline_is_the_stock_class_with_small_defaults(pipe):
    assert isinstance(pipe, diffusers.LTXPipeline) and type(pipe).__name__ == "LTXPipeline"
    parameters = inspect.signature(pipe.__call__).parameters
    assert (parameters["height"].default, parameters["width"].default, parameters["num_frames"].default) == (64, 64, 9)
    assert _grids(pipe)[0][1] == _grids(pipe, height=None, width=None)[0][1] == (2, 8, 8)
    with torch.inference_mode():
        frames = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="pt").frames
    assert frames.shape == (1, 9, 3, 64, 64)
