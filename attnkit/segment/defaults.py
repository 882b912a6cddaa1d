"""DiffSeg's published defaults, importable without torch (the command line's help shows them)."""

__all__ = ["DEFAULT_ANCHORS", "DEFAULT_THRESHOLDS", "DEFAULT_TIMESTEP"]

#: Noise level read (of 1000), as DiffSeg reads Stable Diffusion.
DEFAULT_TIMESTEP = 300
#: 16 x 16 anchor queries, three merging rounds at KL 1.1 (COCO-Stuff-27).
DEFAULT_ANCHORS = 16
DEFAULT_THRESHOLDS: tuple[float, ...] = (1.1, 1.1, 1.1)
