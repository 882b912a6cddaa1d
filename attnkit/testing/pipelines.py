"""Builders of stock diffusers pipelines with tiny or random weights, fully offline.

Each builder returns the same pipeline class a user would load from the Hub, wired
exactly as the release is (same component classes, text encoders, scheduler family,
attention layout), only smaller. Code that works on these therefore exercises the
real diffusers call path, in milliseconds and without network access.

All builders are deterministic: weights come from ``torch.manual_seed(seed)`` inside
:func:`torch.random.fork_rng`, so the caller's global RNG state is left untouched.
Every model is float32, on CPU, in ``eval()`` mode.

Tiny pipelines share one geometry: a VAE that downsamples by :data:`TINY_VAE_SCALE_FACTOR`
and a denoiser whose default sample size gives :data:`TINY_IMAGE_SIZE` pixel images,
so ``pipe("a red circle", num_inference_steps=2)`` needs no size arguments. UNets
have attention at two resolutions (16x16 and 8x8 latents for a 64x64 image) so
selection by resolution can be tested.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from ..errors import AttnkitError
from . import dits
from .configs import (
    FLUX_DEV_TRANSFORMER_CONFIG,
    SD3_MEDIUM_TRANSFORMER_CONFIG,
    SD15_SCHEDULER_CONFIG,
    SDXL_UNET_CONFIG,
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
)
from .tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

__all__ = [
    "METHODS_DDIM_CONFIG",
    "PIPELINE_NAMES",
    "TINY_IMAGE_SIZE",
    "TINY_VAE_SCALE_FACTOR",
    "build_pipeline",
    "FULL_SIZE_NAMES",
    "random_full_size_pipeline",
    "random_sd15_pipeline",
    "sd15_layout_pipeline",
    "tiny_controlnet",
    "tiny_flux_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd15_pipeline",
    "tiny_sd35_pipeline",
    "tiny_sdxl_pipeline",
]

DEFAULT_SEED = 0

# --- Shared tiny geometry -------------------------------------------------------------

#: Default (and tested) image side of every tiny pipeline, in pixels.
TINY_IMAGE_SIZE = 64
_TINY_VAE_CHANNELS = (16, 32, 32)
#: Pixels per latent cell of the tiny VAEs (real releases use 8; 4 keeps more tokens at 64 px).
TINY_VAE_SCALE_FACTOR = 2 ** (len(_TINY_VAE_CHANNELS) - 1)
_TINY_LATENT_SIZE = TINY_IMAGE_SIZE // TINY_VAE_SCALE_FACTOR
_TINY_NORM_GROUPS = 8
_TINY_LATENT_CHANNELS = 4

# --- Tiny text encoders -----------------------------------------------------------------

_TINY_TEXT_WIDTH = 32  # hidden size and projection size of every tiny CLIP
_TINY_TEXT_LAYERS = 2
_TINY_TEXT_HEADS = 4
_TINY_TEXT_MLP_WIDTH = 64
_TINY_T5_HEAD_DIM = 8
# T5 positions are relative (bucketed), so any sequence length works; these are T5's own.
_T5_RELATIVE_BUCKETS = 32
_T5_RELATIVE_MAX_DISTANCE = 128

# --- Tiny denoisers ---------------------------------------------------------------------

_TINY_UNET_CHANNELS = (32, 64)
_TINY_UNET_HEADS = 2  # UNet "attention_head_dim" means heads
_TINY_SDXL_UNET_CHANNELS = (32, 64, 64)
_TINY_SDXL_TRANSFORMER_LAYERS = (1, 1, 2)  # deeper at low resolution, as SDXL's (1, 2, 10)
_TINY_SDXL_HEADS = (2, 4, 4)  # head dim 16 everywhere, as SDXL keeps 64
_TINY_SDXL_TIME_EMBED_DIM = 8
_SDXL_TIME_IDS = 6  # original size, crop corner, target size: (h, w) each
_TINY_DIT_HEADS = 2
_TINY_DIT_HEAD_DIM = 16
_TINY_DIT_WIDTH = _TINY_DIT_HEADS * _TINY_DIT_HEAD_DIM
_TINY_SD3_LAYERS = 2
_TINY_SD35_LAYERS = 3
_TINY_SD35_DUAL_ATTENTION_LAYERS = (0, 1)  # like SD3.5-medium: the leading blocks only
_SD3_PATCH_SIZE = 2
_TINY_SD3_MAX_PATCHES = 64  # pos_embed_max_size: images up to 64 * 2 * 4 = 512 px
_TINY_FLUX_DOUBLE_LAYERS = 2
_TINY_FLUX_SINGLE_LAYERS = 2
_TINY_FLUX_ROPE_AXES = (4, 6, 6)  # (text index, row, column); sums to the head dim
_FLUX_PACKING = 2  # Flux packs 2x2 latent cells into one token

# --- Release constants (from the released configs) ----------------------------------

_SD_VAE_SCALING = 0.18215
_SDXL_VAE_SCALING = 0.13025
_SD3_VAE_SCALING, _SD3_VAE_SHIFT = 1.5305, 0.0609
_FLUX_VAE_SCALING, _FLUX_VAE_SHIFT = 0.3611, 0.1159
_SDXL_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
_SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}
_FLUX_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

_PipelineT = TypeVar("_PipelineT", bound=DiffusionPipeline)


@contextmanager
def _seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seeds the global RNG of the CPU (and of a CUDA ``device``) for the block, then restores the caller's state."""
    cuda = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Parameters are created in ``dtype`` (no float32 copy of a 12B model first, no casting warnings)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _finish(pipe: _PipelineT) -> _PipelineT:
    """Eval mode everywhere (no dropout), and no progress bars cluttering test output."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_vae(*, scaling_factor: float, shift_factor: float | None = None, quant_conv: bool = True,
              channels: tuple[int, ...] = _TINY_VAE_CHANNELS, norm_groups: int = _TINY_NORM_GROUPS,
              latent_channels: int = _TINY_LATENT_CHANNELS, sample_size: int = TINY_IMAGE_SIZE) -> AutoencoderKL:
    """SD/SDXL VAEs have quant convs; SD3/Flux VAEs drop them and add a latent shift. Each of the `channels` levels
    but the last halves the image side."""
    return AutoencoderKL(
        sample_size=sample_size,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=norm_groups,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_conv,
        use_post_quant_conv=quant_conv,
    )


def _clip_text_config(tokenizer: CLIPTokenizer, **sizes: int | str | float) -> CLIPTextConfig:
    """Token ids come from the tokenizer so pooling finds the real eos position."""
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def _tiny_clip_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return _clip_text_config(
        tokenizer,
        vocab_size=len(tokenizer),
        hidden_size=_TINY_TEXT_WIDTH,
        projection_dim=_TINY_TEXT_WIDTH,
        intermediate_size=_TINY_TEXT_MLP_WIDTH,
        num_hidden_layers=_TINY_TEXT_LAYERS,
        num_attention_heads=_TINY_TEXT_HEADS,
        max_position_embeddings=tokenizer.model_max_length,
    )


def _tiny_t5(tokenizer: T5Tokenizer, width: int) -> T5EncoderModel:
    """A T5 v1.1-style (gated-GELU) encoder, as SD3 and Flux use."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=_TINY_T5_HEAD_DIM,
        d_ff=2 * width,
        num_layers=_TINY_TEXT_LAYERS,
        num_heads=width // _TINY_T5_HEAD_DIM,
        relative_attention_num_buckets=_T5_RELATIVE_BUCKETS,
        relative_attention_max_distance=_T5_RELATIVE_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config)


def _tiny_unet(**overrides: object) -> UNet2DConditionModel:
    """An SD1.5-shaped UNet: cross-attention at every level, so at two resolutions."""
    config: dict[str, object] = {
        "sample_size": _TINY_LATENT_SIZE,
        "in_channels": _TINY_LATENT_CHANNELS,
        "out_channels": _TINY_LATENT_CHANNELS,
        "block_out_channels": _TINY_UNET_CHANNELS,
        "down_block_types": ("CrossAttnDownBlock2D",) * len(_TINY_UNET_CHANNELS),
        "up_block_types": ("CrossAttnUpBlock2D",) * len(_TINY_UNET_CHANNELS),
        "layers_per_block": 1,
        "norm_num_groups": _TINY_NORM_GROUPS,
        "cross_attention_dim": _TINY_TEXT_WIDTH,
        "attention_head_dim": _TINY_UNET_HEADS,
    }
    return UNet2DConditionModel(**{**config, **overrides})


def tiny_sd15_pipeline(*, seed: int = DEFAULT_SEED) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5 in miniature: one CLIP, a 2-level cross-attention UNet, DDIM.

    14 attention processors (7 transformer blocks x self/cross), at 16x16 and 8x8
    latents for a 64 px image. Sizes must be multiples of 8 (the pipeline's check).
    """
    with _seeded(seed):
        tokenizer = tiny_clip_tokenizer()
        pipe = StableDiffusionPipeline(
            vae=_tiny_vae(scaling_factor=_SD_VAE_SCALING),
            text_encoder=CLIPTextModel(_tiny_clip_text_config(tokenizer)),
            tokenizer=tokenizer,
            unet=_tiny_unet(),
            scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return _finish(pipe)


def tiny_controlnet(unet: UNet2DConditionModel, *, seed: int = DEFAULT_SEED) -> ControlNetModel:
    """A ControlNet of a tiny UNet: its encoder copied (`ControlNetModel.from_unet`), a conditioning embedding that
    downsamples the condition image as much as the tiny VAE downsamples images, and the zero convolutions drawn at
    random instead of zeros, so that the ControlNet changes the image (as a trained one does)."""
    with _seeded(seed):
        net = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=(8,) * (len(_TINY_VAE_CHANNELS) - 1) + (16,))
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            torch.nn.init.normal_(conv.weight, std=0.05)
    return net.eval()


#: The DDIM scheduler of MasaCtrl's and StyleAligned's demos: SD's betas, no clipping, the first alpha kept.
METHODS_DDIM_CONFIG: Mapping[str, object] = MappingProxyType({
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
    "set_alpha_to_one": False})

#: VAE levels of `sd15_layout_pipeline(sd15_vae=True)`: four, as SD1.5's (128, 256, 512, 512), so its factor 8.
_SD15_LAYOUT_VAE_CHANNELS = (8, 8, 16, 16)


def sd15_layout_pipeline(*, seed: int = DEFAULT_SEED, sd15_vae: bool = False) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's UNet layout with small channels: the same blocks (three cross-attention down blocks,
    a plain one, a mid block, a plain up block, three cross-attention up blocks), two layers per down block and three
    per up block, so the same 16 transformer layers in the same order, at four resolutions (16x16 to 2x2 latent
    tokens for a 64 px image); with MasaCtrl's and StyleAligned's DDIM scheduler. What published methods that pick
    layers by their index in SD1.5 are checked on.

    `sd15_vae`: a VAE of SD1.5's factor 8 and SD1.5's default size (512 px) instead of the tiny VAE (factor 4, 64 px),
    so that a 512 px image has SD1.5's self-attention grids (64, 32, 16 and 8 tokens a side): for methods whose
    published code reads SD1.x's resolutions (DiffSeg's per-resolution weights, DAAM's finest grid)."""
    with _seeded(seed):
        tokenizer = tiny_clip_tokenizer()
        unet = _tiny_unet(block_out_channels=(16, 32, 32, 32), layers_per_block=2,
                          down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                          up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                          **({"sample_size": SD15_UNET_CONFIG["sample_size"]} if sd15_vae else {}))
        vae = (_tiny_vae(scaling_factor=_SD_VAE_SCALING, channels=_SD15_LAYOUT_VAE_CHANNELS,
                         sample_size=SD15_VAE_CONFIG["sample_size"]) if sd15_vae
               else _tiny_vae(scaling_factor=_SD_VAE_SCALING))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(_tiny_clip_text_config(tokenizer)),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler(**METHODS_DDIM_CONFIG),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return _finish(pipe)


def tiny_sdxl_pipeline(*, seed: int = DEFAULT_SEED) -> StableDiffusionXLPipeline:
    """SDXL in miniature: CLIP + CLIP-with-projection, text_time conditioning, Euler.

    Like SDXL the top level has no attention and lower levels stack more transformer
    layers; cross-attention width is the two text encoders' widths concatenated (64).
    22 attention processors, at 8x8 and 4x4 latents for a 64 px image.
    """
    with _seeded(seed):
        tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
        text_encoder = CLIPTextModel(_tiny_clip_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer_2))
        text_width = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
        unet = _tiny_unet(
            block_out_channels=_TINY_SDXL_UNET_CHANNELS,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=_TINY_SDXL_TRANSFORMER_LAYERS,
            attention_head_dim=_TINY_SDXL_HEADS,
            cross_attention_dim=text_width,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TINY_SDXL_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=(
                _SDXL_TIME_IDS * _TINY_SDXL_TIME_EMBED_DIM + text_encoder_2.config.projection_dim
            ),
        )
        pipe = StableDiffusionXLPipeline(
            vae=_tiny_vae(scaling_factor=_SDXL_VAE_SCALING),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=EulerDiscreteScheduler(**_SDXL_SCHEDULER_CONFIG),
            add_watermarker=False,
        )
    return _finish(pipe)


def _tiny_sd3(*, num_layers: int, seed: int, **transformer_options: object) -> StableDiffusion3Pipeline:
    """Two CLIPs with projection + T5, as SD3; T5 is as wide as both CLIPs together,
    so the pipeline's zero-padding of CLIP states to T5 width is a no-op."""
    with _seeded(seed):
        tokenizer, tokenizer_2, tokenizer_3 = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
        text_encoder = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_text_config(tokenizer_2))
        clip_width = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
        text_encoder_3 = _tiny_t5(tokenizer_3, width=clip_width)
        transformer = SD3Transformer2DModel(
            sample_size=_TINY_LATENT_SIZE,
            patch_size=_SD3_PATCH_SIZE,
            in_channels=_TINY_LATENT_CHANNELS,
            out_channels=_TINY_LATENT_CHANNELS,
            num_layers=num_layers,
            attention_head_dim=_TINY_DIT_HEAD_DIM,
            num_attention_heads=_TINY_DIT_HEADS,
            joint_attention_dim=text_encoder_3.config.d_model,
            caption_projection_dim=_TINY_DIT_WIDTH,
            pooled_projection_dim=text_encoder.config.projection_dim + text_encoder_2.config.projection_dim,
            pos_embed_max_size=_TINY_SD3_MAX_PATCHES,
            **transformer_options,
        )
        pipe = StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(**_SD3_SCHEDULER_CONFIG),
            vae=_tiny_vae(scaling_factor=_SD3_VAE_SCALING, shift_factor=_SD3_VAE_SHIFT, quant_conv=False),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )
    return _finish(pipe)


def tiny_sd3_pipeline(*, seed: int = DEFAULT_SEED) -> StableDiffusion3Pipeline:
    """SD3-medium in miniature: 2 MMDiT blocks with joint attention only.

    A 64 px image is 8x8 = 64 image tokens; the text stream is 77 CLIP + 256 T5 tokens
    (the default ``max_sequence_length``). Sizes must be multiples of 8 (VAE 4 x patch 2).
    """
    return _tiny_sd3(num_layers=_TINY_SD3_LAYERS, seed=seed)


def tiny_sd35_pipeline(*, seed: int = DEFAULT_SEED) -> StableDiffusion3Pipeline:
    """SD3.5-medium in miniature: RMS q/k norm, and MMDiT-X blocks 0 and 1 (of 3)
    carry an extra image-only self-attention ``attn2`` beside the joint ``attn``."""
    return _tiny_sd3(
        num_layers=_TINY_SD35_LAYERS,
        seed=seed,
        qk_norm="rms_norm",
        dual_attention_layers=_TINY_SD35_DUAL_ATTENTION_LAYERS,
    )


def tiny_flux_pipeline(*, seed: int = DEFAULT_SEED) -> FluxPipeline:
    """FLUX.1-dev in miniature: 2 double-stream + 2 single-stream blocks, guidance embedding.

    A 64 px image is 8x8 = 64 packed tokens; the text stream is 512 T5 tokens (the
    default ``max_sequence_length``). Sizes must be multiples of 8 (VAE 4 x packing 2).
    ``default_sample_size`` is set on the instance so the default size is 64 px; a
    pipeline reloaded with ``from_pretrained`` falls back to Flux's hard-coded 128
    latents (512 px) unless ``height``/``width`` are passed.
    """
    with _seeded(seed):
        tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
        text_encoder = CLIPTextModel(_tiny_clip_text_config(tokenizer))
        text_encoder_2 = _tiny_t5(tokenizer_2, width=_TINY_TEXT_WIDTH)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=_TINY_LATENT_CHANNELS * _FLUX_PACKING**2,
            num_layers=_TINY_FLUX_DOUBLE_LAYERS,
            num_single_layers=_TINY_FLUX_SINGLE_LAYERS,
            attention_head_dim=_TINY_DIT_HEAD_DIM,
            num_attention_heads=_TINY_DIT_HEADS,
            joint_attention_dim=text_encoder_2.config.d_model,
            pooled_projection_dim=text_encoder.config.hidden_size,
            guidance_embeds=True,
            axes_dims_rope=_TINY_FLUX_ROPE_AXES,
        )
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER_CONFIG),
            vae=_tiny_vae(scaling_factor=_FLUX_VAE_SCALING, shift_factor=_FLUX_VAE_SHIFT, quant_conv=False),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
    pipe.default_sample_size = _TINY_LATENT_SIZE
    return _finish(pipe)


def random_sd15_pipeline(*, seed: int = DEFAULT_SEED) -> StableDiffusionPipeline:
    """The real Stable Diffusion 1.5 architecture with random weights (about 1.1B
    parameters, 4.3 GB of float32; tens of seconds to build).

    For realistic shapes, sizes and timings without a download. The tokenizer is the
    tiny in-memory one: ids are valid for the 49408-entry embedding, only fewer are used.
    Default image size 512 px, as SD1.5's.
    """
    with _seeded(seed):
        tokenizer = tiny_clip_tokenizer()
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**SD15_VAE_CONFIG),
            text_encoder=CLIPTextModel(_clip_text_config(tokenizer, **SD15_TEXT_ENCODER_CONFIG)),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**SD15_UNET_CONFIG),
            scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return _finish(pipe)


# Thin stand-ins around the full-size denoisers: the real widths (T5-XXL 4096, CLIP-L 768, OpenCLIP-bigG 1280, 4 or
# 16 latent channels, 8x VAE) so the denoiser sees real shapes, one layer each so they cost nothing.
_FULL_SIZE_TEXT = {"clip-l": 768, "clip-g": 1280, "t5": 4096}
_FULL_SIZE_VAE_CHANNELS = (8, 8, 8, 8)
#: Names accepted by :func:`random_full_size_pipeline`.
FULL_SIZE_NAMES: tuple[str, ...] = ("sdxl", "sd3-medium", "flux-dev")


def _thin_clip(tokenizer: CLIPTokenizer, width: int, projection: bool) -> CLIPTextModel:
    config = _clip_text_config(tokenizer, vocab_size=len(tokenizer), hidden_size=width, projection_dim=width,
                               intermediate_size=_TINY_TEXT_MLP_WIDTH, num_hidden_layers=1,
                               num_attention_heads=width // 64, max_position_embeddings=tokenizer.model_max_length)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _thin_vae(*, latent_channels: int, scaling_factor: float, shift_factor: float | None) -> AutoencoderKL:
    """SD/SDXL VAEs have quant convs and no shift; SD3/Flux VAEs have a shift and drop them."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * len(_FULL_SIZE_VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(_FULL_SIZE_VAE_CHANNELS),
        block_out_channels=_FULL_SIZE_VAE_CHANNELS, layers_per_block=1, norm_num_groups=_TINY_NORM_GROUPS,
        latent_channels=latent_channels, scaling_factor=scaling_factor, shift_factor=shift_factor,
        use_quant_conv=shift_factor is None, use_post_quant_conv=shift_factor is None,
    )


def random_full_size_pipeline(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                              num_blocks: int | None = None, seed: int = DEFAULT_SEED) -> DiffusionPipeline:
    """The full-size denoiser of SDXL (``"sdxl"``, 2.6B parameters), SD3-medium (``"sd3-medium"``, 2B) or FLUX.1-dev
    (``"flux-dev"``, 12B) with random weights, built directly on ``device`` in ``dtype``, in its stock pipeline.

    For timings and memory at real token counts without a download: 1024 px gives 4096 DiT image tokens. Text
    encoders and VAE are one-layer stand-ins of the real output widths, so their cost is negligible and the images
    are noise. ``num_blocks`` keeps only that many transformer blocks of each kind (a quick check of a benchmark on
    CPU; DiTs only). ``device="meta"`` builds the architecture without memory.
    """
    if name not in FULL_SIZE_NAMES:
        raise AttnkitError(f"unknown full-size model {name!r}; known: {', '.join(FULL_SIZE_NAMES)}")
    device = torch.device(device)
    if name == "sdxl":
        if num_blocks is not None:
            raise AttnkitError("num_blocks shortens transformers (sd3-medium, flux-dev), not the SDXL UNet.")
        return _random_sdxl(device, dtype, seed)
    flux = name == "flux-dev"
    config = dict(FLUX_DEV_TRANSFORMER_CONFIG if flux else SD3_MEDIUM_TRANSFORMER_CONFIG)
    if num_blocks is not None:
        config["num_layers"] = min(num_blocks, config["num_layers"])
        if flux:
            config["num_single_layers"] = min(num_blocks, config["num_single_layers"])
    with _seeded(seed, device):
        tokenizer, tokenizer_2, t5_tokenizer = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
        scheduler = FlowMatchEulerDiscreteScheduler(**(_FLUX_SCHEDULER_CONFIG if flux else _SD3_SCHEDULER_CONFIG))
        with torch.device(device), _default_dtype(dtype):
            transformer = (FluxTransformer2DModel if flux else SD3Transformer2DModel)(**config)
            t5 = _tiny_t5(t5_tokenizer, width=_FULL_SIZE_TEXT["t5"])
            if flux:
                pipe = FluxPipeline(
                    scheduler=scheduler,
                    vae=_thin_vae(latent_channels=config["in_channels"] // _FLUX_PACKING**2,
                                  scaling_factor=_FLUX_VAE_SCALING, shift_factor=_FLUX_VAE_SHIFT),
                    text_encoder=_thin_clip(tokenizer, _FULL_SIZE_TEXT["clip-l"], projection=False),
                    tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer, transformer=transformer,
                )
            else:
                pipe = StableDiffusion3Pipeline(
                    transformer=transformer, scheduler=scheduler,
                    vae=_thin_vae(latent_channels=config["in_channels"], scaling_factor=_SD3_VAE_SCALING,
                                  shift_factor=_SD3_VAE_SHIFT),
                    text_encoder=_thin_clip(tokenizer, _FULL_SIZE_TEXT["clip-l"], projection=True),
                    tokenizer=tokenizer,
                    text_encoder_2=_thin_clip(tokenizer_2, _FULL_SIZE_TEXT["clip-g"], projection=True),
                    tokenizer_2=tokenizer_2, text_encoder_3=t5, tokenizer_3=t5_tokenizer,
                )
    return _finish(pipe)


def _random_sdxl(device: torch.device, dtype: torch.dtype, seed: int) -> StableDiffusionXLPipeline:
    with _seeded(seed, device):
        tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
        scheduler = EulerDiscreteScheduler(**_SDXL_SCHEDULER_CONFIG)  # its tables stay on the CPU, as when loaded
        with torch.device(device), _default_dtype(dtype):
            pipe = StableDiffusionXLPipeline(
                vae=_thin_vae(latent_channels=SDXL_UNET_CONFIG["in_channels"], scaling_factor=_SDXL_VAE_SCALING,
                              shift_factor=None),
                text_encoder=_thin_clip(tokenizer, _FULL_SIZE_TEXT["clip-l"], projection=False),
                text_encoder_2=_thin_clip(tokenizer_2, _FULL_SIZE_TEXT["clip-g"], projection=True),
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=UNet2DConditionModel(**SDXL_UNET_CONFIG),
                scheduler=scheduler, add_watermarker=False,
            )
    return _finish(pipe)


_BUILDERS: Mapping[str, Callable[..., DiffusionPipeline]] = MappingProxyType(
    {
        "tiny-sd15": tiny_sd15_pipeline,
        "tiny-sdxl": tiny_sdxl_pipeline,
        "tiny-sd3": tiny_sd3_pipeline,
        "tiny-sd35": tiny_sd35_pipeline,
        "tiny-flux": tiny_flux_pipeline,
        "random-sd15": random_sd15_pipeline,
        **dits.builders(),
    }
)

#: Names accepted by :func:`build_pipeline`.
PIPELINE_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_pipeline(name: str, *, seed: int = DEFAULT_SEED) -> DiffusionPipeline:
    """Builds the offline pipeline registered as ``name`` (one of :data:`PIPELINE_NAMES`),
    so tools and configs can refer to test models by a short string."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise AttnkitError(
            f"unknown model {name!r}; known: {', '.join(PIPELINE_NAMES)} — or pass a hub id / local folder"
        ) from None
    return builder(seed=seed)
