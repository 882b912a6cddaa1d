"""AuraFlow specifics the generic DiT tests cannot see: the fixed 1024 px default, the 8 register tokens before the
text, the UMT5 text positions, and the token grid on a non-square image."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import inspect

import numpy as np
import torch
import torch.nn.functional as F

import attnkit
from attnkit.families import dit_of
from attnkit.families.auraflow import REGISTER_TOKENS
from attnkit.testing import VOCABULARY_WORDS
from dit_helpers import pipe_fixture, run

torch.set_num_threads(1)

pipe = pipe_fixture("tiny-auraflow")


def test_release_classes_and_fixed_1024px_default(pipe) -> None:
    from diffusers import AuraFlowTransformer2DModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import T5Tokenizer, UMT5EncoderModel

    assert isinstance(pipe.transformer, AuraFlowTransformer2DModel)
    assert isinstance(pipe.text_encoder, UMT5EncoderModel) and isinstance(pipe.tokenizer, T5Tokenizer)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 1.73
    assert pipe.transformer.config.sample_size * pipe.vae_scale_factor == 1024  # what the signature defaults to
    latents = run(pipe, output_type="latent")
    assert latents.shape == (1, 4, 32, 32)
    np.testing.assert_array_equal(latents, run(pipe, output_type="latent"))


def test_vocabulary_words_are_single_tokens(pipe) -> None:
    for word in VOCABULARY_WORDS:
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_register_tokens_lead_every_sequence(pipe) -> None:
    """The layout's "pad" part is the transformer's register tokens, then the text, then a row-major image grid
    matching the transformer's own patching, on a non-square latent."""
    model = pipe.transformer
    family = dit_of(model)
    assert model.register_tokens.shape[1] == REGISTER_TOKENS
    latent = torch.randn(1, 4, 12, 20)
    arguments = {"hidden_states": latent, "encoder_hidden_states": torch.randn(1, 7, model.config.joint_attention_dim),
                 "timestep": torch.tensor([0.5])}
    bound = inspect.signature(type(model).forward).bind_partial(model, **arguments).arguments
    grid = family.grid(bound, model)
    assert (grid.frames, grid.rows, grid.cols) == (1, 6, 10)
    kinds = {site.name.removesuffix(".processor"): site.kind for site in attnkit.sites(model)}
    assert sorted(set(kinds.values())) == ["joint", "single"]
    lengths = []
    original = F.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        lengths.append((query.shape[2], key.shape[2], kwargs.get("attn_mask")))
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        with torch.inference_mode():
            out = model(**arguments, return_dict=False)[0]
    finally:
        F.scaled_dot_product_attention = original
    assert out.shape == latent.shape
    assert len(lengths) == len(kinds)
    for (queries, keys, mask), kind in zip(lengths, kinds.values()):
        assert mask is None
        query_parts, key_parts = family.parts(kind, queries, keys, grid, family.text_tokens(bound))
        assert query_parts == key_parts == (("pad", REGISTER_TOKENS), ("text", 7), ("image", 60))


def test_word_positions_match_the_encoded_text(pipe) -> None:
    family = dit_of(pipe.transformer)
    prompt = "a red circle next to a blue tree"
    captured = []
    hook = pipe.text_encoder.register_forward_pre_hook(lambda m, a, k: captured.append(k["input_ids"]),
                                                       with_kwargs=True)
    try:
        run(pipe, prompt, output_type="latent", guidance_scale=1.0)
    finally:
        hook.remove()
    ids = captured[0][0].tolist()
    assert len(ids) == 256  # padded to max_sequence_length
    [(tokenizer, first, length)] = family.streams(pipe, len(ids))
    encoded = tokenizer(prompt, max_length=length, truncation=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    vocab = pipe.tokenizer.get_vocab()
    words = 0
    for index, ((start, end), special) in enumerate(zip(encoded["offset_mapping"], encoded["special_tokens_mask"])):
        if not special:
            assert ids[first + index] == vocab["▁" + prompt[start:end].strip()]
            words += 1
    assert words == len(prompt.split())


def test_timestep_scale_gives_scheduler_units(pipe) -> None:
    family = dit_of(pipe.transformer)
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["timestep"][0].item()),
                                                      with_kwargs=True)
    try:
        run(pipe, output_type="latent")
    finally:
        hook.remove()
    np.testing.assert_allclose([t * family.timestep_scale for t in seen], pipe.scheduler.timesteps.tolist(),
                               rtol=1e-5)


def test_image_tokens_are_row_major_patches(pipe) -> None:
    """A latent that differs from zero in one patch only changes one token of the patch embedding: r * cols + c."""
    model = pipe.transformer
    patch = model.config.patch_size
    rows, cols, r, c = 6, 10, 4, 7
    latent = torch.zeros(1, 4, rows * patch, cols * patch)
    latent[..., r * patch + 1, c * patch] = 1.0
    with torch.inference_mode():
        changed = (model.pos_embed(latent) - model.pos_embed(torch.zeros_like(latent)))[0].abs().sum(-1)
    assert changed.nonzero().flatten().tolist() == [r * cols + c]
