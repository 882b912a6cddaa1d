"""PixArt-Sigma specifics the generic DiT tests cannot see: resolution binning, the lower-cased prompt, the padded
and masked T5 text, and the token grid on a non-square image."""

import os
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from attnkit.families import dit_of
from attnkit.testing import VOCABULARY_WORDS
import dit_helpers
from dit_helpers import pipe_fixture

torch.set_num_threads(1)

pipe = pipe_fixture("tiny-pixart")
run = partial(dit_helpers.run, clean_caption=False)


def test_release_classes_and_default_256px(pipe) -> None:
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
    from transformers import T5EncoderModel, T5Tokenizer

    assert isinstance(pipe.transformer, PixArtTransformer2DModel)
    assert isinstance(pipe.text_encoder, T5EncoderModel) and isinstance(pipe.tokenizer, T5Tokenizer)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.vae_scale_factor == 8
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    image = run(pipe, output_type="np")
    assert image.shape == (1, 256, 256, 3) and np.isfinite(image).all()
    np.testing.assert_array_equal(image, run(pipe, output_type="np"))


def test_vocabulary_words_are_single_tokens(pipe) -> None:
    for word in VOCABULARY_WORDS:
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_grid_matches_the_transformer_patching_on_a_non_square_latent(pipe) -> None:
    import inspect

    model = pipe.transformer
    family = dit_of(model)
    latent = torch.randn(1, 4, 12, 20)
    text = torch.randn(1, 7, model.config.caption_channels)
    arguments = {"hidden_states": latent, "encoder_hidden_states": text, "timestep": torch.tensor([500]),
                 "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    bound = inspect.signature(type(model).forward).bind_partial(model, **arguments).arguments
    grid = family.grid(bound, model)
    assert (grid.frames, grid.rows, grid.cols) == (1, 6, 10)
    assert family.text_tokens(bound) == 7
    seen = []
    hook = model.transformer_blocks[0].attn1.register_forward_hook(lambda m, a, k, out: seen.append(out.shape[1]),
                                                                  with_kwargs=True)
    try:
        with torch.inference_mode():
            out = model(**arguments, return_dict=False)[0]
    finally:
        hook.remove()
    assert seen == [grid.tokens] and out.shape[-2:] == latent.shape[-2:]


def test_binning_decides_the_latent(pipe) -> None:
    """Any requested size is generated at the nearest 256-px bin (then resized back)."""
    latents = run(pipe, height=256, width=512, output_type="latent")
    assert latents.shape == (1, 4, 22, 44)  # bin 0.5 -> 176 x 352 px


def test_word_positions_follow_the_lower_cased_prompt(pipe) -> None:
    """The pipeline lower-cases the prompt before tokenizing; the family's stream tokenizes it the same way."""
    family = dit_of(pipe.transformer)
    prompt = "A Red circle next to a BLUE tree"
    captured = []
    hook = pipe.text_encoder.register_forward_pre_hook(lambda m, a, k: captured.append(a[0] if a else k["input_ids"]),
                                                       with_kwargs=True)
    try:
        run(pipe, prompt, output_type="latent", guidance_scale=1.0)
    finally:
        hook.remove()
    ids = captured[0][0].tolist()
    [(tokenizer, first, length)] = family.streams(pipe, len(ids))
    encoded = tokenizer(prompt, max_length=length, truncation=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    vocab = pipe.tokenizer.get_vocab()
    for index, ((start, end), special) in enumerate(zip(encoded["offset_mapping"], encoded["special_tokens_mask"])):
        if special:
            continue
        word = prompt[start:end].strip().lower()
        assert ids[first + index] == vocab["▁" + word], (index, word)
    assert len(ids) == 300 and ids.count(pipe.tokenizer.pad_token_id) == 300 - 9


def test_cross_attention_gets_the_text_mask(pipe) -> None:
    import torch.nn.functional as F

    masks = []
    original = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        masks.append((key.shape[2], None if attn_mask is None else tuple(attn_mask.shape)))
        return original(query, key, value, attn_mask=attn_mask, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        run(pipe, output_type="latent")
    finally:
        F.scaled_dot_product_attention = original
    heads = pipe.transformer.config.num_attention_heads
    # T5's own attention (text encoder) is in the list too; the transformer's calls are 256 image tokens of queries.
    assert (256, None) in masks  # self-attention: no mask
    assert (300, (2, heads, 1, 300)) in masks  # cross-attention: (batch with CFG, heads, 1, text) bias


def test_image_tokens_are_row_major_patches(pipe) -> None:
    """A latent that differs from zero in one patch only changes one token of the patch embedding: r * cols + c."""
    model = pipe.transformer
    patch = model.config.patch_size
    rows, cols, r, c = 6, 10, 4, 7
    latent = torch.zeros(1, 4, rows * patch, cols * patch)
    latent[..., r * patch, c * patch + 1] = 1.0
    with torch.inference_mode():
        changed = (model.pos_embed(latent) - model.pos_embed(torch.zeros_like(latent)))[0].abs().sum(-1)
    assert changed.nonzero().flatten().tolist() == [r * cols + c]
