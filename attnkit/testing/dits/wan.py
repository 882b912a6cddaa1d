"""Tiny offline Wan 2.1 text-to-video (Wan-AI/Wan2.1-T2V-1.3B-Diffusers layout): `WanPipeline` with the UMT5 encoder
(`UMT5EncoderModel`; the release's tokenizer is google/umt5-xxl through `AutoTokenizer`, a `T5TokenizerFast`),
`WanTransformer3DModel` (every block: self-attention over all frames with 3D rotary embeddings, then
cross-attention to the text), `AutoencoderKLWan` (4x temporal, 8x spatial compression) and the release's
`UniPCMultistepScheduler` (flow prediction, flow sigmas, shift 3.0).

Default generation: `WanPipeline.__call__` takes its default size from literals (480x832 px, 81 frames), so the
tiny pipeline is the stock class with only those defaults changed (`_video.small_default_class`): 5 frames of
32x32 px, (5 - 1) // 4 + 1 = 2 latent frames of 4x4, 2 x 2 x 2 = 8 video tokens after the (1, 2, 2) patches. The
text is the prompt's UMT5 tokens, eos, then zero embeddings up to `max_sequence_length` (512 by default), all
attended (no mask).
"""

from __future__ import annotations

from typing import Any

from ...errors import AttnkitError

NAME = "tiny-wan"

_HEADS = 2
_HEAD_DIM = 24  # Wan's rotary splits the head: 2 * (24 // 6) = 8 channels each for rows and cols, 8 for frames
_LAYERS = 2
_TEXT_WIDTH = 32  # UMT5 d_model = the transformer's text_dim
_T5_HEAD_DIM = 16
_LATENT_CHANNELS = 16  # z_dim of the Wan 2.1 VAE (the pipeline reads its 16 latents_mean / latents_std)
_VAE_BASE = 8
_SIZE = 32
_FRAMES = 5

#: Wan-AI/Wan2.1-T2V-1.3B-Diffusers, ``scheduler/scheduler_config.json`` (the 480p shift; 720p uses 5.0).
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}

_WAN21_COMMON: dict[str, Any] = {
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}

#: ``transformer/config.json`` of Wan-AI/Wan2.1-T2V-1.3B-Diffusers (dim 1536 = 12 x 128, 30 layers, ffn 8960) and
#: Wan-AI/Wan2.1-T2V-14B-Diffusers (dim 5120 = 40 x 128, 40 layers, ffn 13824), as in the Wan team's
#: wan_t2v_1_3B / wan_t2v_14B configs.
FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "wan2.1-t2v-1.3b": ("WanTransformer3DModel",
                        {**_WAN21_COMMON, "num_attention_heads": 12, "num_layers": 30, "ffn_dim": 8960}),
    "wan2.1-t2v-14b": ("WanTransformer3DModel",
                       {**_WAN21_COMMON, "num_attention_heads": 40, "num_layers": 40, "ffn_dim": 13824}),
}


def _tiny_umt5(tokenizer: Any) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=_TEXT_WIDTH,
        d_kv=_T5_HEAD_DIM,
        d_ff=2 * _TEXT_WIDTH,
        num_layers=2,
        num_heads=_TEXT_WIDTH // _T5_HEAD_DIM,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",  # umt5-xxl's
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return UMT5EncoderModel(config)


def tiny_pipeline(*, seed: int = 0) -> Any:
    """The tiny `WanPipeline`: 2 blocks of self- + cross-attention, 2 heads x 24; 5 frames of 32x32 px by default."""
    import diffusers

    missing = [n for n in ("WanPipeline", "WanTransformer3DModel", "AutoencoderKLWan") if not hasattr(diffusers, n)]
    if missing:
        raise AttnkitError(f"tiny-wan needs {', '.join(missing)}, in diffusers >= 0.33 (this is "
                           f"{diffusers.__version__}).")
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )

    from ..pipelines import _finish, _seeded
    from ..tokenizers import tiny_t5_tokenizer
    from ._video import small_default_class

    with _seeded(seed):
        tokenizer = tiny_t5_tokenizer()
        text_encoder = _tiny_umt5(tokenizer)
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=_HEADS,
            attention_head_dim=_HEAD_DIM,
            in_channels=_LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            text_dim=_TEXT_WIDTH,
            freq_dim=256,
            ffn_dim=2 * _HEADS * _HEAD_DIM,
            num_layers=_LAYERS,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        )
        vae = AutoencoderKLWan(
            base_dim=_VAE_BASE,
            z_dim=_LATENT_CHANNELS,
            dim_mult=[1, 1, 1, 1],  # 3 downsamples: 8x spatial, as the release
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[False, True, True],  # 4x temporal, as the release
        )
        pipe_class = small_default_class(WanPipeline, height=_SIZE, width=_SIZE, num_frames=_FRAMES)
        pipe = pipe_class(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=UniPCMultistepScheduler.from_config(SCHEDULER_CONFIG),
        )
    return _finish(pipe)
