"""PixArt-Sigma in miniature: `PixArtSigmaPipeline` with a T5 v1.1 encoder, `PixArtTransformer2DModel` (self- and
cross-attention in every block), an SDXL-style `AutoencoderKL` and the release's DPM-Solver++ scheduler.

Geometry. PixArt's `__call__` bins every requested size to the nearest entry of an aspect-ratio table chosen by
`transformer.config.sample_size` (`use_resolution_binning=True` by default), and the smallest table (sample size
32, PixArt-Sigma-XL-2-256x256) only holds sizes of about 256x256 px. So no default generation can be 64 px: a
64 px request is generated at 256 px and resized. The tiny pipeline is therefore the 256 px release in miniature:
sample size 32 and a VAE that downsamples by 8, as every PixArt release; the default image is 256x256 px, a
32x32 latent, 16x16 = 256 image tokens (patch 2). Text is 300 T5 tokens (the default `max_sequence_length`),
padded; the pipeline passes the tokenizer's attention mask, which the transformer turns into an additive bias
(0 / -10000) on the keys of every cross-attention.
"""

from __future__ import annotations

from typing import Any


from ...errors import AttnkitError

NAME = "tiny-pixart"

_HEADS = 2
_HEAD_DIM = 16
_LAYERS = 2
_TEXT_WIDTH = 32  # T5 d_model = the transformer's caption_channels
_SAMPLE_SIZE = 32  # the smallest sample size with a resolution-binning table (256 px images)
_PATCH_SIZE = 2
_LATENT_CHANNELS = 4
_VAE_CHANNELS = (8, 16, 16, 16)  # 4 levels: downsamples by 8, as the release's SDXL VAE
_VAE_NORM_GROUPS = 8
_SDXL_VAE_SCALING = 0.13025

#: PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, ``scheduler/scheduler_config.json`` (shared by the Sigma releases).
SCHEDULER_CONFIG: dict[str, Any] = {
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "lambda_min_clipped": float("-inf"),
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}

#: PixArt-alpha/PixArt-Sigma-XL-2-1024-MS, ``transformer/config.json`` (saved as ``Transformer2DModel``, which
#: diffusers maps to ``PixArtTransformer2DModel``; keys that class does not take are dropped).
_SIGMA_XL_1024: dict[str, Any] = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "attention_type": "default",
    "caption_channels": 4096,
    "cross_attention_dim": 1152,
    "dropout": 0.0,
    "in_channels": 4,
    "interpolation_scale": 2,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "out_channels": 8,
    "patch_size": 2,
    "sample_size": 128,
    "upcast_attention": False,
    "use_additional_conditions": False,
}

FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "pixart-sigma-xl-1024": ("PixArtTransformer2DModel", _SIGMA_XL_1024),
}


def tiny_pipeline(*, seed: int = 0) -> Any:
    """The tiny `PixArtSigmaPipeline`: 2 blocks of self- + cross-attention, 2 heads x 16; 256 px by default."""
    try:
        from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    except ImportError as error:  # pragma: no cover - diffusers >= 0.28 has them
        raise AttnkitError(f"tiny-pixart needs PixArtSigmaPipeline, in diffusers >= 0.28 ({error}).") from None
    from ..pipelines import _finish, _seeded, _tiny_t5, _tiny_vae
    from ..tokenizers import tiny_t5_tokenizer

    with _seeded(seed):
        tokenizer = tiny_t5_tokenizer()
        text_encoder = _tiny_t5(tokenizer, width=_TEXT_WIDTH)
        transformer = PixArtTransformer2DModel(
            num_attention_heads=_HEADS,
            attention_head_dim=_HEAD_DIM,
            in_channels=_LATENT_CHANNELS,
            out_channels=2 * _LATENT_CHANNELS,  # learned sigma, as the release
            num_layers=_LAYERS,
            cross_attention_dim=_HEADS * _HEAD_DIM,
            caption_channels=text_encoder.config.d_model,
            sample_size=_SAMPLE_SIZE,
            patch_size=_PATCH_SIZE,
            interpolation_scale=0.5,  # PixArt-Sigma-XL-2-256x256's
            use_additional_conditions=False,
        )
        vae = _tiny_vae(scaling_factor=_SDXL_VAE_SCALING, channels=_VAE_CHANNELS, norm_groups=_VAE_NORM_GROUPS,
                        latent_channels=_LATENT_CHANNELS, sample_size=_SAMPLE_SIZE * 2 ** (len(_VAE_CHANNELS) - 1))
        pipe = PixArtSigmaPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=DPMSolverMultistepScheduler.from_config(SCHEDULER_CONFIG),
        )
    return _finish(pipe)
