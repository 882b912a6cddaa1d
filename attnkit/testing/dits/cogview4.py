"""Tiny offline CogView4 (THUDM/CogView4-6B): `CogView4Pipeline` with a GLM-4 text encoder (`GlmModel`, the
pipeline reads its second-to-last hidden state), GLM-4's tokenizer class (`PreTrainedTokenizerFast`, built in memory
by `_cogview4_tokenizer`), `CogView4Transformer2DModel`, a 16-channel `AutoencoderKL` without quant convs and the
release's `FlowMatchEulerDiscreteScheduler` (dynamic shifting, linear time shift, base/max shift 0.25/0.75).

The pipeline tokenizes with padding="longest", then left-pads the ids with the pad token to a multiple of 16, so
the denoiser's text sequence is [pads | [gMASK] <sop> prompt tokens]. Its default size is
`transformer.config.sample_size * vae_scale_factor`: 16 x 4 = 64 px here.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import AttnkitError

NAME = "tiny-cogview4"

_TEXT_HIDDEN = 32
_LATENT_CHANNELS = 16
_VAE_CHANNELS = (16, 32, 32)  # vae_scale_factor 4
_IMAGE_SIZE = 64

#: THUDM/CogView4-6B, `transformer/config.json` (diffusers' convert_cogview4_to_diffusers_megatron.py arguments for
#: the 6B release; rope_axes_dim and sample_size are the class defaults, which the released file repeats).
COGVIEW4_6B_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 28,
    "attention_head_dim": 128,
    "num_attention_heads": 32,
    "text_embed_dim": 4096,
    "time_embed_dim": 512,
    "condition_dim": 256,
    "pos_embed_max_size": 128,
    "sample_size": 128,
    "rope_axes_dim": [256, 256],
}

FULL_SIZE = {"cogview4-6b": ("CogView4Transformer2DModel", COGVIEW4_6B_TRANSFORMER_CONFIG)}

#: The release's scheduler (`scheduler/scheduler_config.json` of THUDM/CogView4-6B).
SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.25,
    "max_shift": 0.75,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "time_shift_type": "linear",
    "use_dynamic_shifting": True,
}


def tiny_pipeline(*, seed: int = 0):
    """`CogView4Pipeline` with tiny random weights: `pipe("a red circle", num_inference_steps=2)` gives 64x64."""
    import diffusers

    if not hasattr(diffusers, "CogView4Pipeline"):
        raise AttnkitError(f"tiny-cogview4 needs diffusers.CogView4Pipeline (diffusers >= 0.33); this is diffusers "
                           f"{diffusers.__version__}.")
    from diffusers import AutoencoderKL, CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    from ..pipelines import _finish, _seeded
    from ._cogview4_tokenizer import tiny_glm4_tokenizer

    tokenizer = tiny_glm4_tokenizer()
    with _seeded(seed):
        text_encoder = GlmModel(GlmConfig(
            vocab_size=len(tokenizer), hidden_size=_TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        ))
        vae_scale_factor = 2 ** (len(_VAE_CHANNELS) - 1)
        transformer = CogView4Transformer2DModel(
            patch_size=2, in_channels=_LATENT_CHANNELS, out_channels=_LATENT_CHANNELS, num_layers=2,
            attention_head_dim=16, num_attention_heads=2, text_embed_dim=_TEXT_HIDDEN, time_embed_dim=32,
            condition_dim=16, pos_embed_max_size=32, sample_size=_IMAGE_SIZE // vae_scale_factor,
            rope_axes_dim=(256, 256),
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, sample_size=_IMAGE_SIZE,
            down_block_types=("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
            block_out_channels=_VAE_CHANNELS, layers_per_block=1, latent_channels=_LATENT_CHANNELS,
            norm_num_groups=8, scaling_factor=1.0, force_upcast=True, use_quant_conv=False,
            use_post_quant_conv=False, mid_block_add_attention=False,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    pipe = CogView4Pipeline(tokenizer=tokenizer, text_encoder=text_encoder.float(), vae=vae.float(),
                            transformer=transformer.float(), scheduler=scheduler)
    return _finish(pipe)


def _check() -> None:  # pragma: no cover - manual smoke test
    torch.set_num_threads(1)
    pipe = tiny_pipeline()
    print(pipe("a red circle", num_inference_steps=2).images[0].size)
