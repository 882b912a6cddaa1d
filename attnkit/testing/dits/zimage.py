"""Tiny Z-Image: the stock `ZImagePipeline` with a tiny `Qwen3Model` text encoder, an in-memory `Qwen2Tokenizer`
with a Qwen3 chat template, a tiny Flux-style `AutoencoderKL` and a `ZImageTransformer2DModel` with every kind of
block the release has (noise refiner: image self-attention; context refiner: caption self-attention; main layers:
one single-stream sequence [image | image padding | caption | caption padding]), with the release's scheduler config.

`ZImagePipeline.__call__` takes `height = height or 1024` (no `default_sample_size`), so the default image here is
1024x1024 px like the release's; the tiny VAE downsamples 32x, so that is a 16x16 token grid of 2x2 latent pixels,
cheap to denoise (the decode at 1024 px is the bulk of a default `output_type="pil"` call). Sides must be multiples of
64 px (the pipeline's check); 64x64 px is one token.
"""

from __future__ import annotations

from typing import Any

from ...errors import AttnkitError

NAME = "tiny-zimage"

_HEADS, _HEAD_DIM = 2, 16
_DIM = _HEADS * _HEAD_DIM
_ROPE_AXES = (4, 6, 6)  # (caption/frame index, row, column): sums to the head dim, as (32, 48, 48) sums to 128
_TEXT_WIDTH = 32  # Qwen3 hidden size = the transformer's cap_feat_dim (release: 2560)
_LATENT_CHANNELS = 4  # release: 16
_VAE_CHANNELS = (4, 8, 8, 16, 16, 16)  # six blocks: 32 pixels per latent pixel (release: four, 8)
_VAE_GROUPS = 4

#: Tongyi-MAI/Z-Image-Turbo, ``scheduler/scheduler_config.json`` (its shift 3.0 and fixed shifting; other fields default).
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
#: The Flux VAE's latent scaling, which Z-Image uses.
_VAE_SCALING, _VAE_SHIFT = 0.3611, 0.1159

#: Tongyi-MAI/Z-Image-Turbo, ``transformer/config.json``.
FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "z-image-turbo": ("ZImageTransformer2DModel", {
        "all_patch_size": [2],
        "all_f_patch_size": [1],
        "in_channels": 16,
        "dim": 3840,
        "n_layers": 30,
        "n_refiner_layers": 2,
        "n_heads": 30,
        "n_kv_heads": 30,
        "norm_eps": 1e-05,
        "qk_norm": True,
        "cap_feat_dim": 2560,
        "rope_theta": 256.0,
        "t_scale": 1000.0,
        "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512],
    }),
}


def tiny_pipeline(*, seed: int = 0) -> Any:
    """The stock `ZImagePipeline`, tiny and random: `pipe("a red circle", num_inference_steps=2)` makes a 1024x1024
    image from 16x16 tokens in about 2 s on one CPU thread."""
    import diffusers

    if not hasattr(diffusers, "ZImagePipeline"):
        raise AttnkitError(f"tiny-zimage needs diffusers' ZImagePipeline (diffusers >= 0.36); this is diffusers "
                           f"{diffusers.__version__}.")
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from ..pipelines import _finish, _seeded
    from ._qwen_tokenizer import QWEN3_CHAT_TEMPLATE, tiny_qwen2_tokenizer

    tokenizer = tiny_qwen2_tokenizer(chat_template=QWEN3_CHAT_TEMPLATE)
    with _seeded(seed):
        text_encoder = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=_TEXT_WIDTH, intermediate_size=2 * _TEXT_WIDTH,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
            max_position_embeddings=2048, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
            tie_word_embeddings=True,
        ))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=_LATENT_CHANNELS,
            down_block_types=("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
            block_out_channels=_VAE_CHANNELS, layers_per_block=1, norm_num_groups=_VAE_GROUPS,
            scaling_factor=_VAE_SCALING, shift_factor=_VAE_SHIFT, use_quant_conv=False, use_post_quant_conv=False,
        )
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=_LATENT_CHANNELS, dim=_DIM, n_layers=2,
            n_refiner_layers=1, n_heads=_HEADS, n_kv_heads=_HEADS, norm_eps=1e-5, qk_norm=True,
            cap_feat_dim=_TEXT_WIDTH, rope_theta=256.0, t_scale=1000.0, axes_dims=list(_ROPE_AXES),
            axes_lens=[1536, 512, 512],
        )
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=vae,
                          text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    # ZImagePipeline generates at `height or 1024` and reads no `default_sample_size`; this says the same to
    # attnkit's `models.default_size` (the released pipeline has none: see the family's notes).
    pipe.default_sample_size = 1024 // pipe.vae_scale_factor
    return _finish(pipe)
