"""Tests of attnkit.testing: the offline pipelines every other test builds on."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from attnkit import AttnkitError
from attnkit.testing import (
    DENOISER_NAMES,
    FLUX_DEV_TRANSFORMER_CONFIG,
    PIPELINE_NAMES,
    SD3_MEDIUM_TRANSFORMER_CONFIG,
    SD15_UNET_CONFIG,
    SDXL_UNET_CONFIG,
    SD15_VAE_CONFIG,
    TINY_IMAGE_SIZE,
    VOCABULARY_WORDS,
    build_pipeline,
    meta_denoiser,
    random_full_size_pipeline,
    random_sd15_pipeline,
    tiny_clip_tokenizer,
    tiny_t5_tokenizer,
)
from attnkit.testing.configs import SD15_TEXT_ENCODER_CONFIG, SD35_MEDIUM_DUAL_ATTENTION_BLOCKS

pytestmark = pytest.mark.core

torch.set_num_threads(1)

PROMPT = "a red circle"
STEPS = 2
# Reloaded weights are memory-mapped with a different alignment, so CPU kernels may
# take another vectorised path: results agree to float32 rounding, not bit for bit.
RELOAD_ATOL = 1e-5

# Attention processors per tiny denoiser, and (for the UNets) distinct latent token
# counts their self-attention runs at for a 64 px image.
TINY_PROCESSOR_COUNTS = {"tiny-sd15": 14, "tiny-sdxl": 22, "tiny-sd3": 2, "tiny-sd35": 5, "tiny-flux": 4}
TINY_NAMES = tuple(TINY_PROCESSOR_COUNTS)  # the pipelines of the other DiT families: tests/test_dits.py
TINY_UNET_TOKEN_COUNTS = {"tiny-sd15": {16 * 16, 8 * 8}, "tiny-sdxl": {8 * 8, 4 * 4}}
# Joint-attention text tokens with default arguments: CLIP 77 + T5 256 (SD3), T5 512 (Flux).
TINY_JOINT_TEXT_TOKENS = {"tiny-sd3": 77 + 256, "tiny-sd35": 77 + 256, "tiny-flux": 512}
TINY_IMAGE_TOKENS = 8 * 8  # 64 px / VAE 4 / patch (or packing) 2, squared


@pytest.fixture(scope="module", params=TINY_NAMES)
def tiny(request: pytest.FixtureRequest) -> tuple[str, DiffusionPipeline]:
    return request.param, build_pipeline(request.param)


def generate(pipe: DiffusionPipeline, seed: int = 0, **kwargs: object) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPT, num_inference_steps=STEPS, generator=generator, output_type="np", **kwargs).images


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def test_default_call_is_64px_and_deterministic(tiny: tuple[str, DiffusionPipeline]) -> None:
    _, pipe = tiny
    first = generate(pipe)
    assert first.shape == (1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, generate(pipe))
    assert not np.array_equal(first, generate(pipe, seed=1))


def test_prompt_changes_the_image(tiny: tuple[str, DiffusionPipeline]) -> None:
    _, pipe = tiny
    generator = torch.Generator().manual_seed(0)
    other = pipe("a blue dog", num_inference_steps=STEPS, generator=generator, output_type="np").images
    assert not np.array_equal(generate(pipe), other)


def test_builder_is_seeded_and_keeps_global_rng(tiny: tuple[str, DiffusionPipeline]) -> None:
    name, pipe = tiny
    rng_before = torch.random.get_rng_state()
    rebuilt = build_pipeline(name)
    assert torch.equal(rng_before, torch.random.get_rng_state())
    for key, value in denoiser(pipe).state_dict().items():
        assert torch.equal(value, denoiser(rebuilt).state_dict()[key]), key
    assert not np.array_equal(generate(pipe), generate(build_pipeline(name, seed=1)))


def test_every_module_is_eval_float32_cpu(tiny: tuple[str, DiffusionPipeline]) -> None:
    _, pipe = tiny
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            assert not any(module.training for module in component.modules())
            assert {(p.dtype, p.device.type) for p in component.parameters()} == {(torch.float32, "cpu")}


def test_save_and_from_pretrained_round_trip(tiny: tuple[str, DiffusionPipeline], tmp_path) -> None:
    _, pipe = tiny
    pipe.save_pretrained(tmp_path)
    reloaded = type(pipe).from_pretrained(tmp_path)
    # Flux's default size is not part of the saved config, so pass it explicitly.
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    np.testing.assert_allclose(generate(pipe, **size), generate(reloaded, **size), rtol=0, atol=RELOAD_ATOL)


def record_attention_shapes(pipe: DiffusionPipeline) -> list[tuple[int, int | None]]:
    """(query tokens, text tokens or None) for every attention call of one generation."""
    calls: list[tuple[int, int | None]] = []

    def hook(module, args, kwargs, output) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        context = kwargs.get("encoder_hidden_states")
        calls.append((hidden.shape[1], None if context is None else context.shape[1]))

    module = denoiser(pipe)
    attention_modules = [module.get_submodule(name.removesuffix(".processor")) for name in module.attn_processors]
    handles = [attention.register_forward_hook(hook, with_kwargs=True) for attention in attention_modules]
    try:
        generate(pipe)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def test_attention_layout(tiny: tuple[str, DiffusionPipeline]) -> None:
    name, pipe = tiny
    assert len(denoiser(pipe).attn_processors) == TINY_PROCESSOR_COUNTS[name]
    calls = record_attention_shapes(pipe)
    if name in TINY_UNET_TOKEN_COUNTS:
        assert {tokens for tokens, context in calls if context is None} == TINY_UNET_TOKEN_COUNTS[name]
    else:
        assert (TINY_IMAGE_TOKENS, TINY_JOINT_TEXT_TOKENS[name]) in calls


def test_sd35_has_image_only_attn2_in_some_blocks() -> None:
    blocks = build_pipeline("tiny-sd35").transformer.transformer_blocks
    with_attn2 = [block.attn2 is not None for block in blocks]
    assert any(with_attn2) and not all(with_attn2)
    assert all(block.attn.norm_q is not None for block in blocks)


@pytest.mark.parametrize("make_tokenizer", [tiny_clip_tokenizer, tiny_t5_tokenizer])
def test_vocabulary_words_are_single_tokens(make_tokenizer) -> None:
    tokenizer = make_tokenizer()
    for word in VOCABULARY_WORDS:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, (word, tokenizer.convert_ids_to_tokens(ids))
    assert tokenizer.unk_token_id not in tokenizer("Zebra, xylophone 42!", add_special_tokens=False).input_ids


def test_clip_tokenizer_matches_sd_conventions() -> None:
    tokenizer = tiny_clip_tokenizer()
    assert tokenizer.model_max_length == 77
    ids = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[4] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert max(tokenizer.get_vocab().values()) == tokenizer.eos_token_id


def site_counts(model: torch.nn.Module) -> dict[str, int]:
    """Attention processors by the attention module's own name (attn, attn1, attn2)."""
    counts: dict[str, int] = {}
    for name in model.attn_processors:
        kind = name.removesuffix(".processor").rsplit(".", 1)[-1]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sd15", {"attn1": 16, "attn2": 16}),
        ("sdxl", {"attn1": 70, "attn2": 70}),
        ("sd3-medium", {"attn": 24}),
        ("sd35-medium", {"attn": 24, "attn2": SD35_MEDIUM_DUAL_ATTENTION_BLOCKS}),
        ("sd35-large", {"attn": 38}),
        ("flux-dev", {"attn": 19 + 38}),
    ],
)
def test_meta_denoiser_site_counts(name: str, expected: dict[str, int]) -> None:
    model = meta_denoiser(name)
    assert site_counts(model) == expected
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_meta_denoiser_covers_all_names() -> None:
    from attnkit.testing import dits

    assert DENOISER_NAMES[:6] == ("sd15", "sdxl", "sd3-medium", "sd35-medium", "sd35-large", "flux-dev")
    assert set(dits.full_size_configs()) == set(DENOISER_NAMES[6:])


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(AttnkitError, match="unknown model 'nope'") as error:
        build_pipeline("nope")
    assert all(name in str(error.value) for name in PIPELINE_NAMES)
    assert "hub id" in str(error.value)
    with pytest.raises(AttnkitError, match="unknown denoiser 'nope'; known: sd15, sdxl"):
        meta_denoiser("nope")


@pytest.mark.slow
def test_random_sd15_has_the_real_architecture() -> None:
    pipe = random_sd15_pipeline()
    unet_config = pipe.unet.config
    for key, value in SD15_UNET_CONFIG.items():
        actual = unet_config[key]
        assert (list(actual) if isinstance(actual, (tuple, list)) else actual) == value, key
    for key, value in SD15_TEXT_ENCODER_CONFIG.items():
        assert getattr(pipe.text_encoder.config, key) == value, key
    assert list(pipe.vae.config.block_out_channels) == SD15_VAE_CONFIG["block_out_channels"]
    assert site_counts(pipe.unet) == {"attn1": 16, "attn2": 16}
    latents = pipe(
        PROMPT,
        num_inference_steps=1,
        guidance_scale=1.0,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images
    assert latents.shape == (1, 4, TINY_IMAGE_SIZE // 8, TINY_IMAGE_SIZE // 8)
    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("name, released", [("sd3-medium", SD3_MEDIUM_TRANSFORMER_CONFIG),
                                            ("flux-dev", FLUX_DEV_TRANSFORMER_CONFIG), ("sdxl", SDXL_UNET_CONFIG)])
def test_random_full_size_has_the_released_denoiser_fed_by_text_encoders_of_its_widths(name, released) -> None:
    pipe = random_full_size_pipeline(name, device="meta")
    denoiser = pipe.unet if name == "sdxl" else pipe.transformer
    for key, value in released.items():
        actual = denoiser.config[key]
        assert (list(actual) if isinstance(actual, (tuple, list)) else actual) == value, key
    assert {p.dtype for p in denoiser.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in denoiser.parameters()} == {"meta"}
    config = denoiser.config
    if name == "sdxl":
        width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        assert width == config.cross_attention_dim
        time_ids = 6 * config.addition_time_embed_dim  # original size, crop corner, target size
        assert pipe.text_encoder_2.config.projection_dim + time_ids == config.projection_class_embeddings_input_dim
        latent_channels = config.in_channels
    else:
        t5 = pipe.text_encoder_3 if name == "sd3-medium" else pipe.text_encoder_2
        assert t5.config.d_model == config.joint_attention_dim
        if name == "sd3-medium":
            pooled = pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
            latent_channels = config.in_channels
        else:
            pooled = pipe.text_encoder.config.hidden_size
            latent_channels = config.in_channels // 4  # 2x2 packing
        assert pooled == config.pooled_projection_dim
    assert pipe.vae.config.latent_channels == latent_channels and pipe.vae_scale_factor == 8


def test_random_full_size_of_an_unknown_release_is_refused_with_the_known_names() -> None:
    with pytest.raises(AttnkitError, match="unknown full-size model 'sd2'; known: sdxl, sd3-medium, flux-dev"):
        random_full_size_pipeline("sd2", device="meta")


@pytest.mark.slow
def test_random_full_size_with_one_block_generates_finite_latents_of_the_released_geometry() -> None:
    pipe = random_full_size_pipeline("sd3-medium", dtype=torch.float32, num_blocks=1)
    assert len(pipe.transformer.transformer_blocks) == 1
    latents = pipe(PROMPT, num_inference_steps=1, height=128, width=128, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (1, 16, 16, 16) and torch.isfinite(latents).all()
