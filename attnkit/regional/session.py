"""`attnkit.regional(pipe, spec)`: regional prompting on a stock SD1.x / SD2 / SDXL / SD3 / SD3.5 / Flux pipeline
(or another image DiT) in one `with` block.

```python
with attnkit.regional(pipe, "spec.yaml") as regions:
    image = pipe(**regions(seed=0, num_inference_steps=28)).images[0]
```

Entry validates the spec against the pipeline, encodes every region with the pipeline's own `encode_prompt` and
installs the regional control through an `attnkit.Session`; exit, also after an error, gives the pipeline back its
processors. `regions(...)` returns the pipeline's keyword arguments: the regional embeddings, the size, a generator.
The img2img and inpaint pipelines of these families work the same way (`AutoPipelineForImage2Image.from_pipe(pipe)`,
`regions(image=..., strength=0.6)`): the size then comes from the init image.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import AttnkitError
from ..families import denoiser_of, dits, family_of
from ..pipeline import call_parameters, output_size, takes_size
from ..session import Session
from ..sites import SiteList, sites
from ..state import StepRange, step_range
from ..tokens import PromptSegment
from .control import RegionalControl, Schedule
from .couple import CoupleControl
from .encode import Encoded, encode, regional_text, truncation_problems
from .lora import Adapters, RegionLoRA, loaded, text_adapters
from .mask import Rules, base_bias
from .spec import BASE, METHODS, RegionSpec, load_spec

__all__ = ["Regional", "RegionalOptions", "regional", "supports"]

_OWN_ARGUMENTS = ("prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3",
                  "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds")


@dataclass(frozen=True)
class RegionalOptions:
    """How the regional mask is applied. The defaults are one joint-attention mask over [image | region texts]:
    image tokens see only their region's text, region texts see only their region's image tokens and not each
    other's text; image tokens still see the whole image unless `image_isolation` is on (within
    `image_isolation_steps`): then attention from an image token to other regions' image tokens is divided by
    e^`image_isolation_strength` (inf, the default: none at all; a few units: DenseDiffusion's soft modulation).
    `region_weight` multiplies the attention an image token pays its own region's text (against the image and the
    base prompt), as the base prompt's `weight` does for the base text; on a UNet without a base prompt the region's
    text is all a pixel sees, so it changes nothing there.

    `steps` / `blocks`: the mask applies in steps [start, end) and in these blocks (e.g. "joint", "joint.3",
    "single"); elsewhere attention is plain joint attention over all tokens. `pooled`: the pooled embedding is the
    mean over regions or the base prompt's. `negatives`: "regional" gives each region's text slot its own negative
    under the same mask, "global" the global negative unmasked, "auto" regional when any region has a negative.
    `kernel`: "split" computes only the allowed blocks with fused kernels; "dense" runs the kernel with the dense
    mask (the reference). `max_sequence_length`: T5 tokens per region (the pipeline's default when None).

    On UNets (SD1.x, SD2, SDXL) the regions' texts meet the image in cross-attention, and `method` chooses how:
    "mask" (one pass, as DenseDiffusion: each image token attends only to the tokens of its region and the base
    prompt; `image_isolation` also restricts self-attention to the token's own region) or "couple" (attention
    couple, the regional-prompter "attention" mode: cross-attention once per prompt, blended by the regions' soft
    masks normalised to sum 1 at every pixel, the base prompt taking part with its weight). None: the spec's
    `method`, else "mask". Transformers (SD3, SD3.5, Flux) have the joint-attention mask only.
    """

    image_to_text: bool = True
    text_to_image: bool = True
    text_isolation: bool = True
    image_isolation: bool = False
    image_isolation_strength: float = math.inf
    region_weight: float = 1.0
    steps: StepRange = (0, None)
    image_isolation_steps: StepRange = (0, None)
    blocks: str | tuple[str, ...] | None = None
    pooled: Literal["mean", "base"] = "mean"
    negatives: Literal["auto", "regional", "global"] = "auto"
    kernel: Literal["split", "dense"] = "split"
    max_sequence_length: int | None = None
    method: Literal["mask", "couple"] | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "image_isolation_steps"):
            object.__setattr__(self, name, step_range(getattr(self, name), name))
        for name, choices in (("pooled", ("mean", "base")), ("negatives", ("auto", "regional", "global")),
                              ("kernel", ("split", "dense")), ("method", (None, *METHODS))):
            if getattr(self, name) not in choices:
                raise AttnkitError(f"{name}={getattr(self, name)!r}: choose one of "
                                   f"{', '.join(c for c in choices if c is not None)}.")
        if isinstance(self.blocks, list):
            object.__setattr__(self, "blocks", tuple(self.blocks))
        weight = self.region_weight
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise AttnkitError(f"region_weight must be a finite number > 0 (1: as plain attention), got {weight!r}.")
        strength = self.image_isolation_strength
        if not isinstance(strength, (int, float)) or not strength > 0:
            raise AttnkitError(f"image_isolation_strength must be a logit penalty > 0 (inf: full isolation), got "
                               f"{strength!r}.")
        msl = self.max_sequence_length
        if msl is not None and (not isinstance(msl, int) or msl < 0):
            raise AttnkitError(f"max_sequence_length must be a number of T5 tokens >= 0, got {msl!r}.")


def _regional_families() -> list[str]:
    return [family.name for family in dits() if supports(family)]


def supports(pipe: Any) -> bool:
    """Whether regional prompting works on this pipeline (or pipeline family): the image families whose text input
    is described, the UNet's (SD1.x, SD2, SDXL) and the transformers' (SD3, SD3.5, Flux, ...)."""
    return regional_text(pipe) is not None


class Regional:
    """One regional-prompting session on a pipeline: a context manager, and a callable giving pipeline kwargs."""

    def __init__(self, pipe: Any, spec: RegionSpec | dict | str | Path, options: RegionalOptions):
        self.pipe = pipe
        self.spec = load_spec(spec)
        self.options = options
        self.family = family_of(pipe)
        self.text = regional_text(pipe)
        if self.text is None:
            raise AttnkitError(
                f"regional prompting runs on SD1.x, SD2, SDXL and the transformer families "
                f"{', '.join(_regional_families())}; {type(pipe).__name__} is a {self.family.name} model, where "
                "attnkit does not offer it (the family table of the documentation says why).")
        if self.text.max_sequence_length is None and options.max_sequence_length is not None:
            fixed = ", ".join(f"{name} keeps {keeps} tokens" for name, tokenizer, keeps in self.text.limits(pipe, None)
                              if tokenizer is not None)
            raise AttnkitError(f"max_sequence_length sets text tokens per region; this {type(pipe).__name__} encodes "
                               f"text at fixed lengths ({fixed}). Leave it out.")
        self.max_sequence_length = (self.text.max_sequence_length if options.max_sequence_length is None
                                    else options.max_sequence_length)
        if options.method is not None and self.spec.method is not None and options.method != self.spec.method:
            raise AttnkitError(f"the spec says method {self.spec.method!r} and the options say {options.method!r}; "
                               "give the method in one place.")
        self.method = options.method or self.spec.method or "mask"
        if self.method == "couple" and not self.family.multiscale:
            raise AttnkitError(f"method 'couple' blends UNet cross-attention over the latent grid's levels; "
                               f"{type(pipe).__name__} attends over one token grid, where regions are applied by "
                               "method 'mask'.")
        self.encoded: Encoded | None = None
        self.control: RegionalControl | CoupleControl | None = None
        self.size: tuple[int, int] | None = None  # (height, width) of the latest `regions(...)`
        self._session: Session | None = None
        self._stack: ExitStack | None = None

    def __enter__(self) -> Regional:
        if self._session is not None:
            raise AttnkitError("this regional session is already active; make a new one with `attnkit.regional`.")
        if self.spec.pending:
            raise AttnkitError(self.spec.pending_error())
        problems = truncation_problems(self.pipe, self.spec, self.max_sequence_length)
        if problems:
            raise AttnkitError("; ".join(problems) + ". Shorten these prompts"
                               + (" or raise max_sequence_length." if any("T5" in p for p in problems) else "."))
        # Flux samples without a negative unless one is given: then true CFG (`true_cfg_scale`) needs its embeddings.
        given = self.spec.negatives_given
        if given and self.text.negative == "never":
            raise AttnkitError(f"{type(self.pipe).__name__} takes no negative prompt (its guidance is distilled into "
                               "the model): remove `negative` from the spec and its regions.")
        with_negatives = self.text.negative == "always" or given
        with ExitStack() as stack:
            adapters = Adapters.of(self.spec) if self.spec.adapters else None
            if adapters is not None:
                stack.enter_context(loaded(self.pipe, self.spec, adapters))
            self.encoded = encode(self.pipe, self.spec, max_sequence_length=self.max_sequence_length,
                                  pooled=self.options.pooled, negatives=self.options.negatives,
                                  with_negatives=with_negatives,
                                  adapters=None if adapters is None else text_adapters(
                                      self.pipe, adapters, f"attnkit.regional-lora.{id(self):x}"))
            self._attach(adapters)
            self._stack = stack.pop_all()
        return self

    def _attach(self, adapters: Adapters | None) -> None:
        """Install the controls of the spec (and, where it names LoRA adapters, the control that weights them)."""
        o = self.options
        weight = self.spec.base.weight if self.spec.base is not None else 1.0
        rules = Rules(image_to_text=o.image_to_text, text_to_image=o.text_to_image, text_isolation=o.text_isolation,
                      image_isolation=o.image_isolation, base_bias=base_bias(weight),
                      image_bias=-float(o.image_isolation_strength), text_bias=math.log(o.region_weight))
        schedule = Schedule(rules, o.steps, o.image_isolation_steps)
        found = self.sites()
        if self.method == "couple":
            self.control = CoupleControl(self.spec, self.encoded, schedule)
            placements = [(self.control, found.select(kind="cross"))]
            if o.image_isolation:  # the blend acts in cross-attention; isolation is the mask on self-attention
                isolation = RegionalControl(self.spec, self.encoded, schedule, o.kernel)
                placements.append((isolation, found.select(kind="self")))
        else:
            self.control = RegionalControl(self.spec, self.encoded, schedule, o.kernel)
            placements = [(self.control, found)]
        if adapters is not None:
            placements.append((RegionLoRA(self.spec, self.encoded, adapters, self.family, denoiser_of(self.pipe),
                                          self.method), []))
        session = Session(self.pipe, placements)
        session.__enter__()
        self._session = session

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._session is not None:
                self._session.__exit__(*exc_info)
                self._session = None
        finally:
            if self._stack is not None:
                self._stack.close()
                self._stack = None

    @property
    def prompt_segments(self) -> tuple[PromptSegment, ...]:
        """The denoiser's text as the prompts' segments, in order: regions by index, the base prompt as "base" (what
        `attnkit.maps.trace(pipe, regions)` labels words by)."""
        if self.encoded is None:
            raise AttnkitError("the regional prompt is encoded when `with attnkit.regional(pipe, spec) as regions:` "
                               "begins; read its segments inside the block.")
        base = {BASE: ("base", self.spec.base.prompt)} if self.spec.base is not None else {}
        named = {i: (i, region.prompt) for i, region in enumerate(self.spec.regions)} | base
        return tuple(PromptSegment(*named[owner], tokens) for owner, tokens in self.encoded.cond)

    def sites(self) -> SiteList:
        """Where the mask goes: joint attention (and Flux single blocks) or UNet cross-attention, and the caption
        refiners of Z-Image and Lumina 2 (text isolation); image-only self-attention (MMDiT-X `attn2`, UNet `attn1`)
        only when image isolation is on; restricted to `options.blocks`."""
        kinds = ["joint", "single", "cross", "text"] + (["self2", "self"] if self.options.image_isolation else [])
        found = sites(self.pipe)
        kinds = [k for k in kinds if any(s.kind == k for s in found)]
        return found.select(kind=kinds, block=self.options.blocks)

    def grid(self, height: int, width: int, *, what: str = "image size") -> tuple[int, int]:
        """The image token grid (rows, cols) at `height` x `width` pixels; an error if tokens would not tile it."""
        # a UNet's regions are laid on the latent grid and averaged down level by level; a transformer's on its tokens
        pixels = self.family.pixels_per_cell(self.pipe)
        if height % pixels or width % pixels or height <= 0 or width <= 0:
            raise AttnkitError(
                f"{what} {height}x{width} is not divisible by the token grid: each image token spans {pixels}x"
                f"{pixels} pixels in this pipeline. Use e.g. {max(pixels, height - height % pixels)}x"
                f"{max(pixels, width - width % pixels)}."
            )
        return height // pixels, width // pixels

    def __call__(self, seed: int | None = None, **kwargs: Any) -> dict[str, Any]:
        """Keyword arguments for `pipe(...)`: the regional embeddings, `height`/`width` (checked against the spec's
        coverage on the token grid; an img2img or inpaint `image` sets them), a CPU generator seeded with `seed`, and
        everything else passed through."""
        if self.encoded is None or self._session is None:
            raise AttnkitError("regions(...) works inside `with attnkit.regional(pipe, spec) as regions:` only.")
        clashing = sorted(set(kwargs) & (set(_OWN_ARGUMENTS) | set(self.encoded.arguments) | set(self.text.arguments)))
        if clashing:
            raise AttnkitError(f"{clashing} come from the region spec; leave them out of regions(...).")
        if seed is not None and "generator" in kwargs:
            raise AttnkitError("give either `seed` or `generator`, not both.")
        if kwargs.get("padding_mask_crop") is not None:
            raise AttnkitError("padding_mask_crop generates only a crop around the mask, so the regions (fractions of "
                               "the whole image) would land elsewhere; leave it out.")
        self._check_true_cfg(kwargs)
        height, width = output_size(self.pipe, kwargs.pop("height", None), kwargs.pop("width", None),
                                    kwargs.get("image"))
        grid = self.grid(height, width, what="init image" if kwargs.get("image") is not None else "image size")
        self.size = (height, width)
        if seed is not None:
            kwargs["generator"] = torch.Generator().manual_seed(seed)
        size = {"height": height, "width": width} if takes_size(self.pipe) else {}
        self.spec.check_grid(grid)
        return {**self.encoded.arguments, **self.text.arguments, **size, **kwargs}

    def _check_true_cfg(self, kwargs: dict[str, Any]) -> None:
        """An error where the spec's negatives would go unused: pipelines that guide against a negative only when one
        is given (Flux.1, Qwen-Image) do so only with `true_cfg_scale` > 1."""
        parameter = call_parameters(self.pipe).get("true_cfg_scale")
        if self.text.negative != "given" or not self.spec.negatives_given or parameter is None:
            return
        scale = kwargs.get("true_cfg_scale", parameter.default)
        if scale is None or scale <= 1:
            raise AttnkitError(f"the spec gives negative prompts, but {type(self.pipe).__name__} guides against them "
                               f"only with true_cfg_scale > 1 (here {scale}): pass e.g. true_cfg_scale=4.0 "
                               "(`--true-cfg-scale 4` on the command line, the true CFG field in `attnkit ui`), or "
                               "remove `negative` from the spec and its regions.")

def regional(pipe: Any, spec: RegionSpec | dict | str | Path, **options: Any) -> Regional:
    """Regional prompting on a stock SD1.x / SD2 / SDXL / SD3 / SD3.5 / Flux pipeline or another image DiT; `options`
    are `RegionalOptions` fields.

    `with attnkit.regional(pipe, spec) as regions: image = pipe(**regions(seed=0, num_inference_steps=28)).images[0]`
    """
    known = {f.name for f in fields(RegionalOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise AttnkitError(f"unknown regional option(s) {unknown}; options are {sorted(known)}.")
    return Regional(pipe, spec, RegionalOptions(**options))
