"""Tiny Lumina 2 (Alpha-VLLM/Lumina-Image-2.0): the stock `Lumina2Pipeline` with `Lumina2Transformer2DModel` (context
refiner blocks over the text, noise refiner blocks over the image, then joint blocks over [text | image]), a Gemma 2
text encoder (`Gemma2Model`, penultimate hidden states) with a `GemmaTokenizer`, an `AutoencoderKL` with 16 latent
channels (the release uses FLUX.1's VAE) and `FlowMatchEulerDiscreteScheduler`.

The pipeline fixes `vae_scale_factor` at 8 whatever the VAE, so the tiny VAE downsamples by 8 (four levels), and the
default size is `transformer.config.sample_size * 8`: sample size 8 gives 64x64 px images, an 8x8 latent, and with
patch size 2 a 4x4 grid of image tokens.
"""

from __future__ import annotations

from typing import Any

from ...errors import AttnkitError

NAME = "tiny-lumina2"

_HEADS, _KV_HEADS, _HEAD_DIM = 2, 1, 16  # grouped-query attention, as the release (24 query, 8 key/value heads)
_WIDTH = _HEADS * _HEAD_DIM
_ROPE_AXES = (4, 6, 6)  # (text position, row, column); sums to the head dim (release: 32, 32, 32 of 96)
_LATENT_CHANNELS = 16
_TEXT_WIDTH = 32
_SAMPLE_SIZE = 8  # x 8 = 64 px
_VAE_CHANNELS = (8, 16, 16, 16)  # four levels: the pipeline's fixed factor 8
_FLUX_VAE_SCALING, _FLUX_VAE_SHIFT = 0.3611, 0.1159

#: Lumina-Image-2.0's scheduler_config.json (assumed from the release: shift 6, no dynamic shifting; the pipeline
#: computes a resolution-dependent `mu`, which this scheduler ignores without `use_dynamic_shifting`).
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 6.0, "use_dynamic_shifting": False}

#: Lumina-Image-2.0's transformer/config.json (these are also the class defaults, except cap_feat_dim, which is
#: Gemma-2-2B's hidden size).
FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "lumina2": ("Lumina2Transformer2DModel", {
        "axes_dim_rope": [32, 32, 32],
        "axes_lens": [300, 512, 512],
        "cap_feat_dim": 2304,
        "ffn_dim_multiplier": None,
        "hidden_size": 2304,
        "in_channels": 16,
        "multiple_of": 256,
        "norm_eps": 1e-05,
        "num_attention_heads": 24,
        "num_kv_heads": 8,
        "num_layers": 26,
        "num_refiner_layers": 2,
        "out_channels": None,
        "patch_size": 2,
        "sample_size": 128,
        "scaling_factor": 1.0,
    }),
}


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=_LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
        block_out_channels=_VAE_CHANNELS, layers_per_block=1, norm_num_groups=8, sample_size=64,
        scaling_factor=_FLUX_VAE_SCALING, shift_factor=_FLUX_VAE_SHIFT, use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def tiny_pipeline(*, seed: int = 0) -> Any:
    import diffusers

    from ..pipelines import _finish, _seeded
    from ._gemma_tokenizer import tiny_gemma_tokenizer
    from .sana import tiny_gemma2

    if not hasattr(diffusers, "Lumina2Pipeline"):
        raise AttnkitError(f"tiny-lumina2 needs diffusers' Lumina2Pipeline (diffusers >= 0.33); this is diffusers "
                           f"{diffusers.__version__}.")
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        Lumina2Pipeline,
        Lumina2Transformer2DModel,
    )

    tokenizer = tiny_gemma_tokenizer()
    with _seeded(seed):
        text_encoder = tiny_gemma2(tokenizer)
        transformer = Lumina2Transformer2DModel(
            sample_size=_SAMPLE_SIZE, patch_size=2, in_channels=_LATENT_CHANNELS, hidden_size=_WIDTH, num_layers=2,
            num_refiner_layers=1, num_attention_heads=_HEADS, num_kv_heads=_KV_HEADS, multiple_of=16,
            norm_eps=1e-5, axes_dim_rope=_ROPE_AXES, axes_lens=(300, 512, 512), cap_feat_dim=_TEXT_WIDTH,
        ).eval()
        vae = _tiny_vae()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    pipe = Lumina2Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                           tokenizer=tokenizer)
    return _finish(pipe)
