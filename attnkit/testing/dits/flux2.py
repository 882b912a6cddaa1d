"""FLUX.2 [dev] in miniature: `Flux2Pipeline` with a tiny `Flux2Transformer2DModel` (double- and single-stream
blocks), a tiny `Mistral3ForConditionalGeneration` text encoder, a tiny `AutoencoderKLFlux2` and the release's
flow-matching scheduler.

A 64 px image is 8x8 = 64 tokens (VAE 4x, then the pipeline's 2x2 patchify); the text is always 512 tokens
(`max_sequence_length`, padded with `<pad>` on the right): `<s>[SYSTEM_PROMPT]` + FLUX.2's system message +
`[/SYSTEM_PROMPT][INST]` + prompt + `[/INST]` + padding. The pipeline stacks the text encoder's hidden states
10, 20 and 30 (`text_encoder_out_layers`), so the tiny Mistral has 30 (narrow) layers, the fewest that make the
default call work, and the transformer's `joint_attention_dim` is 3x its width.

The release's `tokenizer` component is a `PixtralProcessor` (tokenizer + Pixtral image processor); transformers 5
only builds that class with torchvision, which this environment lacks. The component here is the processor's
tokenizer itself (transformers' `TokenizersBackend`, with the chat template): the pipeline's text-to-image path
only calls `tokenizer.apply_chat_template(...)`, which gives the same token ids either way. What needs the real
processor: image inputs to the text encoder and caption upsampling (`caption_upsample_temperature`, which calls
`tokenizer.tokenizer.batch_decode` and generates text).
"""

from __future__ import annotations

from typing import Any


from ...errors import AttnkitError

NAME = "tiny-flux2"

_HEADS, _HEAD_DIM = 2, 16
_ROPE_AXES = (4, 4, 4, 4)  # (t, h, w, l): sums to the head dim, as (32, 32, 32, 32) sums to 128
_VAE_CHANNELS = (16, 32, 32)  # 4x downsampling: 64 px -> 16x16 latents -> 8x8 patchified tokens
_LATENT_CHANNELS = 4
_TEXT_WIDTH = 32
_TEXT_LAYERS = 30  # the pipeline reads hidden_states[10], [20], [30]
_OUT_LAYERS = 3
_DEFAULT_SAMPLE_SIZE = 16  # latent pixels: 16 * 4 = 64 px by default

# The release's scheduler: FlowMatchEulerDiscreteScheduler with dynamic shifting (the pipeline passes its own
# empirical `mu`). Assumed, not read from FLUX.2-dev's scheduler_config.json (offline): FLUX.1's values.
_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}

# black-forest-labs/FLUX.2-dev transformer/config.json, taken to be Flux2Transformer2DModel's defaults (the file
# itself was not reachable offline): 8 double-stream + 48 single-stream blocks, 48 heads x 128, 128 latent channels
# after 2x2 patchify of the 32-channel VAE, Mistral-Small hidden 5120 x 3 stacked layers = 15360. Built on meta it
# has 32.2B parameters, FLUX.2 [dev]'s published size.
FULL_SIZE = {
    "flux2-dev": ("Flux2Transformer2DModel", {
        "patch_size": 1,
        "in_channels": 128,
        "out_channels": None,
        "num_layers": 8,
        "num_single_layers": 48,
        "attention_head_dim": 128,
        "num_attention_heads": 48,
        "joint_attention_dim": 15360,
        "timestep_guidance_channels": 256,
        "mlp_ratio": 3.0,
        "axes_dims_rope": (32, 32, 32, 32),
        "rope_theta": 2000,
        "eps": 1e-6,
        "guidance_embeds": True,
    }),
}


def _text_encoder(tokenizer: Any) -> Any:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": _TEXT_WIDTH,
            "intermediate_size": 2 * _TEXT_WIDTH,
            "num_hidden_layers": _TEXT_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": _TEXT_WIDTH // 2,
            "max_position_embeddings": 2048,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": 8,
            "patch_size": 14,
            "image_size": 56,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
    )
    return Mistral3ForConditionalGeneration(config)


def tiny_pipeline(*, seed: int = 0) -> Any:
    import diffusers

    if not hasattr(diffusers, "Flux2Pipeline"):
        raise AttnkitError(f"tiny-flux2 needs diffusers' Flux2Pipeline (diffusers >= 0.36); "
                           f"this is diffusers {diffusers.__version__}.")
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel

    from ..pipelines import _finish, _seeded
    from ._flux2_tokenizer import tiny_mistral_tokenizer

    with _seeded(seed):
        tokenizer = tiny_mistral_tokenizer()
        text_encoder = _text_encoder(tokenizer)
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=_LATENT_CHANNELS * 4,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=_HEAD_DIM,
            num_attention_heads=_HEADS,
            joint_attention_dim=_OUT_LAYERS * _TEXT_WIDTH,
            timestep_guidance_channels=32,
            axes_dims_rope=_ROPE_AXES,
            guidance_embeds=True,
        )
        vae = AutoencoderKLFlux2(
            down_block_types=("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
            up_block_types=("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
            block_out_channels=_VAE_CHANNELS,
            layers_per_block=1,
            latent_channels=_LATENT_CHANNELS,
            norm_num_groups=8,
            sample_size=64,
        )
        pipe = Flux2Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**_SCHEDULER_CONFIG),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    pipe.default_sample_size = _DEFAULT_SAMPLE_SIZE
    return _finish(pipe)
