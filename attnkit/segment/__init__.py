"""Segmentation from self-attention (DiffSeg), for generated and existing images, segments named by prompt words.

    with attnkit.segment.trace(pipe, prompt) as tc:
        image = pipe(prompt).images[0]
    tc.segmentation(image).save("out/")
    attnkit.segment.segment_image(pipe, photo, prompt="a cat on a sofa").save("out/")

Built on the core: its `MapRecorder` (`attnkit.recorders`) with this package's `PerQuery` reduction keeps every
query's self-attention map in one bounded buffer; `diffseg` merges them into segments; the core's word maps and
prompt-token labelling name them. Names load on first use, so the command line starts without torch.
"""

from .. import _lazy

__all__ = ["BACKGROUND", "DEFAULT_ANCHORS", "DEFAULT_KMEANS_ITERATIONS", "DEFAULT_PROTOCOL", "DEFAULT_THRESHOLDS",
           "DEFAULT_TIMESTEP", "Options", "PROTOCOLS", "PerQuery", "Protocol", "Segment", "SegmentTrace",
           "Segmentation", "merge", "segment_image", "segment_maps", "trace"]

_lazy.make_lazy(__name__, {
    ".diffseg": ("merge", "segment_maps"),
    ".result": ("BACKGROUND", "Segment", "Segmentation"),
    ".defaults": ("DEFAULT_ANCHORS", "DEFAULT_KMEANS_ITERATIONS", "DEFAULT_PROTOCOL", "DEFAULT_THRESHOLDS",
                  "DEFAULT_TIMESTEP", "PROTOCOLS", "Protocol"),
    ".perquery": ("PerQuery",),
    ".trace": ("Options", "SegmentTrace", "segment_image", "trace"),
}, submodules=("defaults", "diffseg", "result"))
