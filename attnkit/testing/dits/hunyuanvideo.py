"""Tiny HunyuanVideo: the stock `HunyuanVideoPipeline` with a tiny `LlamaModel` text encoder and in-memory
`LlamaTokenizerFast` (Llama 3 byte-level BPE, as the release's llava-llama-3-8b tokenizer), a tiny `CLIPTextModel`
for the pooled embedding, a tiny `AutoencoderKLHunyuanVideo` (4x spatial, 4x temporal compression, as the release's
8x / 4x) and a `HunyuanVideoTransformer3DModel` with the release's three kinds of attention: the text token refiner
(text over text, masked), double-stream blocks (joint [video | text]) and single-stream blocks (the same sequence).

The pipeline wraps the prompt in its video-description template and drops the template's first 95 tokens
(`crop_start`); every pre-token of the template is one token here, as it is in the real vocabulary, so that prefix is
exactly 95 tokens (begin-of-text included) and the transformer's text starts with the prompt's first token.

Default generation: `HunyuanVideoPipeline.__call__` takes its default size from literals (720x1280 px, 129 frames),
so the tiny pipeline is an instance of a same-named subclass of the stock class that changes only those defaults
(5 frames of 32x32 px: 2 latent frames of 8x8, 2 x 4 x 4 = 32 video tokens); every component and code path is stock.
"""

from __future__ import annotations

import functools
from typing import Any

from ...errors import AttnkitError
from ._video import small_default_class

NAME = "tiny-hunyuanvideo"

_HEADS, _HEAD_DIM = 2, 16
_ROPE_AXES = (4, 6, 6)  # (frame, row, column); sums to the head dim, as (16, 56, 56) sums to 128
_TEXT_WIDTH = 32  # Llama hidden size = text_embed_dim
_CLIP_WIDTH = 16  # CLIP hidden size = pooled_projection_dim
_SIZE, _FRAMES = 32, 5

#: hunyuanvideo-community/HunyuanVideo, ``scheduler/scheduler_config.json``: flow matching with shift 7.0 (assumed
#: from the release notes and the community port; no hub access here).
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 7.0}

#: hunyuanvideo-community/HunyuanVideo, ``transformer/config.json`` (diffusers' class defaults are the release's).
FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "hunyuanvideo": ("HunyuanVideoTransformer3DModel", {
        "in_channels": 16,
        "out_channels": 16,
        "num_attention_heads": 24,
        "attention_head_dim": 128,
        "num_layers": 20,
        "num_single_layers": 40,
        "num_refiner_layers": 2,
        "mlp_ratio": 4.0,
        "patch_size": 2,
        "patch_size_t": 1,
        "qk_norm": "rms_norm",
        "guidance_embeds": True,
        "text_embed_dim": 4096,
        "pooled_projection_dim": 768,
        "rope_theta": 256.0,
        "rope_axes_dim": [16, 56, 56],
    }),
}


@functools.cache
def _llama(tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=_TEXT_WIDTH, intermediate_size=2 * _TEXT_WIDTH,
        num_hidden_layers=3,  # the pipeline takes hidden_states[-3]: the output of the first of 3 layers
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def tiny_pipeline(*, seed: int = 0) -> Any:
    """The stock `HunyuanVideoPipeline`, tiny and random: `pipe("a red circle", num_inference_steps=2)` makes 5
    frames of 32x32 px on one CPU thread."""
    import diffusers

    if not hasattr(diffusers, "HunyuanVideoPipeline"):
        raise AttnkitError(f"tiny-hunyuanvideo needs diffusers' HunyuanVideoPipeline (diffusers >= 0.32); this is "
                           f"diffusers {diffusers.__version__}.")
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import CLIPTextModel

    from ..pipelines import _clip_text_config, _finish, _seeded
    from ..tokenizers import tiny_clip_tokenizer
    from ._llama_tokenizer import END_OF_TEXT, EOT, tiny_llama3_tokenizer

    tokenizer = tiny_llama3_tokenizer(texts=(DEFAULT_PROMPT_TEMPLATE["template"],), cls="LlamaTokenizerFast",
                                      eos_token=EOT, pad_token=END_OF_TEXT)
    tokenizer_2 = tiny_clip_tokenizer()
    with _seeded(seed):
        text_encoder = _llama(tokenizer)
        text_encoder_2 = CLIPTextModel(_clip_text_config(
            tokenizer_2, vocab_size=len(tokenizer_2), hidden_size=_CLIP_WIDTH, intermediate_size=2 * _CLIP_WIDTH,
            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=tokenizer_2.model_max_length))
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=_HEADS, attention_head_dim=_HEAD_DIM, num_layers=2,
            num_single_layers=2, num_refiner_layers=2, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
            qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=_TEXT_WIDTH, pooled_projection_dim=_CLIP_WIDTH,
            rope_theta=256.0, rope_axes_dim=_ROPE_AXES,
        )
        vae = AutoencoderKLHunyuanVideo(
            latent_channels=4, block_out_channels=(8, 16, 16), down_block_types=("HunyuanVideoDownBlock3D",) * 3,
            up_block_types=("HunyuanVideoUpBlock3D",) * 3, layers_per_block=1, norm_num_groups=4,
            spatial_compression_ratio=4, temporal_compression_ratio=4,
        )
    pipe_class = small_default_class(HunyuanVideoPipeline, height=_SIZE, width=_SIZE, num_frames=_FRAMES)
    pipe = pipe_class(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                      scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                      text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
    return _finish(pipe)
