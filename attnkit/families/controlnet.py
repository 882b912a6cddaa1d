"""The diffusers ControlNet of SD1.x, SD2 and SDXL (`ControlNetModel`): a copy of its UNet's down and mid blocks,
with the same self-attention (`attn1`) and cross-attention (`attn2`) in every transformer block, run on the same
latent, timestep and text right before the UNet at every step. Its sites are reached through the pipeline that holds
it (`attnkit.sites(pipe, component="controlnet")`) or on the bare model. (In guess mode the pipeline gives the
ControlNet the conditional half of a CFG batch alone, which attnkit does not tell apart from an unguided batch.)"""

from __future__ import annotations

from . import Family, SitePattern
from .unet import RESTORE, block_strides, kind_of, latent_grid, streams

FAMILY = Family(
    name="controlnet",
    model="ControlNetModel",
    processors=("AttnProcessor2_0", "AttnProcessor"),
    sites=(SitePattern(r"down_blocks\.(\d+)\..+", "down", kind_of),
           SitePattern(r"mid_block\..+", "mid", kind_of)),
    stride=1,
    grid=latent_grid,
    streams=streams,
    block_stride=block_strides,
    multiscale=True,
    encoder="down",
    latent_argument="sample",
    replay=True,
    restore=RESTORE,
)
