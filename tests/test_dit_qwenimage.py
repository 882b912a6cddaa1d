"""Qwen-Image specifics the generic DiT tests cannot see: the chat-template prefix the pipeline drops, the text
positions of the prompt's words, and the token grid on a non-square image."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families import dits
from attnkit.tokens import prompt_tokens
from attnkit.testing import VOCABULARY_WORDS
from dit_helpers import pipe_fixture

FAMILY = next(f for f in dits() if f.name == "qwenimage")
pytestmark = pytest.mark.skipif(FAMILY.model_class is None, reason="this diffusers has no QwenImageTransformer2DModel")

pipe = pipe_fixture("tiny-qwenimage")


def test_every_vocabulary_word_is_one_token_alone_and_after_a_space(pipe):
    for word in VOCABULARY_WORDS:
        assert len(pipe.tokenizer(word).input_ids) == 1, word
        assert len(pipe.tokenizer(" " + word).input_ids) == 1, word


def test_the_template_prefix_is_exactly_the_tokens_the_pipeline_drops(pipe):
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34


def test_word_positions_are_where_the_transformer_sees_the_prompt_tokens(pipe):
    prompt = "a red circle next to the blue dog"
    embeds, mask = pipe.encode_prompt(prompt)
    assert mask is None
    ids = pipe.tokenizer(pipe.prompt_template_encode.format(prompt)).input_ids[pipe.prompt_template_encode_start_idx:]
    assert embeds.shape[1] == len(ids)
    plain = pipe.tokenizer(prompt).input_ids
    assert ids[: len(plain)] == plain  # the prompt's own tokens come first
    tokens = prompt_tokens(pipe, prompt, embeds.shape[1])
    assert tokens.positions("dog") == [plain.index(pipe.tokenizer.convert_tokens_to_ids("Ġdog"))] == [7]


def test_grid_follows_img_shapes_on_a_non_square_image(pipe):
    seen = []
    site = attnkit.sites(pipe)[0]

    class Keep(attnkit.processors.Control):
        name = "keep"

        def before(self, call):
            seen.append((call.grid, call.layout))

    with attnkit.attach(pipe, Keep(), [site]), torch.inference_mode():
        pipe("a red circle", height=32, width=64, num_inference_steps=2, output_type="latent")
    grid, layout = seen[0]
    assert tuple(grid) == (32 // 4 // 2, 64 // 4 // 2)
    assert layout.span("queries", "text") == slice(0, 8)  # 3 prompt tokens, then the template's 5 closing tokens
    assert layout.span("queries", "image") == slice(8, 8 + 4 * 8)


def test_edit_reference_image_tokens_are_pad():
    queries, keys = FAMILY.parts("joint", 8 + 32 + 32, 8 + 32 + 32, attnkit.families.Grid(1, 4, 8), 8)
    assert queries == keys == (("text", 8), ("image", 32), ("pad", 32))
