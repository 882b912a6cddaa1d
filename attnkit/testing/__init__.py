"""Offline stand-ins for real diffusers pipelines, for attnkit's tests and yours.

Attention tooling has to be tested against the genuine diffusers classes and call
paths, but the real checkpoints are gigabytes behind a network. This module gives:

* tiny pipelines (``tiny_*_pipeline``): the stock pipeline classes of SD1.5, SDXL,
  SD3, SD3.5 and FLUX.1 with random weights small enough that a 2-step 64x64
  generation takes well under a second on one CPU thread;
* :func:`sd15_layout_pipeline`: SD1.5's UNet layout with small channels (and, on request, SD1.5's
  VAE factor and size), for checks of published methods that read SD1.x's exact attention layout;
* :func:`random_sd15_pipeline`: the full-size SD1.5 architecture, random weights,
  for realistic shapes and timings; :func:`random_full_size_pipeline`: the full-size SDXL UNet,
  SD3-medium or FLUX.1-dev transformer in its pipeline, on any device and dtype, for GPU benchmarks;
* :func:`meta_denoiser`: full-size denoisers of the releases on the ``meta`` device,
  to count and name attention sites of the real models for free;
* :func:`build_pipeline` / :data:`PIPELINE_NAMES`: the pipelines by short name.

Everything is built in memory (tokenizers included), deterministic for a given
``seed``, float32 on CPU, and in ``eval()`` mode. Every word of
:data:`VOCABULARY_WORDS` is a single token in every tokenizer.
"""

from .configs import (
    DENOISER_NAMES,
    FLUX_DEV_TRANSFORMER_CONFIG,
    SD3_MEDIUM_TRANSFORMER_CONFIG,
    SD15_SCHEDULER_CONFIG,
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    SD35_LARGE_TRANSFORMER_CONFIG,
    SD35_MEDIUM_TRANSFORMER_CONFIG,
    SDXL_UNET_CONFIG,
    meta_denoiser,
)
from .pipelines import (
    METHODS_DDIM_CONFIG,
    PIPELINE_NAMES,
    TINY_IMAGE_SIZE,
    TINY_VAE_SCALE_FACTOR,
    FULL_SIZE_NAMES,
    build_pipeline,
    random_full_size_pipeline,
    random_sd15_pipeline,
    sd15_layout_pipeline,
    tiny_controlnet,
    tiny_flux_pipeline,
    tiny_sd3_pipeline,
    tiny_sd15_pipeline,
    tiny_sd35_pipeline,
    tiny_sdxl_pipeline,
)
from .tokenizers import VOCABULARY_WORDS, tiny_clip_tokenizer, tiny_t5_tokenizer

__all__ = [
    "DENOISER_NAMES",
    "METHODS_DDIM_CONFIG",
    "FULL_SIZE_NAMES",
    "FLUX_DEV_TRANSFORMER_CONFIG",
    "PIPELINE_NAMES",
    "SD3_MEDIUM_TRANSFORMER_CONFIG",
    "SD15_SCHEDULER_CONFIG",
    "SD15_TEXT_ENCODER_CONFIG",
    "SD15_UNET_CONFIG",
    "SD15_VAE_CONFIG",
    "SD35_LARGE_TRANSFORMER_CONFIG",
    "SD35_MEDIUM_TRANSFORMER_CONFIG",
    "SDXL_UNET_CONFIG",
    "TINY_IMAGE_SIZE",
    "TINY_VAE_SCALE_FACTOR",
    "VOCABULARY_WORDS",
    "build_pipeline",
    "meta_denoiser",
    "random_full_size_pipeline",
    "random_sd15_pipeline",
    "sd15_layout_pipeline",
    "tiny_clip_tokenizer",
    "tiny_controlnet",
    "tiny_flux_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd15_pipeline",
    "tiny_sd35_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_t5_tokenizer",
]
