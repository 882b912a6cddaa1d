"""Z-Image specifics the generic DiT tests cannot see: the chat template's prefix before the prompt's tokens, and the
padding to multiples of 32 tokens in the refiners and the single-stream sequence, on an image whose token count is
not a multiple of 32."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.families import Grid, dits
from attnkit.tokens import prompt_tokens
from attnkit.testing import VOCABULARY_WORDS
from dit_helpers import Keep, pipe_fixture

FAMILY = next(f for f in dits() if f.name == "zimage")
pytestmark = pytest.mark.skipif(FAMILY.model_class is None, reason="this diffusers has no ZImageTransformer2DModel")
PROMPT = "a red circle next to the blue dog"

pipe = pipe_fixture("tiny-zimage")


def test_every_vocabulary_word_is_one_token_alone_and_after_a_space(pipe):
    for word in VOCABULARY_WORDS:
        assert len(pipe.tokenizer(word).input_ids) == 1, word
        assert len(pipe.tokenizer(" " + word).input_ids) == 1, word


def test_word_positions_are_where_the_caption_holds_the_prompt_tokens(pipe):
    captions, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    rendered = pipe.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=True)
    ids = pipe.tokenizer(rendered).input_ids
    assert captions[0].shape[0] == len(ids) == 3 + 8 + 5  # <|im_start|>user\n, the prompt, the closing tokens
    assert ids[3:11] == pipe.tokenizer(PROMPT).input_ids
    tokens = prompt_tokens(pipe, PROMPT, captions[0].shape[0])
    assert tokens.positions("dog") == [10] and tokens.positions("a") == [3]


class _Layouts(attnkit.processors.Control):
    name = "layouts"

    def __init__(self):
        self.seen = {}

    def before(self, call):
        self.seen.setdefault(call.site.name, (call.layout, call.grid))


def test_layouts_mark_the_padding_to_multiples_of_32(pipe):
    keep = _Layouts()
    with attnkit.attach(pipe, keep), torch.inference_mode():  # no CFG: one batch item
        pipe(PROMPT, height=5 * 64, width=7 * 64, num_inference_steps=2, guidance_scale=0.0, output_type="latent")
    image, image_pad, text, text_pad = 35, 29, 16, 16
    layout, grid = keep.seen["noise_refiner.0.attention.processor"]
    assert tuple(grid) == (5, 7)
    assert layout.queries == layout.keys == (("image", image), ("pad", image_pad))
    layout, _ = keep.seen["context_refiner.0.attention.processor"]
    assert layout.queries == (("text", text), ("pad", text_pad))
    layout, _ = keep.seen["layers.0.attention.processor"]
    assert layout.queries == (("image", image), ("pad", image_pad), ("text", text), ("pad", text_pad))
    assert layout.span("queries", "text") == slice(image + image_pad, image + image_pad + text)


def test_refiners_as_long_as_each_other_are_told_apart_by_their_kind():
    # 16 image tokens and 20 caption tokens both pad to 32: the noise refiner is "self", the context refiner "text"
    assert FAMILY.parts("self", 32, 32, Grid(1, 4, 4), 20) == ((("image", 16), ("pad", 16)),) * 2
    assert FAMILY.parts("text", 32, 32, Grid(1, 4, 4), 20) == ((("text", 20), ("pad", 12)),) * 2


def test_items_left_after_cfg_truncation_are_labelled_cond(pipe):
    # two images per prompt: a guided step batches [cond, cond, uncond, uncond]; once `cfg_truncation` is passed the
    # pipeline runs the two cond items alone, an even batch that is not [cond, uncond]
    keep = Keep(lambda call: (call.state.step, call.state.branches))
    site = next(s for s in attnkit.sites(pipe) if s.kind == "single")
    with attnkit.attach(pipe, keep, [site]), torch.inference_mode():
        pipe(prompt=PROMPT, num_inference_steps=3, num_images_per_prompt=2, output_type="latent", height=64, width=64,
             guidance_scale=4.0, cfg_truncation=0.0)  # guided at step 0 only
    assert keep.calls[0] == (0, ("cond", "cond", "uncond", "uncond"))
    assert [branches for step, branches in keep.calls[1:]] == [("cond", "cond")] * 2
