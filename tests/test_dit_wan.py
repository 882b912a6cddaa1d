"""Wan specifics the generic DiT tests cannot see: the token order and grid of a non-square multi-frame run, and the
tiny pipeline's small defaults on the stock class."""

from __future__ import annotations

import inspect

import pytest
import torch

from attnkit.families import dit_of
from dit_helpers import grids as _grids
from dit_helpers import pipe_fixture

diffusers = pytest.importorskip("diffusers")
if not hasattr(diffusers, "WanPipeline"):
    pytest.skip("this diffusers has no WanPipeline", allow_module_level=True)

pipe = pipe_fixture("tiny-wan")


def test_grid_of_a_non_square_multi_frame_run(pipe):
    # 9 frames -> 3 latent frames; 32x64 px -> 4x8 latent -> 2x4 tokens per frame
    grids = _grids(pipe, height=32, width=64, num_frames=9)
    assert grids and all((g.frames, g.rows, g.cols) == (3, 2, 4) for g, _ in grids)


def test_video_tokens_are_frame_major_then_row_major(pipe):
    model = pipe.transformer
    latents = torch.randn(1, model.config.in_channels, 3, 4, 8)
    with torch.inference_mode():
        tokens = model.patch_embedding(latents).flatten(2).transpose(1, 2)[0]
        grid = dit_of(model).grid({"hidden_states": latents}, model)
        assert tokens.shape[0] == grid.tokens
        conv = model.patch_embedding
        for f in range(grid.frames):
            for r in range(grid.rows):
                for c in range(grid.cols):
                    patch = latents[:, :, f:f + 1, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
                    expected = torch.nn.functional.conv3d(patch, conv.weight, conv.bias).flatten()
                    index = (f * grid.rows + r) * grid.cols + c
                    assert torch.allclose(tokens[index], expected, atol=1e-5)


def test_tiny_pipeline_is_the_stock_class_with_small_defaults(pipe):
    assert isinstance(pipe, diffusers.WanPipeline) and type(pipe).__name__ == "WanPipeline"
    assert [name for name in vars(type(pipe)) if not name.startswith("__")] == []
    parameters = inspect.signature(pipe.__call__).parameters
    assert (parameters["height"].default, parameters["width"].default, parameters["num_frames"].default) == (32, 32, 5)
    # no size, or None (what attnkit passes for "the pipeline's default"): 5 frames of 32x32 px
    assert _grids(pipe)[0][1] == _grids(pipe, height=None, width=None)[0][1] == (1, 16, 2, 4, 4)
    with torch.inference_mode():
        frames = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 32, 32, 3)
