"""Tiny Qwen-Image: the stock `QwenImagePipeline` with a tiny `Qwen2_5_VLForConditionalGeneration` text encoder,
an in-memory `Qwen2Tokenizer`, a tiny `AutoencoderKLQwenImage` and a 2-block `QwenImageTransformer2DModel` (the
release has only dual-stream blocks with joint [text | image] attention), with the release's scheduler config.

The pipeline wraps the prompt in its chat template and drops the template's first 34 tokens
(`prompt_template_encode_start_idx`); the tiny tokenizer makes that prefix exactly 34 tokens, as the real one does,
so the transformer sees the prompt's tokens first, then the template's 5 closing tokens.
"""

from __future__ import annotations

from typing import Any


from ...errors import AttnkitError

NAME = "tiny-qwenimage"

_HEADS, _HEAD_DIM = 2, 16
_ROPE_AXES = (4, 6, 6)  # (frame, row, column); sums to the head dim, as (16, 56, 56) sums to 128
_TEXT_WIDTH = 32  # text encoder hidden size = the transformer's joint_attention_dim
_Z_DIM = 4
_VAE_TEMPORAL_DOWNSAMPLE = (False, True)  # two downsamplings: 4 pixels per latent pixel (release: three, 8)
_IMAGE_SIZE = 64

#: Qwen/Qwen-Image, ``scheduler/scheduler_config.json``.
SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

#: Qwen/Qwen-Image, ``transformer/config.json`` (its "pooled_projection_dim": 768 is not an argument of the diffusers
#: class and is left out).
FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen-image": ("QwenImageTransformer2DModel", {
        "patch_size": 2,
        "in_channels": 64,
        "out_channels": 16,
        "num_layers": 60,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 3584,
        "guidance_embeds": False,
        "axes_dims_rope": [16, 56, 56],
    }),
}


def _text_encoder(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": _TEXT_WIDTH, "intermediate_size": 2 * _TEXT_WIDTH,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
            # multimodal rotary sections (temporal, height, width) over head_dim / 2 frequencies, as 16/24/24 of 64
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None,
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                       "out_hidden_size": _TEXT_WIDTH, "fullatt_block_indexes": [0], "window_size": 28},
        image_token_id=len(tokenizer) - 1, video_token_id=len(tokenizer) - 1,
        vision_start_token_id=len(tokenizer) - 1, vision_end_token_id=len(tokenizer) - 1,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def tiny_pipeline(*, seed: int = 0) -> Any:
    """The stock `QwenImagePipeline`, tiny and random: `pipe("a red circle", num_inference_steps=2)` makes a 64x64
    image (8x8 tokens of 2x2 latent pixels) in about a second on one CPU thread."""
    import diffusers

    if not hasattr(diffusers, "QwenImagePipeline"):
        raise AttnkitError(f"tiny-qwenimage needs diffusers' QwenImagePipeline (diffusers >= 0.35); this is diffusers "
                           f"{diffusers.__version__}.")
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)

    from ..pipelines import _finish, _seeded
    from ._qwen_tokenizer import tiny_qwen2_tokenizer

    tokenizer = tiny_qwen2_tokenizer()
    with _seeded(seed):
        text_encoder = _text_encoder(tokenizer)
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=_Z_DIM, dim_mult=[1, 2, 2], num_res_blocks=1,
                                     temperal_downsample=list(_VAE_TEMPORAL_DOWNSAMPLE),
                                     latents_mean=[0.0] * _Z_DIM, latents_std=[1.0] * _Z_DIM)
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=4 * _Z_DIM, out_channels=_Z_DIM, num_layers=2, attention_head_dim=_HEAD_DIM,
            num_attention_heads=_HEADS, joint_attention_dim=_TEXT_WIDTH, guidance_embeds=False,
            axes_dims_rope=_ROPE_AXES,
        )
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=vae,
                             text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.default_sample_size = _IMAGE_SIZE // pipe.vae_scale_factor
    return _finish(pipe)
