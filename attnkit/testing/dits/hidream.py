"""Tiny HiDream-I1: the stock `HiDreamImagePipeline` with the release's four text encoders in miniature (CLIP-L and
CLIP-G `CLIPTextModelWithProjection` for the pooled embedding, a T5 encoder and a Llama 3 `LlamaForCausalLM` whose
hidden states of every layer are stacked), an in-memory `PreTrainedTokenizerFast` Llama 3 tokenizer, the Flux-style
`AutoencoderKL` and a `HiDreamImageTransformer2DModel` with 2 double-stream and 2 single-stream blocks, both with the
release's mixture-of-experts feed-forward (4 routed experts, 2 active).

The transformer's text sequence in every block is [T5 | last listed Llama layer | this block's Llama layer]
(`llama_layers`), after the image tokens: 128 + 128 + 128 tokens at the default `max_sequence_length`.
"""

from __future__ import annotations

from typing import Any

from ...errors import AttnkitError

NAME = "tiny-hidream"

_HEADS, _HEAD_DIM = 2, 16
_ROPE_AXES = (8, 4, 4)  # (unused index, row, column); sums to the head dim, as (64, 32, 32) sums to 128
_TEXT_WIDTH = 32  # T5 d_model and Llama hidden size = caption_channels
_CLIP_WIDTH = 16  # each CLIP's projection; both together = text_emb_dim
_LLAMA_LAYERS = 2
_LONG_CLIP_POSITIONS = 248  # HiDream's CLIPs are long-context (248 positions); the pipeline pads them to 128
_IMAGE_SIZE = 64
_LATENT_SIZE = 16  # 64 px through the tiny VAE's 4x downsampling

#: The scheduler of HiDream-I1-Full. The original code samples with a flow-matching UniPC (shift 3.0, no dynamic
#: shifting); diffusers' equivalent is `UniPCMultistepScheduler` with flow sigmas, the class the pipeline special-cases.
#: Assumed (no hub access here): the fields below beyond those three follow UniPC's defaults.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
}

#: HiDream-ai/HiDream-I1-Full, ``transformer/config.json`` (as in diffusers' conversion script; Dev and Fast share it).
FULL_SIZE: dict[str, tuple[str, dict[str, Any]]] = {
    "hidream-i1-full": ("HiDreamImageTransformer2DModel", {
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 16,
        "num_single_layers": 32,
        "attention_head_dim": 128,
        "num_attention_heads": 20,
        "caption_channels": [4096, 4096],
        "text_emb_dim": 2048,
        "num_routed_experts": 4,
        "num_activated_experts": 2,
        "axes_dims_rope": [64, 32, 32],
        "max_resolution": [128, 128],
        "llama_layers": [*range(32), *([31] * 16)],
    }),
}


def _llama(tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=_TEXT_WIDTH, intermediate_size=2 * _TEXT_WIDTH,
        num_hidden_layers=_LLAMA_LAYERS, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        rms_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    ))


def tiny_pipeline(*, seed: int = 0) -> Any:
    """The stock `HiDreamImagePipeline`, tiny and random: `pipe("a red circle", num_inference_steps=2)` makes a
    64x64 image (8x8 tokens of 2x2 latent pixels) on one CPU thread. `max_resolution` is the 16x16 latent, so the
    pipeline's default area (and the transformer's padded sequence of a non-square image) is 64 image tokens."""
    import diffusers

    if not hasattr(diffusers, "HiDreamImagePipeline"):
        raise AttnkitError(f"tiny-hidream needs diffusers' HiDreamImagePipeline (diffusers >= 0.34); this is diffusers "
                           f"{diffusers.__version__}.")
    from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel, UniPCMultistepScheduler
    from transformers import CLIPTextModelWithProjection

    from ..pipelines import _FLUX_VAE_SCALING, _FLUX_VAE_SHIFT, _clip_text_config, _finish, _seeded, _tiny_t5, _tiny_vae
    from ..tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer
    from ._llama_tokenizer import EOT, tiny_llama3_tokenizer

    tokenizer = tiny_clip_tokenizer(model_max_length=_LONG_CLIP_POSITIONS)
    tokenizer_2 = tiny_clip_tokenizer(model_max_length=_LONG_CLIP_POSITIONS)
    tokenizer_3, tokenizer_4 = tiny_t5_tokenizer(), tiny_llama3_tokenizer(eos_token=EOT, pad_token=EOT)
    with _seeded(seed):
        clips = [CLIPTextModelWithProjection(_clip_text_config(
            t, vocab_size=len(t), hidden_size=_CLIP_WIDTH, projection_dim=_CLIP_WIDTH,
            intermediate_size=2 * _CLIP_WIDTH, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=_LONG_CLIP_POSITIONS))
            for t in (tokenizer, tokenizer_2)]
        t5 = _tiny_t5(tokenizer_3, width=_TEXT_WIDTH)
        llama = _llama(tokenizer_4)
        transformer = HiDreamImageTransformer2DModel(
            patch_size=2, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2,
            attention_head_dim=_HEAD_DIM, num_attention_heads=_HEADS, caption_channels=[_TEXT_WIDTH, _TEXT_WIDTH],
            text_emb_dim=2 * _CLIP_WIDTH, num_routed_experts=4, num_activated_experts=2, axes_dims_rope=_ROPE_AXES,
            max_resolution=(_LATENT_SIZE, _LATENT_SIZE),
            llama_layers=[0, 1, 1, 1],  # as the release: each layer once, then the last one repeated
        )
        vae = _tiny_vae(scaling_factor=_FLUX_VAE_SCALING, shift_factor=_FLUX_VAE_SHIFT, quant_conv=False)
    pipe = HiDreamImagePipeline(
        scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG), vae=vae,
        text_encoder=clips[0], tokenizer=tokenizer, text_encoder_2=clips[1], tokenizer_2=tokenizer_2,
        text_encoder_3=t5, tokenizer_3=tokenizer_3, text_encoder_4=llama, tokenizer_4=tokenizer_4,
        transformer=transformer,
    )
    pipe.default_sample_size = _IMAGE_SIZE // pipe.vae_scale_factor
    return _finish(pipe)
