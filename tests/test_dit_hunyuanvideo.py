"""HunyuanVideo specifics the generic DiT tests cannot see: the tiny Llama tokenizer makes the prompt template's
prefix exactly the 95 tokens the pipeline crops, so the transformer's text starts with the prompt's first token;
and the video token order (frame-major, row-major) on a non-square multi-frame run."""

from __future__ import annotations

import inspect

import pytest
import torch

from attnkit.families.hunyuanvideo import FAMILY
from attnkit.tokens import prompt_tokens
from attnkit.testing.tokenizers import VOCABULARY_WORDS
from dit_helpers import pipe_fixture

pytestmark = pytest.mark.skipif(FAMILY.model_class is None, reason="this diffusers has no HunyuanVideo")

pipe = pipe_fixture("tiny-hunyuanvideo")


def test_template_prefix_is_the_cropped_95_tokens_and_words_stay_one_token(pipe):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    tokenizer = pipe.tokenizer
    assert type(tokenizer).__name__ in ("LlamaTokenizerFast", "LlamaTokenizer")
    template, crop = DEFAULT_PROMPT_TEMPLATE["template"], DEFAULT_PROMPT_TEMPLATE["crop_start"]
    assert len(tokenizer(template.split("{}")[0]).input_ids) == crop
    for word in VOCABULARY_WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    prompt = "a red circle next to the big dog"
    fed = tokenizer(template.format(prompt), max_length=crop + 256, padding="max_length").input_ids[crop:]
    plain = tokenizer(prompt).input_ids[1:]  # without <|begin_of_text|>
    assert fed[: len(plain)] == plain and fed[len(plain)] == tokenizer.convert_tokens_to_ids("<|eot_id|>")


def test_word_positions_start_at_the_prompt(pipe):
    tokens = prompt_tokens(pipe, "a red circle", 256)
    assert [w.positions for w in tokens.words] == [(0,), (1,), (2,)]


def test_grid_is_frame_major_row_major_on_a_non_square_multi_frame_run(pipe):
    bound = {}
    signature = inspect.signature(type(pipe.transformer).forward)
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: bound.update(signature.bind_partial(m, *a, **k).arguments), with_kwargs=True)
    try:
        with torch.inference_mode():
            pipe("a red circle", num_inference_steps=1, output_type="latent", height=32, width=48, num_frames=9)
    finally:
        hook.remove()
    grid = FAMILY.grid(bound, pipe.transformer)
    assert (grid.frames, grid.rows, grid.cols) == (3, 4, 6)  # 9 frames -> 3 latent frames; 8x12 latent, 2x2 patches
    latents = torch.zeros_like(bound["hidden_states"][:1])
    frame, row, col = 2, 1, 4
    latents[:, :, frame, 2 * row, 2 * col] = 1.0
    with torch.inference_mode():
        tokens = pipe.transformer.x_embedder(latents)
        base = pipe.transformer.x_embedder(torch.zeros_like(latents))
    changed = (tokens - base).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert tokens.shape[1] == grid.tokens and changed == [(frame * grid.rows + row) * grid.cols + col]


def test_refiner_sites_are_text_only(pipe):
    import attnkit

    refiner = [s for s in attnkit.sites(pipe) if "token_refiner" in s.name]
    assert len(refiner) == 2 and {s.kind for s in refiner} == {"text"}
    grid = FAMILY.grid({"hidden_states": torch.zeros(1, 4, 2, 8, 8)}, pipe.transformer)
    assert FAMILY.parts("text", 256, 256, grid, 256) == ((("text", 256),), (("text", 256),))
    assert FAMILY.parts("joint", 32 + 256, 32 + 256, grid, 256)[0] == (("image", 32), ("text", 256))
