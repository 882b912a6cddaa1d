"""Tiny offline CogVideoX (THUDM/CogVideoX-5b layout): `CogVideoXPipeline` with T5 (`T5EncoderModel`,
`T5Tokenizer`, prompts padded to `max_sequence_length` 226), `CogVideoXTransformer3DModel` with 3D rotary embeddings
(as the 5B release; the 2B one uses sincos position embeddings instead), `AutoencoderKLCogVideoX` (temporal
compression 4) and the release's `CogVideoXDDIMScheduler` (v-prediction, zero-SNR, trailing spacing).

Default generation: `transformer.config.sample_frames` = 9 frames (3 latent frames) of
`sample_height * vae_scale_factor_spatial` = 8 x 4 = 32 px square: 3 x 4 x 4 = 48 video tokens after 2x2 patches,
after 226 text tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import AttnkitError

NAME = "tiny-cogvideox"

_TEXT_HIDDEN = 32
_LATENT_CHANNELS = 16
_VAE_CHANNELS = (16, 16, 32)  # spatial scale factor 4; the first two blocks also halve time (ratio 4)
_FRAMES = 9  # (9 - 1) // 4 + 1 = 3 latent frames (an odd count decodes back to 9 frames; 2 would give 8)
_SIZE = 32
_TEXT_LENGTH = 226

_COMMON: dict[str, Any] = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 64,
    "dropout": 0.0,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 16,
    "max_text_seq_length": 226,
    "norm_elementwise_affine": True,
    "norm_eps": 1e-5,
    "out_channels": 16,
    "patch_size": 2,
    "sample_frames": 49,
    "sample_height": 60,
    "sample_width": 90,
    "spatial_interpolation_scale": 1.875,
    "temporal_compression_ratio": 4,
    "temporal_interpolation_scale": 1.0,
    "text_embed_dim": 4096,
    "time_embed_dim": 512,
    "timestep_activation_fn": "silu",
}

#: THUDM/CogVideoX-2b and THUDM/CogVideoX-5b, `transformer/config.json` (layers, heads and RoPE as in diffusers'
#: convert_cogvideox_to_diffusers.py: 2B 30 layers x 30 heads, sincos positions; 5B 42 layers x 48 heads, RoPE).
COGVIDEOX_2B_TRANSFORMER_CONFIG: dict[str, Any] = {
    **_COMMON, "num_attention_heads": 30, "num_layers": 30, "use_rotary_positional_embeddings": False,
}
COGVIDEOX_5B_TRANSFORMER_CONFIG: dict[str, Any] = {
    **_COMMON, "num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True,
}

#: THUDM/CogVideoX1.5-5B: 2 x 2 x 2 (time, height, width) patches without bias, RoPE, 300 x 300 sample size.
COGVIDEOX15_5B_TRANSFORMER_CONFIG: dict[str, Any] = {
    **COGVIDEOX_5B_TRANSFORMER_CONFIG, "patch_bias": False, "patch_size_t": 2, "sample_frames": 81,
    "sample_height": 300, "sample_width": 300, "use_learned_positional_embeddings": False,
}

FULL_SIZE = {
    "cogvideox-2b": ("CogVideoXTransformer3DModel", COGVIDEOX_2B_TRANSFORMER_CONFIG),
    "cogvideox-5b": ("CogVideoXTransformer3DModel", COGVIDEOX_5B_TRANSFORMER_CONFIG),
    "cogvideox1.5-5b": ("CogVideoXTransformer3DModel", COGVIDEOX15_5B_TRANSFORMER_CONFIG),
}

#: THUDM/CogVideoX-5b, `scheduler/scheduler_config.json` (the 2B release differs only in snr_shift_scale 3.0).
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "snr_shift_scale": 1.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
}


def tiny_pipeline(*, seed: int = 0):
    """`CogVideoXPipeline` with tiny random weights: `pipe("a red circle", num_inference_steps=2)` gives 9 frames
    of 32x32."""
    import diffusers

    if not hasattr(diffusers, "CogVideoXPipeline"):
        raise AttnkitError(f"tiny-cogvideox needs diffusers.CogVideoXPipeline (diffusers >= 0.30); this is diffusers "
                           f"{diffusers.__version__}.")
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    from ..pipelines import _finish, _seeded
    from ..tokenizers import tiny_t5_tokenizer

    tokenizer = tiny_t5_tokenizer(model_max_length=_TEXT_LENGTH)
    spatial = 2 ** (len(_VAE_CHANNELS) - 1)
    with _seeded(seed):
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=_TEXT_HIDDEN, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
            dense_act_fn="gelu_new", is_gated_act=True, pad_token_id=0, eos_token_id=1,
        ))
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=_LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS, time_embed_dim=32, text_embed_dim=_TEXT_HIDDEN, num_layers=2,
            sample_width=_SIZE // spatial, sample_height=_SIZE // spatial, sample_frames=_FRAMES, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=_TEXT_LENGTH, use_rotary_positional_embeddings=True,
        )
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * len(_VAE_CHANNELS),
            up_block_types=("CogVideoXUpBlock3D",) * len(_VAE_CHANNELS),
            block_out_channels=_VAE_CHANNELS, latent_channels=_LATENT_CHANNELS, layers_per_block=1,
            norm_num_groups=4, temporal_compression_ratio=4, sample_height=_SIZE, sample_width=_SIZE,
            scaling_factor=0.7,
        )
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder.float(), vae=vae.float(),
                             transformer=transformer.float(), scheduler=scheduler)
    return _finish(pipe)


def _check() -> None:  # pragma: no cover - manual smoke test
    torch.set_num_threads(1)
    pipe = tiny_pipeline()
    print(len(pipe("a red circle", num_inference_steps=2).frames[0]))
