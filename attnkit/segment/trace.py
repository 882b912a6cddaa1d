"""`attnkit.segment`: segments of a generated or existing image from the denoiser's own self-attention (DiffSeg),
named by the words of the prompt.

    with attnkit.segment.trace(pipe, prompt) as tc:        # while generating
        image = pipe(prompt).images[0]
    result = tc.segmentation(image)                        # result.step: the step that was read
    result = attnkit.segment.segment_image(pipe, photo, prompt="a cat on a sofa")   # an existing image
    result.save("out/")    # labels.png, overlay.png, segment-<id>.png, segments.json

A `protocol` (`attnkit.segment.PROTOCOLS`) says how an image is read and its maps merged. "diffseg" (default) is
DiffSeg's published benchmark (github google/diffseg, `benchmarks.ipynb`): an existing image's clean latent (the VAE
posterior mean, no noise) in one denoiser forward at `timestep` 300 (of 1000), KL threshold 1.1 in three rounds, no
k-means refinement; "diffseg-notebook" is its demo notebook (0.9, refinement); "img2img" noises an existing image with
the pipeline's img2img variant (seeded) to the step an img2img run at strength `timestep / 1000` starts at, with
refinement (attnkit's earlier reading). A generation is read at the denoising step whose timestep is nearest
`timestep` (`Segmentation.step` says which), so that runs of any length, one step included, can be segmented.
Word labels come from the image->text maps recorded alongside (the core's `MapRecorder` and prompt-token labelling):
a segment is named by the word whose map area (the map cut at `word_threshold` of its range) covers most of it, when
that is at least half of it, else "background".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import AttnkitError
from ..families import family_of
from ..pipeline import clean_latent, image_pipeline, single_forward, size_multiple, takes_size
from ..recorders import RELATIONS, MapRecorder
from ..session import Session
from ..sites import Site, SiteList, sites
from ..state import State
from ..tokens import WORD_THRESHOLD, prompt_tokens, word_area
from .defaults import (
    DEFAULT_ANCHORS,
    DEFAULT_KMEANS_ITERATIONS,
    DEFAULT_PROTOCOL,
    DEFAULT_TIMESTEP,
    IMAGE_PROTOCOLS,
    PROTOCOLS,
)
from .diffseg import segment_maps
from .perquery import PerQuery
from .result import BACKGROUND, Segmentation, describe

__all__ = ["Options", "SegmentTrace", "nearest_step", "segment_image", "trace"]

#: Denoising steps of the schedule the img2img protocol noises an existing image on (only one of them runs).
IMAGE_STEPS = 50
_LABEL_COVER = 0.5
_FUNCTION_WORDS = frozenset("a an the and or of with on in at to from by for is are its this that".split())


class SegmentTrace:
    """Per-query self-attention maps (and, with a prompt, word maps) recorded over one generation."""

    def __init__(self, pipe: Any, chosen: SiteList, prompt: str | None, when: Callable[[State], bool],
                 options: Options, word_steps: Iterable[int] | None = None, reads_step: bool = True) -> None:
        self.pipe = pipe
        self.recorder = MapRecorder(chosen, relation="image->image", steps=self._noting(when),
                                    reduction=PerQuery(options.max_side))
        self.latent: tuple[int, int] | None = None
        self.timestep: float | None = None
        self.step: int | None = None
        self.num_steps: int | None = None
        self.prompt = prompt
        placements = [(self.recorder, chosen)]
        self.words: MapRecorder | None = None
        if prompt:
            word_sites = _word_sites(pipe)
            self.words = MapRecorder(word_sites, relation="image->text", steps=word_steps)
            placements.append((self.words, word_sites))
        self.session = Session(pipe, placements)
        self.options = options
        self.reads_step = reads_step  # a generation's step; an existing image's one forward is none
        self._failed = False

    def _noting(self, when: Callable[[State], bool]) -> Callable[[State], bool]:
        """`when`, noting the latent size, timestep and step of the forward it records (the state resets after the
        run)."""

        def recorded(state: State) -> bool:
            if when(state):
                self.latent, self.timestep = state.latent, state.timestep
                self.step, self.num_steps = state.step, state.num_steps
                return True
            return False

        return recorded

    def __enter__(self) -> SegmentTrace:
        self.session.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.session.__exit__(exc_type, *exc_info)
        self._failed = exc_type is not None

    @property
    def maps(self) -> torch.Tensor:
        """(batch items, anchor queries, rows, cols): each query's mean self-attention map, summing to 1."""
        recorder = self._checked(self.recorder)
        return recorder.total / recorder.count

    def _checked(self, recorder: MapRecorder) -> MapRecorder:
        if self._failed:
            raise AttnkitError("the traced generation raised an exception, so its attention maps are incomplete.")
        recorder.check()
        return recorder

    def segmentation(self, image: Image.Image | None = None, item: int = 0) -> Segmentation:
        """Segments of batch item `item` at the generated image's size; `image` (optional) is kept for overlays."""
        maps = self.maps
        if not 0 <= item < maps.shape[0]:
            raise AttnkitError(f"item={item} is out of range: this trace recorded {maps.shape[0]} batch item(s).")
        latent = self.latent
        factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        size = (latent[0] * factor, latent[1] * factor)
        grid = self.recorder.reduction.resolution(self.recorder, latent)
        options = self.options
        labels = segment_maps(maps[item].reshape(-1, *grid).cpu(), size, options.thresholds, options.anchors,
                              options.refine, options.kmeans_iterations)
        names = self._names(labels, item)
        step, steps = (self.step, self.num_steps) if self.reads_step else (None, None)
        return Segmentation(labels, describe(labels, names), self.timestep, image, step, steps)

    def _names(self, labels: np.ndarray, item: int) -> list[str | None]:
        count = int(labels.max()) + 1
        if self.words is None:
            return [None] * count
        words = self._checked(self.words)  # total: (items, text tokens, rows, cols)
        tokens = prompt_tokens(self.pipe, self.prompt, words.total.shape[1])
        chosen = self.options.words
        if chosen is None:
            chosen = [w for w in tokens.unique_words if w not in _FUNCTION_WORDS]
        areas = {}
        for word in chosen:
            heat = (words.total[item, tokens.positions(word)].sum(0) / words.count).float().cpu()[None, None]
            heat = F.interpolate(heat, size=labels.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
            areas[word] = word_area(heat, self.options.word_threshold)
        names: list[str | None] = []
        for segment in range(count):
            inside = labels == segment
            cover = {word: float(area[inside].mean()) for word, area in areas.items()}
            best = max(cover, key=cover.get, default=None)
            names.append(best if best is not None and cover[best] >= _LABEL_COVER else BACKGROUND)
        return names


def nearest_step(timesteps: Sequence[float], timestep: float) -> int | None:
    """The step of a run with `timesteps` whose timestep is nearest `timestep` (the first on a tie); None outside a
    run."""
    if not timesteps:
        return None
    return min(range(len(timesteps)), key=lambda i: abs(timesteps[i] - timestep))


def _check_img2img_timestep(num_steps: int, timestep: float) -> None:
    """An error unless an img2img run at strength timestep / 1000 over `num_steps` steps runs a step."""
    if int(num_steps * timestep / 1000) == 0:
        raise AttnkitError(f"timestep={timestep} is below the first noise level of a {num_steps}-step img2img run: "
                           f"give at least {int(np.ceil(1000 / num_steps))}.")


@dataclass(frozen=True)
class Options:
    """How to segment. `protocol`: how an image is read and the merging defaults (`PROTOCOLS`: "diffseg",
    "diffseg-notebook", "img2img"); `timestep`: noise level read (0-1000); `resolutions`: token-grid sizes (longer
    side) of the sites to use (default all); `thresholds`: DiffSeg's KL threshold per merging round and `refine`:
    k-means refinement (default: the protocol's); `kmeans_iterations`: the refinement's rounds at most (default 300,
    only with refinement); `anchors`: anchor grid side; `max_side`: longest side of the grid maps are kept at
    (memory: (rows * cols)^2 floats per image); `words`: the prompt words that may name segments (default every word
    but articles and the like); `word_threshold`: where a word's map is cut, as a fraction of its range."""

    protocol: str = DEFAULT_PROTOCOL
    timestep: float = DEFAULT_TIMESTEP
    resolutions: tuple[int, ...] | None = None
    thresholds: tuple[float, ...] | None = None
    anchors: int = DEFAULT_ANCHORS
    refine: bool | None = None
    kmeans_iterations: int | None = None
    max_side: int = 64
    words: tuple[str, ...] | None = None
    word_threshold: float = WORD_THRESHOLD

    @classmethod
    def of(cls, given: dict[str, Any]) -> Options:
        """Options from keyword arguments, checked, with the protocol's defaults filled in; an unknown name is an
        error listing the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise AttnkitError(f"unknown segmentation option(s) {unknown}: the options are {', '.join(known)}.")
        options = cls(**given)
        if options.protocol not in PROTOCOLS:
            raise AttnkitError(f"unknown protocol {options.protocol!r}: choose one of "
                               + "; ".join(f"{p.name!r} ({p.description})" for p in PROTOCOLS.values()) + ".")
        protocol = PROTOCOLS[options.protocol]
        refine = protocol.refine if options.refine is None else bool(options.refine)
        if options.kmeans_iterations is not None and not refine:
            raise AttnkitError(f"kmeans_iterations sets the rounds of DiffSeg's k-means refinement, which protocol "
                               f"{protocol.name!r} leaves out: add refine=True, or use protocol='diffseg-notebook'.")
        thresholds = protocol.thresholds if options.thresholds is None else options.thresholds
        options = replace(options, thresholds=tuple(float(t) for t in thresholds), refine=refine,
                          kmeans_iterations=options.kmeans_iterations or DEFAULT_KMEANS_ITERATIONS,
                          words=None if options.words is None else tuple(w.lower() for w in options.words),
                          resolutions=None if options.resolutions is None else tuple(options.resolutions))
        if not 0 < options.timestep <= 1000:
            raise AttnkitError(f"timestep={options.timestep}: give a noise level above 0 and at most 1000 (DiffSeg: "
                               f"{DEFAULT_TIMESTEP}).")
        if not 0 < options.word_threshold < 1:
            raise AttnkitError(f"word_threshold={options.word_threshold}: give a fraction of the map's range between "
                               "0 and 1, e.g. 0.4.")
        if options.anchors < 1:
            raise AttnkitError(f"anchors={options.anchors}: give the side of the anchor grid, at least 1.")
        if options.kmeans_iterations < 1:
            raise AttnkitError(f"kmeans_iterations={options.kmeans_iterations}: give at least 1 (DiffSeg: "
                               f"{DEFAULT_KMEANS_ITERATIONS}).")
        return options


def trace(pipe: Any, prompt: str | None = None, *, height: int | None = None, width: int | None = None,
          sites_: Iterable[Site] | None = None, **options: Any) -> SegmentTrace:
    """Record what segmenting the image generated inside the `with` block needs: the self-attention of the denoising
    step whose timestep is nearest the `timestep` option (`Segmentation.step` says which).

    `prompt`: the generation's prompt, to name segments by its words. Sites: every self-attention site (UNet self,
    SD3 joint and image-only, Flux joint and single), those of `resolutions` (needs `height` and `width`), or
    `sites_`. `options`: the fields of `Options` (protocol "diffseg" or "diffseg-notebook", timestep, thresholds,
    anchors, ...).
    """
    chosen = Options.of(options)
    if chosen.protocol in IMAGE_PROTOCOLS:
        raise AttnkitError(f"protocol {chosen.protocol!r} reads an existing image (`segment_image`); a generation is "
                           "read at its own step nearest `timestep`: choose "
                           + " or ".join(repr(p) for p in PROTOCOLS if p not in IMAGE_PROTOCOLS) + ".")
    return SegmentTrace(pipe, _self_sites(pipe, chosen.resolutions, height, width, sites_), prompt,
                        lambda state: state.step == nearest_step(state.timesteps, chosen.timestep), chosen)


def _word_sites(pipe: Any) -> SiteList:
    """The sites whose image->text maps name the segments: every one that has the relation."""
    kinds = RELATIONS["image->text"][2]
    return SiteList(s for s in sites(pipe) if s.kind in kinds)


def _self_sites(pipe: Any, resolutions: Iterable[int] | None, height: int | None, width: int | None,
                given: Iterable[Site] | None) -> SiteList:
    """The image->image sites to record: given, or all of them, or those of the chosen resolutions."""
    if given is not None:
        return SiteList(given)
    kinds = RELATIONS["image->image"][2]
    sized = height is not None or width is not None
    found = SiteList(s for s in (sites(pipe, height=height, width=width) if sized else sites(pipe)) if s.kind in kinds)
    if not found:
        raise AttnkitError(f"{type(pipe).__name__}'s denoiser has no self-attention sites (kinds "
                           f"{', '.join(sorted(kinds))}), so there is nothing to segment with.")
    if resolutions is None:
        return found
    if not sized:
        raise AttnkitError("`resolutions` are token-grid sizes, which depend on the image size: give `height` and "
                           "`width` too.")
    wanted = sorted({int(r) for r in resolutions})
    available = sorted({max(s.resolution) for s in found})
    missing = [r for r in wanted if r not in available]
    if missing:
        raise AttnkitError(f"resolutions {missing} are not among this model's self-attention grids at "
                           f"{height}x{width}: choose from {available}.")
    return found.select(where=lambda s: max(s.resolution) in wanted)


def segment_image(pipe: Any, image: Image.Image, prompt: str = "", *, seed: int | None = None,
                  call: dict[str, Any] | None = None, **options: Any) -> Segmentation:
    """Segments of an existing `image` with one denoiser forward, conditioned on `prompt` (empty: no word labels) and
    unguided. Protocol "diffseg" (default) and "diffseg-notebook": the clean latent (the VAE posterior mean) at the
    `timestep` option; "img2img": the image noised by the pipeline's img2img variant with `seed` (default 0). `call`:
    further keyword arguments of the pipeline (e.g. `max_sequence_length`); `options`: the fields of `Options`."""
    chosen = Options.of(options)
    if not isinstance(image, Image.Image):
        raise AttnkitError(f"image must be a PIL image, got {type(image).__name__}; open files with "
                           "`PIL.Image.open(path)`.")
    multiple = size_multiple(pipe)
    if image.width % multiple or image.height % multiple:
        raise AttnkitError(f"the image is {image.width}x{image.height} pixels (width x height); "
                           f"{type(pipe).__name__} needs sides that are multiples of {multiple}: resize or crop it, "
                           f"e.g. to {max(multiple, image.width // multiple * multiple)}x"
                           f"{max(multiple, image.height // multiple * multiple)}.")
    image = image.convert("RGB")
    if PROTOCOLS[chosen.protocol].clean:
        if seed is not None:
            raise AttnkitError(f"seed= draws the noise of protocol 'img2img'; protocol {chosen.protocol!r} reads the "
                               "clean latent, without noise: leave seed out, or use protocol='img2img'.")
        segmenter = _image_segmenter(pipe, image, prompt, chosen)
        with segmenter, torch.inference_mode():
            single_forward(pipe, clean_latent(pipe, image), prompt, timestep=chosen.timestep, call=call)
        return segmenter.segmentation(image)
    _check_img2img_timestep(IMAGE_STEPS, chosen.timestep)
    sibling = image_pipeline(pipe, inpaint=False)
    segmenter = _image_segmenter(sibling, image, prompt, chosen)

    def stop_after_first(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        pipeline._interrupt = True  # the loop skips every later step; only the first forward runs
        return tensors

    unguided = {"guidance_scale": 1.0} if family_of(pipe).guidance == "cfg" else {}  # else an embedding: left as is
    sized = {"height": image.height, "width": image.width} if takes_size(sibling) else {}
    with segmenter, torch.inference_mode():
        sibling(prompt=prompt, image=image, strength=chosen.timestep / 1000, num_inference_steps=IMAGE_STEPS,
                generator=torch.Generator().manual_seed(0 if seed is None else seed), output_type="latent",
                callback_on_step_end=stop_after_first, **{**unguided, **sized, **(call or {})})
    return segmenter.segmentation(image)


def _image_segmenter(pipe: Any, image: Image.Image, prompt: str, options: Options) -> SegmentTrace:
    """A trace of the one forward an existing image gets (its first): not a step of a generation."""
    return SegmentTrace(pipe, _self_sites(pipe, options.resolutions, image.height, image.width, None),
                        prompt or None, lambda state: state.step == 0, options, word_steps=[0], reads_step=False)
