"""Site processors: the UNet's replay of its stock processors, and the generic one that runs any described DiT's
own processors (`dispatch`); which stock processors each stands in for, and how a user gets them back."""

from __future__ import annotations

from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from ..families import DiT
from .base import AttentionCall, Control, SiteProcessor, TokenLayout
from .dispatch import DispatchSiteProcessor, site_processor_class
from .unet import UNetSiteProcessor

__all__ = ["AttentionCall", "Control", "SiteProcessor", "TokenLayout", "FAMILIES", "Family", "DiTFamily",
           "family_of"]


class Family:
    """The site processor of one architecture, the stock processors whose computation it replays exactly, and how
    a user gets those back on this architecture."""

    def __init__(self, processor: type[SiteProcessor], replaces: tuple[type, ...], restore: str):
        self.processor = processor
        self.replaces = replaces
        self.restore = restore

    def can_replace(self, processor: object) -> bool:
        return type(processor) in self.replaces

    def stand_in(self, site: object, original: object) -> SiteProcessor:
        """The site processor that takes `original`'s place at `site`."""
        return self.processor(site, original)

    @property
    def replaceable(self) -> str:
        return ", ".join(cls.__name__ for cls in self.replaces)

    def advice(self, refused: set[str], denoiser: str) -> str:
        """How to get processors attnkit can replay, for the refused processor class names."""
        if any(name.startswith("Fused") for name in refused):
            return ("these sites have fused q/k/v projections: call `pipe.unfuse_qkv_projections()` (or "
                    f"`{denoiser}.unfuse_qkv_projections()`) before attaching, and fuse again afterwards")
        return self.restore.format(denoiser=denoiser) + ", or unload the adapter that installed them (IP-Adapter: " \
            "`pipe.unload_ip_adapter()`), or select other sites"


FAMILIES: dict[str, Family] = {
    "unet": Family(UNetSiteProcessor, (AttnProcessor2_0, AttnProcessor),
                   "call `{denoiser}.set_attn_processor(AttnProcessor2_0())` or `{denoiser}.set_default_attn_processor()`"),
}


class DiTFamily(Family):
    """A DiT described in `attnkit.families`: the stock processors named there run unchanged, attnkit at their
    attention call (`processors.dispatch`)."""

    def __init__(self, dit: DiT):
        super().__init__(DispatchSiteProcessor, (), f"give those sites back their stock {dit.processors[0]} "
                         f"(`{{denoiser}}.set_attn_processor({dit.processors[0]}())` where the model has it, or "
                         "reload the model)")
        self.dit = dit

    def can_replace(self, processor: object) -> bool:
        return type(processor).__name__ in self.dit.processors

    def stand_in(self, site: object, original: object) -> SiteProcessor:
        return site_processor_class(type(original))(site, original, self.dit)

    @property
    def replaceable(self) -> str:
        return ", ".join(self.dit.processors)


def family_of(architecture: object) -> Family:
    """The processor family of an `attnkit.sites.Architecture`."""
    dit = getattr(architecture, "dit", None)
    return DiTFamily(dit) if dit is not None else FAMILIES[architecture.name]
