"""Sana specifics the generic family tests cannot see: the Gemma tokenizer keeps every vocabulary word one token, word
positions land on the prompt after the pipeline drops its instruction prefix, the grid and token order follow the
transformer's own patching on a non-square latent, and the linear self-attention sites are listed but never taken
over (no softmax there)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers.pipelines.sana")

import attnkit
from attnkit.errors import AttnkitError
from attnkit.families import dit_of
from attnkit.tokens import prompt_tokens
from attnkit.processors import Control
from attnkit.testing import VOCABULARY_WORDS
from attnkit.testing.dits._gemma_tokenizer import tiny_gemma_tokenizer
from dit_helpers import forward_arguments, pipe_fixture

PROMPT = "a red circle next to a blue square"

pipe = pipe_fixture("tiny-sana")


def test_every_vocabulary_word_is_one_token_alone_and_after_a_space():
    tokenizer = tiny_gemma_tokenizer()
    for word in VOCABULARY_WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
        assert len(tokenizer(f"x {word}", add_special_tokens=False).input_ids) == 2, word
    assert tokenizer("a").input_ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("prompt", [PROMPT, "  A Red CIRCLE next to a Blue square"])
def test_word_positions_are_the_prompt_tokens_the_transformer_sees(pipe, prompt):
    ids = []
    handle = pipe.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: ids.append((args[0] if args else kwargs["input_ids"]).clone()), with_kwargs=True)
    try:
        forward_arguments(pipe, prompt)
    finally:
        handle.remove()
    max_length = 300  # the pipeline's default max_sequence_length: <bos> and the last 299 positions are kept
    seen = ids[0][0, [0, *range(-max_length + 1, 0)]]  # the prompt is encoded first, then the negative
    words = prompt_tokens(pipe, prompt, max_length).words
    assert [w.text for w in words] == prompt.split()
    for word in words:  # the pipeline encodes the prompt lower-cased
        (position,) = word.positions
        assert pipe.tokenizer.decode([int(seen[position])]).strip() == word.text.lower()


def test_grid_and_token_order_follow_the_transformers_patching(pipe):
    # 8 x 12 latents (f32)
    bound = forward_arguments(pipe, PROMPT, height=256, width=384, use_resolution_binning=False)[0]
    grid = dit_of(pipe.transformer).grid(bound, pipe.transformer)
    assert (grid.frames, grid.rows, grid.cols) == (1, 8, 12)
    latent = torch.zeros(1, *bound["hidden_states"].shape[1:])
    base = pipe.transformer.patch_embed(latent)
    for row, col in [(0, 5), (3, 0), (7, 11)]:
        poked = latent.clone()
        poked[0, :, row, col] = 1.0
        changed = (pipe.transformer.patch_embed(poked) - base).abs().sum(-1)[0].nonzero().flatten()
        assert changed.tolist() == [row * grid.cols + col]


def test_linear_self_attention_sites_are_listed_with_kind_linear(pipe):
    sites = attnkit.sites(pipe)
    linear = [s for s in sites if s.kind == "linear"]
    assert linear and all(s.module_name.endswith("attn1") for s in linear)
    named = dict(pipe.transformer.named_modules())
    assert {type(named[s.module_name].get_processor()).__name__ for s in linear} == {"SanaLinearAttnProcessor2_0"}
    assert "SanaLinearAttnProcessor2_0" not in dit_of(pipe.transformer).processors
    assert {s.kind for s in sites if s.module_name.endswith("attn2")} == {"cross"}


def test_a_control_at_a_linear_site_is_refused_naming_it(pipe):
    class Nothing(Control):
        name = "nothing"

    site = next(s for s in attnkit.sites(pipe) if s.kind == "linear")
    before = type(pipe.transformer.get_submodule(site.module_name).get_processor())
    with pytest.raises(AttnkitError, match=r"attn1.processor is linear attention \(no softmax\)"):
        with attnkit.attach(pipe, Nothing(), [site]):
            pass
    assert type(pipe.transformer.get_submodule(site.module_name).get_processor()) is before
