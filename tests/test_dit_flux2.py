"""Flux.2 specifics the generic family tests cannot see: the Tekken-style tokenizer keeps every vocabulary word one
token, word positions land on the prompt inside the chat-templated 512-token text, the grid follows a non-square
image, and reference-image tokens (image-to-image) are laid out as "pad"."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers.pipelines.flux2")

from attnkit.families import dit_of  # noqa: E402
from attnkit.tokens import prompt_tokens  # noqa: E402
from attnkit.testing import VOCABULARY_WORDS  # noqa: E402
from attnkit.testing.dits._flux2_tokenizer import tiny_mistral_tokenizer  # noqa: E402
from dit_helpers import forward_arguments, pipe_fixture  # noqa: E402

PROMPT = "a red circle next to a blue square"

pipe = pipe_fixture("tiny-flux2")


def test_every_vocabulary_word_is_one_token_alone_and_after_a_space():
    tokenizer = tiny_mistral_tokenizer()
    for word in VOCABULARY_WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
        assert len(tokenizer(f"x {word}", add_special_tokens=False).input_ids) == 2, word


def test_word_positions_are_the_prompt_tokens_inside_the_templated_text(pipe):
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    inputs = pipe.tokenizer.apply_chat_template(
        format_input([PROMPT], system_message=pipe.system_message), add_generation_prompt=False, tokenize=True,
        return_dict=True, return_tensors="pt", padding="max_length", truncation=True, max_length=512)
    ids = inputs["input_ids"][0]
    tokenizer = getattr(pipe.tokenizer, "tokenizer", pipe.tokenizer)
    words = prompt_tokens(pipe, PROMPT, 512).words
    assert [w.text for w in words] == PROMPT.split()
    for word in words:
        (position,) = word.positions
        assert tokenizer.decode([int(ids[position])]).strip() == word.text


def test_grid_follows_a_non_square_image(pipe):
    bound = forward_arguments(pipe, PROMPT, height=64, width=96)[0]  # 16 x 24 latents -> 8 x 12 tokens
    family = dit_of(pipe.transformer)
    grid = family.grid(bound, pipe.transformer)
    assert (grid.frames, grid.rows, grid.cols) == (1, 8, 12)
    assert bound["hidden_states"].shape[1] == grid.tokens
    ids = bound["img_ids"][0]
    assert torch.equal(ids[:, 1] * grid.cols + ids[:, 2], torch.arange(grid.tokens))  # row-major


def test_reference_image_tokens_are_pad(pipe):
    from PIL import Image

    bound = forward_arguments(pipe, PROMPT, image=Image.new("RGB", (64, 64), "red"), height=64, width=64)[0]
    family = dit_of(pipe.transformer)
    grid = family.grid(bound, pipe.transformer)
    text = bound["encoder_hidden_states"].shape[1]
    total = text + bound["hidden_states"].shape[1]
    assert grid.tokens == 64 and bound["hidden_states"].shape[1] == 128
    queries, keys = family.parts("joint", total, total, grid, text)
    assert queries == keys == (("text", text), ("image", 64), ("pad", 64))
