"""Tiny Sana: the stock `SanaPipeline` with `SanaTransformer2DModel` (linear self-attention + softmax cross-attention
blocks), a Gemma 2 text encoder (`Gemma2Model`) with a `GemmaTokenizer`, the `AutoencoderDC` VAE (f32) and the
release's `DPMSolverMultistepScheduler` config (flow sigmas, flow shift 3).

Sizes: `SanaPipeline.__call__` has literal defaults height = width = 1024 and, with `use_resolution_binning` (on by
default), snaps the size to the aspect-ratio bins chosen by `transformer.config.sample_size`. The tiny transformer
has sample_size 16 (the 512 px bins), so the default call generates at 512x512 px = a 16x16 latent (VAE f32, patch
1: 256 image tokens) and resizes the decoded image to the requested 1024x1024 px. No pipeline attribute makes the
default smaller; pass height/width (and `use_resolution_binning=False`) for other sizes.
"""

from __future__ import annotations

from typing import Any

from ...errors import AttnkitError

NAME = "tiny-sana"

_HEADS, _HEAD_DIM = 2, 16
_WIDTH = _HEADS * _HEAD_DIM
_LAYERS = 2
_LATENT_CHANNELS = 8
_TEXT_WIDTH = 32
_SAMPLE_SIZE = 16  # the 512 px resolution bins (Sana's 512 px releases)
_VAE_CHANNELS = (8, 8, 8, 16, 16, 16)  # six levels: f32, as the release's DC-AE
_SANA_VAE_SCALING = 0.41407  # mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers

#: The release's scheduler config (Efficient-Large-Model/Sana_1600M_1024px_diffusers, scheduler_config.json).
SCHEDULER_CONFIG: dict[str, Any] = {
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}

#: The released denoisers' configs (transformer/config.json). Sana 1.6B 1024 px; the 600M release differs in width
#: (num_attention_heads 36, cross heads 16 x 72, cross_attention_dim 1152, 28 layers).
FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "sana-1600m-1024": ("SanaTransformer2DModel", {
        "attention_bias": False,
        "attention_head_dim": 32,
        "caption_channels": 2304,
        "cross_attention_dim": 2240,
        "cross_attention_head_dim": 112,
        "dropout": 0.0,
        "in_channels": 32,
        "interpolation_scale": None,
        "mlp_ratio": 2.5,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-06,
        "num_attention_heads": 70,
        "num_cross_attention_heads": 20,
        "num_layers": 20,
        "out_channels": 32,
        "patch_size": 1,
        "sample_size": 32,
    }),
    "sana-600m-1024": ("SanaTransformer2DModel", {
        "attention_bias": False,
        "attention_head_dim": 32,
        "caption_channels": 2304,
        "cross_attention_dim": 1152,
        "cross_attention_head_dim": 72,
        "dropout": 0.0,
        "in_channels": 32,
        "interpolation_scale": None,
        "mlp_ratio": 2.5,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-06,
        "num_attention_heads": 36,
        "num_cross_attention_heads": 16,
        "num_layers": 28,
        "out_channels": 32,
        "patch_size": 1,
        "sample_size": 32,
    }),
}


def tiny_gemma2(tokenizer: Any, width: int = _TEXT_WIDTH) -> Any:
    """A 2-layer Gemma 2 (`Gemma2Model`, as the releases' text_encoder) with `width` hidden size."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=width // 2, max_position_embeddings=2048,
        sliding_window=64, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Gemma2Model(config).eval()


def _tiny_dc_ae() -> Any:
    from diffusers import AutoencoderDC

    # The release's block layout: ResBlocks, then EfficientViT blocks (multiscale linear attention), convolutional
    # down/upsampling by interpolation, batch norm / ReLU in the high-resolution decoder stages.
    return AutoencoderDC(
        in_channels=3, latent_channels=_LATENT_CHANNELS, attention_head_dim=8,
        encoder_block_types=("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock",
                             "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock",
                             "EfficientViTBlock"),
        encoder_block_out_channels=_VAE_CHANNELS, decoder_block_out_channels=_VAE_CHANNELS,
        encoder_layers_per_block=(1, 1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1, 1),
        encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types=("batch_norm", "batch_norm", "batch_norm", "rms_norm", "rms_norm", "rms_norm"),
        decoder_act_fns=("relu", "relu", "relu", "silu", "silu", "silu"),
        scaling_factor=_SANA_VAE_SCALING,
    ).eval()


def tiny_pipeline(*, seed: int = 0) -> Any:
    import diffusers

    from ..pipelines import _finish, _seeded
    from ._gemma_tokenizer import tiny_gemma_tokenizer

    if not hasattr(diffusers, "SanaPipeline"):
        raise AttnkitError(f"tiny-sana needs diffusers' SanaPipeline (diffusers >= 0.32); this is diffusers "
                           f"{diffusers.__version__}.")
    from diffusers import (
        DPMSolverMultistepScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )

    tokenizer = tiny_gemma_tokenizer()
    with _seeded(seed):
        text_encoder = tiny_gemma2(tokenizer)
        transformer = SanaTransformer2DModel(
            in_channels=_LATENT_CHANNELS, out_channels=_LATENT_CHANNELS, num_attention_heads=_HEADS,
            attention_head_dim=_HEAD_DIM, num_layers=_LAYERS, num_cross_attention_heads=_HEADS,
            cross_attention_head_dim=_HEAD_DIM, cross_attention_dim=_WIDTH, caption_channels=_TEXT_WIDTH,
            mlp_ratio=2.5, attention_bias=False, sample_size=_SAMPLE_SIZE, patch_size=1,
            norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
        ).eval()
        vae = _tiny_dc_ae()
    scheduler = DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG)
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=scheduler)
    return _finish(pipe)
