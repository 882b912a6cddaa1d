"""Lumina 2 specifics the generic family tests cannot see: word positions land on the prompt after the system prompt,
the grid and token order follow the transformer's own patching on a non-square latent, the context refiner's
padded text and the joint sequence are laid out as the transformer builds them, and a batch of prompts of different
lengths (one joint layout per item) is a clear error."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers.pipelines.lumina2")

import attnkit
from attnkit.errors import AttnkitError
from attnkit.families import Grid, dit_of, dits
from attnkit.tokens import prompt_tokens
from dit_helpers import Keep, forward_arguments, pipe_fixture

PROMPT = "a red circle next to a blue square"

pipe = pipe_fixture("tiny-lumina2")


def test_word_positions_are_the_prompt_tokens_after_the_system_prompt(pipe):
    ids = []
    handle = pipe.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: ids.append((args[0] if args else kwargs["input_ids"]).clone()), with_kwargs=True)
    try:
        bound = forward_arguments(pipe, PROMPT)[0]  # the cond forward comes first
    finally:
        handle.remove()
    text_tokens = dit_of(pipe.transformer).text_tokens(bound)
    assert text_tokens == int(bound["encoder_attention_mask"].sum())
    seen = ids[0][0]  # the prompt is encoded first, then the negative
    words = prompt_tokens(pipe, PROMPT, text_tokens).words
    assert [w.text for w in words] == PROMPT.split()
    for word in words:
        (position,) = word.positions
        assert pipe.tokenizer.decode([int(seen[position])]).strip() == word.text
    assert words[-1].positions[0] == text_tokens - 1  # the prompt ends the unpadded text


def test_grid_and_token_order_follow_the_transformers_patching(pipe):
    bound = forward_arguments(pipe, PROMPT, height=64, width=96)[0]  # 8 x 12 latents, patch 2 -> 4 x 6 tokens
    model = pipe.transformer
    grid = dit_of(model).grid(bound, model)
    assert (grid.frames, grid.rows, grid.cols) == (1, 4, 6)
    latent = torch.zeros(1, *bound["hidden_states"].shape[1:])
    mask = bound["encoder_attention_mask"][:1]
    base = model.rope_embedder(latent, mask)[0]
    for row, col in [(0, 5), (3, 0), (2, 3)]:
        poked = latent.clone()
        poked[0, :, 2 * row, 2 * col] = 1.0
        changed = (model.rope_embedder(poked, mask)[0] - base).abs().sum(-1)[0].nonzero().flatten()
        assert changed.tolist() == [row * grid.cols + col]


def test_layouts_of_the_three_block_kinds():
    family = next(f for f in dits() if f.name == "lumina2")
    grid = Grid(1, 4, 4)
    # noise refiner: image only
    assert family.parts("self", 16, 16, grid, 35) == ((("image", 16),), (("image", 16),))
    # context refiner: the text padded to max_sequence_length
    assert family.parts("text", 256, 256, grid, 35)[0] == (("text", 35), ("pad", 221))
    assert family.parts("text", 16, 16, grid, 10)[0] == (("text", 10), ("pad", 6))  # as long as the image: text
    # joint blocks: [text | image], padding only in batches of different lengths
    assert family.parts("joint", 51, 51, grid, 35)[0] == (("text", 35), ("image", 16), ("pad", 0))


def _record(call):
    return call.site.stage, call.q.shape[2], call.layout


def test_the_calls_of_a_run_fit_their_layouts(pipe):
    keep = Keep(_record)
    with attnkit.attach(pipe, keep):
        forward_arguments(pipe, PROMPT)
    stages = {stage for stage, _, _ in keep.calls}
    assert stages == {"context", "noise", "joint"}
    assert all(n > 0 for _, n, _ in keep.calls)


def test_a_batch_of_prompts_of_different_lengths_is_refused(pipe):
    with attnkit.attach(pipe, Keep(_record)), pytest.raises(AttnkitError, match="different token lengths"):
        forward_arguments(pipe, ["a red circle", "a big blue square next to a tree"])


def test_cfg_forwards_are_labelled_cond_then_uncond(pipe):
    keep = Keep(lambda call: (call.state.step, call.state.branches, call.state.text_tokens))
    site = next(s for s in attnkit.sites(pipe) if s.kind == "joint")
    with attnkit.attach(pipe, keep, [site]), torch.inference_mode():
        pipe(prompt=PROMPT, num_inference_steps=2, output_type="latent", cfg_trunc_ratio=0.5)
    # step 0: the prompt (cond), then the empty negative prompt (<bos> only, uncond); step 1: truncated, cond only
    assert [(step, branches) for step, branches, _ in keep.calls] == [(0, ("cond",)), (0, ("uncond",)), (1, ("cond",))]
    assert keep.calls[1][2] == 1 and keep.calls[0][2] == keep.calls[2][2] > 1
