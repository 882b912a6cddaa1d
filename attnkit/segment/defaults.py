"""DiffSeg's published settings and attnkit's segmentation protocols, importable without torch (the command line's
help shows them).

The settings are those of DiffSeg's code (github google/diffseg at 77ea596): `benchmarks.ipynb` (COCO-Stuff-27:
KL threshold 1.1 in three rounds, no refinement) and the demo `diffseg.ipynb` (0.9 in three rounds, k-means
refinement), both with 16 x 16 anchors, reading Stable Diffusion once at timestep 300.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_ANCHORS", "DEFAULT_KMEANS_ITERATIONS", "DEFAULT_PROTOCOL", "DEFAULT_THRESHOLDS",
           "DEFAULT_TIMESTEP", "IMAGE_PROTOCOLS", "PROTOCOLS", "Protocol"]

#: Noise level read (of 1000), as DiffSeg reads Stable Diffusion.
DEFAULT_TIMESTEP = 300
#: 16 x 16 anchor queries, three merging rounds at KL 1.1 (the benchmark's COCO-Stuff-27 setting).
DEFAULT_ANCHORS = 16
DEFAULT_THRESHOLDS: tuple[float, ...] = (1.1, 1.1, 1.1)
#: k-means rounds at most (scikit-learn's KMeans default, which DiffSeg's refinement runs with).
DEFAULT_KMEANS_ITERATIONS = 300


@dataclass(frozen=True)
class Protocol:
    """How an image is read and its maps merged: `clean` reads an existing image's clean latent (the VAE posterior
    mean) with one denoiser forward at the timestep, else the image is noised by the pipeline's img2img variant
    (with a seed); `thresholds` and `refine` are the merging defaults; `description` says what it follows."""

    name: str
    thresholds: tuple[float, ...]
    refine: bool
    clean: bool
    description: str


#: The protocols by name; the first is the default.
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("diffseg", DEFAULT_THRESHOLDS, False, True,
             "DiffSeg's benchmark: KL 1.1 in three rounds, no refinement; an existing image is read clean"),
    Protocol("diffseg-notebook", (0.9, 0.9, 0.9), True, True,
             "DiffSeg's demo notebook: KL 0.9 in three rounds, k-means refinement; an existing image is read clean"),
    Protocol("img2img", DEFAULT_THRESHOLDS, True, False,
             "an existing image noised by the pipeline's img2img variant (seeded) to the timestep; KL 1.1, "
             "refinement (attnkit's earlier reading)"),
)}
DEFAULT_PROTOCOL = "diffseg"
#: Protocols that only read existing images (a generation is read at its own step).
IMAGE_PROTOCOLS = ("img2img",)
