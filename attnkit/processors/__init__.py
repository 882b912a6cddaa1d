"""Site processors: the generic one that runs a family's stock processors' own code (`dispatch`), and the UNet's
replay of its stock processors (`unet`); `stand_in` makes the one a site's family calls for."""

from __future__ import annotations

from ..families import Family, family_of
from ..sites import Site
from .base import AttentionCall, Control, ModuleCall, SiteProcessor, TokenLayout
from .dispatch import site_processor_class
from .unet import UNetSiteProcessor

__all__ = ["AttentionCall", "Control", "ModuleCall", "SiteProcessor", "TokenLayout", "stand_in",
           # earlier names: a processor family is the pipeline's family
           "Family", "family_of"]


def stand_in(site: Site, original: object) -> SiteProcessor:
    """The site processor that takes `original`'s place at `site`: the stock processor's own code around attnkit's
    controls, or on families whose processors attnkit replays (the UNet's), the replay."""
    if site.family.replay:
        return UNetSiteProcessor(site, original)
    return site_processor_class(type(original))(site, original)
