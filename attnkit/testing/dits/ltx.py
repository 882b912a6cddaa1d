"""Tiny offline LTX-Video 0.9.5 (Lightricks/LTX-Video-0.9.5 layout; its transformer is that of 0.9.0 and 0.9.1):
`LTXPipeline` with a T5 v1.1 encoder
(`T5EncoderModel`, `T5TokenizerFast`, prompts padded to `max_sequence_length` 128 with their mask),
`LTXVideoTransformer3DModel` (every block: self-attention over the video tokens of all frames with 3D rotary
embeddings, then cross-attention to the text with the text mask as a key bias), the 0.9.5 `AutoencoderKLLTXVideo`
(32x spatial, 8x temporal compression, timestep-conditioned decoder) and 0.9.5's `FlowMatchEulerDiscreteScheduler`
(shift 1, no dynamic shifting). The 0.9.0/0.9.1 scheduler config (`SCHEDULER_CONFIG_090`) cannot run one step.

Default generation: `LTXPipeline.__call__` takes its default size from literals (512x704 px, 161 frames), so the
tiny pipeline is the stock class with only those defaults changed (`_video.small_default_class`): 9 frames of
64x64 px, (9 - 1) // 8 + 1 = 2 latent frames of 2x2, 2 x 2 x 2 = 8 video tokens (patch 1, as every LTX-Video
0.9 release).
"""

from __future__ import annotations

from typing import Any

from ...errors import AttnkitError

NAME = "tiny-ltx"

_HEADS = 2
_HEAD_DIM = 32
_LAYERS = 2
_TEXT_WIDTH = 32  # T5 d_model = the transformer's caption_channels
_LATENT_CHANNELS = 8
_SIZE = 64
_FRAMES = 9
_TEXT_LENGTH = 128  # the release tokenizer's model_max_length and the pipeline's max_sequence_length

#: Lightricks/LTX-Video (0.9.0 and 0.9.1), ``scheduler/scheduler_config.json``, as diffusers'
#: scripts/convert_ltx_to_diffusers.py writes it. Not the tiny pipeline's: with it, `num_inference_steps=1` fails in
#: stock diffusers (sigmas [1.0] stretched to `shift_terminal` divide 0 by 0: NaN timesteps, then an IndexError in
#: `scheduler.step`), and attnkit's shape inspector runs one step.
SCHEDULER_CONFIG_090: dict[str, Any] = {
    "base_image_seq_len": 1024,
    "base_shift": 0.95,
    "invert_sigmas": False,
    "max_image_seq_len": 4096,
    "max_shift": 2.05,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.1,
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

#: Lightricks/LTX-Video-0.9.5 (also an `LTXPipeline`), ``scheduler/scheduler_config.json``: the conversion script's
#: `FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False)`, i.e. the class defaults, shift 1.0.
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}

#: Lightricks/LTX-Video (0.9.0; 0.9.1 and 0.9.5 have the same), ``transformer/config.json`` (2B: 28 layers, 32
#: heads x 64, T5-XXL captions), as diffusers' LTX conversion configs give it; also the class defaults.
_LTX_VIDEO_09: dict[str, Any] = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 64,
    "attention_out_bias": True,
    "caption_channels": 4096,
    "cross_attention_dim": 2048,
    "in_channels": 128,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "num_attention_heads": 32,
    "num_layers": 28,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "qk_norm": "rms_norm_across_heads",
}

FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "ltx-video-0.9": ("LTXVideoTransformer3DModel", _LTX_VIDEO_09),
    # LTX-Video 0.9.7 13B (an `LTXConditionPipeline` release): 48 layers, 32 heads x 128, cross-attention width 4096.
    "ltx-video-0.9.7-13b": ("LTXVideoTransformer3DModel",
                            {**_LTX_VIDEO_09, "attention_head_dim": 128, "cross_attention_dim": 4096,
                             "num_layers": 48}),
}


def tiny_pipeline(*, seed: int = 0) -> Any:
    """The tiny `LTXPipeline`: 2 blocks of self- + cross-attention, 2 heads x 32; 9 frames of 64x64 px by
    default."""
    import diffusers

    missing = [n for n in ("LTXPipeline", "LTXVideoTransformer3DModel", "AutoencoderKLLTXVideo")
               if not hasattr(diffusers, n)]
    if missing:
        raise AttnkitError(f"tiny-ltx needs {', '.join(missing)}, in diffusers >= 0.32 (this is "
                           f"{diffusers.__version__}).")
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    from ..pipelines import _finish, _seeded, _tiny_t5
    from ..tokenizers import tiny_t5_tokenizer
    from ._video import small_default_class

    with _seeded(seed):
        tokenizer = tiny_t5_tokenizer(model_max_length=_TEXT_LENGTH)
        text_encoder = _tiny_t5(tokenizer, width=_TEXT_WIDTH)
        transformer = LTXVideoTransformer3DModel(
            in_channels=_LATENT_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=_HEADS,
            attention_head_dim=_HEAD_DIM,
            cross_attention_dim=_HEADS * _HEAD_DIM,
            num_layers=_LAYERS,
            caption_channels=_TEXT_WIDTH,
        )
        vae = AutoencoderKLLTXVideo(  # the 0.9.5 layout (diffusers' get_vae_config("0.9.5")), tiny
            latent_channels=_LATENT_CHANNELS,
            block_out_channels=(4, 8, 16, 32, 64),  # doubling per level, as the release (128 ... 2048)
            down_block_types=("LTXVideo095DownBlock3D",) * 4,
            decoder_block_out_channels=(8, 16, 32),  # doubling, as (256, 512, 1024): no channel-changing conv_in
            layers_per_block=(1,) * 5,
            decoder_layers_per_block=(1,) * 4,
            spatio_temporal_scaling=(True,) * 4,
            decoder_spatio_temporal_scaling=(True,) * 3,
            decoder_inject_noise=(False,) * 4,
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),  # with patch 4: 32x, 8x
            upsample_residual=(True,) * 3,
            upsample_factor=(2,) * 3,
            timestep_conditioning=True,
            patch_size=4,
            patch_size_t=1,
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        )
        pipe_class = small_default_class(LTXPipeline, height=_SIZE, width=_SIZE, num_frames=_FRAMES)
        pipe = pipe_class(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    return _finish(pipe)
