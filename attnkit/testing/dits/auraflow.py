"""AuraFlow in miniature: `AuraFlowPipeline` with a UMT5 encoder and a T5 tokenizer, `AuraFlowTransformer2DModel`
with both kinds of blocks (MMDiT "joint" blocks, then single-stream DiT blocks), an `AutoencoderKL` and the
release's flow-matching Euler scheduler (shift 1.73).

Geometry. `AuraFlowPipeline.__call__` defaults `height` and `width` to a literal 1024 (its signature, not the
transformer's `sample_size`), so a default generation is always 1024x1024 px. To keep that cheap, the tiny VAE
downsamples by 32 (6 levels of 4-8 channels; the release's SDXL VAE downsamples by 8) and `sample_size` is 32, so
that `sample_size * vae_scale_factor` is the real default (1024 px): a 32x32 latent, 16x16 = 256 image tokens
(patch 2). Sizes must be multiples of 64 px (the pipeline's check: 2 x the VAE factor); 64 px is one token.
Text is 256 UMT5 tokens (the default `max_sequence_length`), padded; the pipeline zeroes the padding embeddings
but passes no attention mask, so padding keys are attended. The transformer prepends 8 learned register tokens to
the text, so every joint and single sequence is [8 registers | 256 text | image].
"""

from __future__ import annotations

from typing import Any


from ...errors import AttnkitError

NAME = "tiny-auraflow"

_HEADS = 2
_HEAD_DIM = 16
_JOINT_LAYERS = 2
_SINGLE_LAYERS = 2
_TEXT_WIDTH = 32  # UMT5 d_model = the transformer's joint_attention_dim
_TEXT_HEAD_DIM = 8
_TEXT_LAYERS = 2
_SAMPLE_SIZE = 32
_PATCH_SIZE = 2
_POS_EMBED_MAX_SIZE = 1024  # a 32x32 patch grid: images up to 2048 px
_LATENT_CHANNELS = 4
_VAE_CHANNELS = (4, 4, 8, 8, 8, 8)  # 6 levels: downsamples by 32, so 1024 px is a 32x32 latent
_VAE_NORM_GROUPS = 4
_SDXL_VAE_SCALING = 0.13025

#: fal/AuraFlow-v0.3, ``scheduler/scheduler_config.json``.
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.73}

#: fal/AuraFlow-v0.3, ``transformer/config.json``.
_AURAFLOW_V03: dict[str, Any] = {
    "attention_head_dim": 256,
    "caption_projection_dim": 3072,
    "in_channels": 4,
    "joint_attention_dim": 2048,
    "num_attention_heads": 12,
    "num_mmdit_layers": 4,
    "num_single_dit_layers": 32,
    "out_channels": 4,
    "patch_size": 2,
    "pos_embed_max_size": 9216,
    "sample_size": 64,
}

FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "auraflow-0.3": ("AuraFlowTransformer2DModel", _AURAFLOW_V03),
}


def _tiny_umt5(tokenizer: Any) -> Any:
    """A UMT5 encoder as EleutherAI/pile-t5-xl (AuraFlow's text encoder) is one: gated-SiLU feed-forward, one
    relative position bias per layer. (The gated activation is assumed from pile-t5's config, not verified.)"""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=_TEXT_WIDTH,
        d_kv=_TEXT_HEAD_DIM,
        d_ff=2 * _TEXT_WIDTH,
        num_layers=_TEXT_LAYERS,
        num_heads=_TEXT_WIDTH // _TEXT_HEAD_DIM,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-silu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return UMT5EncoderModel(config)


def tiny_pipeline(*, seed: int = 0) -> Any:
    """The tiny `AuraFlowPipeline`: 2 joint + 2 single blocks, 2 heads x 16; 1024 px (its fixed default)."""
    import diffusers

    if not hasattr(diffusers, "AuraFlowPipeline"):
        raise AttnkitError(f"tiny-auraflow needs AuraFlowPipeline, in diffusers >= 0.30 (installed: "
                           f"{diffusers.__version__}).")
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from ..pipelines import _finish, _seeded, _tiny_vae
    from ..tokenizers import tiny_t5_tokenizer

    with _seeded(seed):
        tokenizer = tiny_t5_tokenizer()
        text_encoder = _tiny_umt5(tokenizer)
        transformer = AuraFlowTransformer2DModel(
            sample_size=_SAMPLE_SIZE,
            patch_size=_PATCH_SIZE,
            in_channels=_LATENT_CHANNELS,
            num_mmdit_layers=_JOINT_LAYERS,
            num_single_dit_layers=_SINGLE_LAYERS,
            attention_head_dim=_HEAD_DIM,
            num_attention_heads=_HEADS,
            joint_attention_dim=text_encoder.config.d_model,
            caption_projection_dim=_HEADS * _HEAD_DIM,
            out_channels=_LATENT_CHANNELS,
            pos_embed_max_size=_POS_EMBED_MAX_SIZE,
        )
        vae = _tiny_vae(scaling_factor=_SDXL_VAE_SCALING, channels=_VAE_CHANNELS, norm_groups=_VAE_NORM_GROUPS,
                        latent_channels=_LATENT_CHANNELS, sample_size=_SAMPLE_SIZE * 2 ** (len(_VAE_CHANNELS) - 1))
        pipe = AuraFlowPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        )
    return _finish(pipe)
