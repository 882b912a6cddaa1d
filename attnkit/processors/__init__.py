"""Site processors per architecture, and which stock diffusers processors each one can stand in for."""

from __future__ import annotations

from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from .base import AttentionCall, Control, SiteProcessor, TokenLayout
from .flux import FluxSiteProcessor
from .joint import JointSiteProcessor
from .unet import UNetSiteProcessor

__all__ = ["AttentionCall", "Control", "SiteProcessor", "TokenLayout", "FAMILIES", "Family"]


class Family:
    """The site processor of one architecture and the stock processors whose computation it replays."""

    def __init__(self, processor: type[SiteProcessor], replaces: tuple[type, ...]):
        self.processor = processor
        self.replaces = replaces

    def can_replace(self, processor: object) -> bool:
        return type(processor) in self.replaces


FAMILIES: dict[str, Family] = {
    "unet": Family(UNetSiteProcessor, (AttnProcessor2_0, AttnProcessor)),
    "sd3": Family(JointSiteProcessor, (JointAttnProcessor2_0,)),
    "flux": Family(FluxSiteProcessor, (FluxAttnProcessor,)),
}
