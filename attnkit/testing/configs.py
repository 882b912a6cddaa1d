"""Full-size denoiser configs of released models, and meta-device builders for them.

Attention-site logic (which layers exist, how many, their names and resolutions)
must be checked against the real architectures, not only the tiny ones. Loading
gigabytes of weights for that is pointless: :func:`meta_denoiser` builds the real
module tree on the ``meta`` device, which allocates no storage and takes well under
a second.

The dicts are the keyword arguments of each model class, copied from the released
``config.json`` files (bookkeeping keys such as ``_class_name`` dropped, and
arguments equal to the class default omitted where the file did not set them).
Treat them as read-only; :func:`meta_denoiser` passes a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import diffusers
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

from ..errors import AttnkitError
from . import dits

__all__ = [
    "DENOISER_NAMES",
    "FLUX_DEV_TRANSFORMER_CONFIG",
    "SD3_MEDIUM_TRANSFORMER_CONFIG",
    "SD15_SCHEDULER_CONFIG",
    "SD15_TEXT_ENCODER_CONFIG",
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "SD35_LARGE_TRANSFORMER_CONFIG",
    "SD35_MEDIUM_DUAL_ATTENTION_BLOCKS",
    "SD35_MEDIUM_TRANSFORMER_CONFIG",
    "SDXL_UNET_CONFIG",
    "meta_denoiser",
]

#: runwayml/stable-diffusion-v1-5, ``unet/config.json``.
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    # Diffusers' historical misnomer: for UNets this is the number of heads (head dim 40/80/160).
    "attention_head_dim": 8,
}

#: runwayml/stable-diffusion-v1-5, ``vae/config.json``.
SD15_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}

#: openai/clip-vit-large-patch14 text tower (SD1.5's ``text_encoder/config.json``),
#: without token ids: those depend on the tokenizer paired with it.
SD15_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
}

#: runwayml/stable-diffusion-v1-5, ``scheduler/scheduler_config.json`` (a ``PNDMScheduler``, the release default).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

#: stabilityai/stable-diffusion-xl-base-1.0, ``unet/config.json``.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": [1, 2, 10],
    # Number of heads per level (head dim 64 everywhere), despite the name.
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

#: stabilityai/stable-diffusion-3-medium-diffusers, ``transformer/config.json``.
SD3_MEDIUM_TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
}

#: Number of leading SD3.5-medium (MMDiT-X) blocks with an extra image-only ``attn2``.
SD35_MEDIUM_DUAL_ATTENTION_BLOCKS = 13

#: stabilityai/stable-diffusion-3.5-medium, ``transformer/config.json``.
SD35_MEDIUM_TRANSFORMER_CONFIG: dict[str, Any] = {
    **SD3_MEDIUM_TRANSFORMER_CONFIG,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(SD35_MEDIUM_DUAL_ATTENTION_BLOCKS)),
    "qk_norm": "rms_norm",
}

#: stabilityai/stable-diffusion-3.5-large, ``transformer/config.json``.
SD35_LARGE_TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 38,
    "attention_head_dim": 64,
    "num_attention_heads": 38,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "dual_attention_layers": [],
    "qk_norm": "rms_norm",
}

#: black-forest-labs/FLUX.1-dev, ``transformer/config.json``.
FLUX_DEV_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}

_DENOISERS: Mapping[str, tuple[type[torch.nn.Module] | str, dict[str, Any]]] = MappingProxyType(
    {
        "sd15": (UNet2DConditionModel, SD15_UNET_CONFIG),
        "sdxl": (UNet2DConditionModel, SDXL_UNET_CONFIG),
        "sd3-medium": (SD3Transformer2DModel, SD3_MEDIUM_TRANSFORMER_CONFIG),
        "sd35-medium": (SD3Transformer2DModel, SD35_MEDIUM_TRANSFORMER_CONFIG),
        "sd35-large": (SD3Transformer2DModel, SD35_LARGE_TRANSFORMER_CONFIG),
        "flux-dev": (FluxTransformer2DModel, FLUX_DEV_TRANSFORMER_CONFIG),
        **dits.full_size_configs(),  # denoiser class names: a diffusers without one still imports attnkit
    }
)

#: Names accepted by :func:`meta_denoiser`.
DENOISER_NAMES: tuple[str, ...] = tuple(_DENOISERS)


def meta_denoiser(name: str) -> torch.nn.Module:
    """The full-size denoiser of release ``name`` on the ``meta`` device (no weights).

    Use it to count, name and place attention sites of real models for free; it
    cannot run a forward pass. ``name`` is one of :data:`DENOISER_NAMES`.
    """
    try:
        model_class, config = _DENOISERS[name]
    except KeyError:
        raise AttnkitError(f"unknown denoiser {name!r}; known: {', '.join(DENOISER_NAMES)}") from None
    if isinstance(model_class, str):
        found = getattr(diffusers, model_class, None)
        if found is None:
            raise AttnkitError(f"{name!r} is a {model_class}, which diffusers {diffusers.__version__} does not have; "
                               "upgrade diffusers to build it.")
        model_class = found
    with torch.device("meta"):
        model = model_class(**copy.deepcopy(config))
    return model.eval()
