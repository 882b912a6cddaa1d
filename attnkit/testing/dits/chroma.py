"""Chroma1 in miniature: `ChromaPipeline` with a tiny `ChromaTransformer2DModel` (Flux-style double- and
single-stream blocks, modulation from the distilled-guidance approximator instead of a pooled text embedding), a
tiny T5 v1.1 encoder with the in-memory T5 tokenizer, a tiny Flux-style `AutoencoderKL` and Flux's scheduler.

A 64 px image is 8x8 = 64 packed tokens (VAE 4x, then 2x2 packing); the text is 512 T5 tokens
(`max_sequence_length`, padded), with a mask that keeps the prompt's tokens and one padding token. Chroma runs real
classifier-free guidance (default `guidance_scale` 5.0): a second transformer call per step on the negative prompt
("" by default), not a doubled batch.
"""

from __future__ import annotations

from typing import Any

from ...errors import AttnkitError

NAME = "tiny-chroma"

_HEADS, _HEAD_DIM = 2, 16
_ROPE_AXES = (4, 6, 6)  # (text, row, column); sums to the head dim, as (16, 56, 56) sums to 128
_LATENT_CHANNELS = 4
_PACKING = 2
_TEXT_WIDTH = 32
_APPROXIMATOR_CHANNELS = 16  # 4 x the timestep/guidance/modulation-index projection width
_DEFAULT_SAMPLE_SIZE = 16  # latent pixels: 16 * 4 = 64 px by default

# lodestones/Chroma1-HD transformer/config.json, taken to be ChromaTransformer2DModel's defaults (the file itself
# was not reachable offline): FLUX.1-schnell's 19 double + 38 single blocks of 24 heads x 128, T5-XXL width 4096,
# 64 packed channels; the approximator replaces the per-block modulation MLPs (64 input channels, hidden 5120,
# 5 layers). Built on meta it has 8.9B parameters, Chroma1's published size.
# The scheduler is assumed to be FLUX.1's (FlowMatchEulerDiscreteScheduler, shift 3, dynamic shifting).
FULL_SIZE = {
    "chroma1-hd": ("ChromaTransformer2DModel", {
        "patch_size": 1,
        "in_channels": 64,
        "out_channels": None,
        "num_layers": 19,
        "num_single_layers": 38,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "axes_dims_rope": (16, 56, 56),
        "approximator_num_channels": 64,
        "approximator_hidden_dim": 5120,
        "approximator_layers": 5,
    }),
}


def tiny_pipeline(*, seed: int = 0) -> Any:
    import diffusers

    if not hasattr(diffusers, "ChromaPipeline"):
        raise AttnkitError(f"tiny-chroma needs diffusers' ChromaPipeline (diffusers >= 0.35); "
                           f"this is diffusers {diffusers.__version__}.")
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from ..pipelines import (
        _FLUX_SCHEDULER_CONFIG,
        _FLUX_VAE_SCALING,
        _FLUX_VAE_SHIFT,
        _finish,
        _seeded,
        _tiny_t5,
        _tiny_vae,
    )
    from ..tokenizers import tiny_t5_tokenizer

    with _seeded(seed):
        tokenizer = tiny_t5_tokenizer()
        text_encoder = _tiny_t5(tokenizer, width=_TEXT_WIDTH)
        transformer = ChromaTransformer2DModel(
            patch_size=1,
            in_channels=_LATENT_CHANNELS * _PACKING**2,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=_HEAD_DIM,
            num_attention_heads=_HEADS,
            joint_attention_dim=text_encoder.config.d_model,
            axes_dims_rope=_ROPE_AXES,
            approximator_num_channels=_APPROXIMATOR_CHANNELS,
            approximator_hidden_dim=2 * _HEADS * _HEAD_DIM,
            approximator_layers=2,
        )
        pipe = ChromaPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER_CONFIG),
            vae=_tiny_vae(scaling_factor=_FLUX_VAE_SCALING, shift_factor=_FLUX_VAE_SHIFT, quant_conv=False),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    pipe.default_sample_size = _DEFAULT_SAMPLE_SIZE
    return _finish(pipe)
