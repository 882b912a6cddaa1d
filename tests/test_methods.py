"""Parity of attnkit's observation methods with their published reference code, in float64: each method as attnkit
runs it against an independent implementation of the reference's algorithm and hyperparameters
(`tests/method_oracles.py`), on a UNet with SD1.5's layout, tiny SDXL, tiny SD3 and tiny Flux.

Each test puts what it measured into the `figures` fixture; `benchmarks/methods.py` runs this file with the K/V
methods' parity tests and writes the figures to benchmarks/results/methods.json and the methods table of docs/methods.md.
"""

from __future__ import annotations

import copy
import functools
import math
from contextlib import ExitStack

import method_oracles as oracle
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import attnkit.maps as maps
import attnkit.segment as seg
from attnkit.pipeline import clean_latent, single_forward
from attnkit.testing import build_pipeline, sd15_layout_pipeline

# DiffSeg's reference: google/diffseg at 77ea59657da1be832c89e48085e04b97952e2a36.
#: The models the methods are checked on, and the image side each is read at: SD1.5's layout at 256 px has grids
#: 32, 16, 8 and 4 (DiffSeg's 64, 32, 16, 8 at 512 px, halved); the DiTs have 32 x 32 image tokens there.
MODELS = {"sd15-layout": 256, "tiny-sdxl": 256, "tiny-sd3": 256, "tiny-flux": 256}
#: DiffSeg's own geometry, SD1.x at 512 px (grids 64, 32, 16 and 8, weighted 64/120, 32/120, 16/120, 8/120): its
#: aggregation is checked there too.
SD15_AT_512 = "sd15-layout-512"
MAPS_TOLERANCE = 1e-10


def scene(side: int) -> Image.Image:
    """A red disc and a blue square on grey: an image with regions, so that the latent has structure."""
    image = Image.new("RGB", (side, side), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((side // 8, side // 4, side // 2, side * 5 // 8), fill=(220, 30, 30))
    draw.rectangle((side * 9 // 16, side // 2, side * 7 // 8, side * 7 // 8), fill=(30, 30, 220))
    return image


def float64_pipeline(name: str):
    pipe = sd15_layout_pipeline(sd15_vae=True) if name.startswith("sd15-layout") else build_pipeline(name)
    return pipe.to(torch.float64)


def reference_forward(name: str, pipe, image: Image.Image, timestep: float = seg.DEFAULT_TIMESTEP):
    """(the reference's one denoiser forward, the image tokens' slice of a self-attention call's sequence): the
    clean latent, `timestep`, the empty prompt, no guidance, as each family's pipeline feeds its denoiser."""
    latent = oracle.clean_latent(pipe, image)
    rows, cols = latent.shape[-2:]
    with torch.no_grad():
        if name.startswith("sd15-layout"):
            ids = pipe.tokenizer("", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 return_tensors="pt").input_ids
            text = pipe.text_encoder(ids)[0]
            return (lambda: pipe.unet(latent, torch.tensor(timestep), encoder_hidden_states=text),
                    lambda queries, keys: slice(0, queries) if queries == keys else None)
        if name == "tiny-sdxl":
            text, _, pooled, _ = pipe.encode_prompt("", do_classifier_free_guidance=False)
            sizes = torch.tensor([[image.height, image.width, 0, 0, image.height, image.width]], dtype=latent.dtype)
            return (lambda: pipe.unet(latent, torch.tensor(timestep), encoder_hidden_states=text,
                                      added_cond_kwargs={"text_embeds": pooled, "time_ids": sizes}),
                    lambda queries, keys: slice(0, queries) if queries == keys else None)
        if name == "tiny-sd3":
            text, _, pooled, _ = pipe.encode_prompt("", None, None, do_classifier_free_guidance=False)
            tokens = (rows // 2) * (cols // 2)
            return (lambda: pipe.transformer(hidden_states=latent, encoder_hidden_states=text,
                                             pooled_projections=pooled, timestep=torch.tensor([float(timestep)])),
                    lambda queries, keys: slice(0, tokens) if queries == keys > tokens else None)
        text, pooled, text_ids = pipe.encode_prompt("", prompt_2=None)
        packed = pipe._pack_latents(latent, 1, latent.shape[1], rows, cols)
        image_ids = pipe._prepare_latent_image_ids(1, rows // 2, cols // 2, latent.device, latent.dtype)
        tokens = packed.shape[1]
        return (lambda: pipe.transformer(hidden_states=packed, timestep=torch.tensor([timestep / 1000]),
                                         guidance=torch.full([1], 3.5, dtype=latent.dtype),
                                         pooled_projections=pooled, encoder_hidden_states=text, txt_ids=text_ids,
                                         img_ids=image_ids),
                lambda queries, keys: slice(keys - tokens, keys) if queries == keys > tokens else None)


class DiffSegCase:
    """One model's image read the reference's way (oracle) and attnkit's way (its per-query maps)."""

    def __init__(self, name: str) -> None:
        torch.manual_seed(0)
        self.name = name
        self.pipe = float64_pipeline(name)
        self.image = scene(512 if name == SD15_AT_512 else MODELS[name])
        run, image_part = reference_forward(name, self.pipe, self.image)
        self.reference = oracle.diffseg_aggregate(oracle.self_attention_maps(run, image_part))
        with seg.trace(self.pipe) as tc, torch.inference_mode():
            single_forward(self.pipe, clean_latent(self.pipe, self.image), "", timestep=seg.DEFAULT_TIMESTEP)
        self.maps = tc.maps[0]
        self.timestep = tc.timestep

    @functools.cached_property
    def tight(self) -> float:
        """A threshold that splits: about a tenth of the anchors' distances to all maps lie below it, and it lies
        half way between two of them (the distances hold ties, KL(a, b) = KL(b, a) for anchors a and b)."""
        side = self.reference.shape[-1]
        grid = oracle.sampling_grid(side)
        anchors = self.reference.reshape(side, side, side, side)[grid[:, 0], grid[:, 1]]
        distances = np.unique(np.stack([oracle.symmetric_kl(a[None], self.reference.numpy())
                                        for a in anchors.numpy()]))
        low = int(0.1 * len(distances))
        return float(distances[low:low + 2].mean())


_cases: dict[str, DiffSegCase] = {}


def diffseg_case(name: str) -> DiffSegCase:
    if name not in _cases:
        _cases[name] = DiffSegCase(name)
    return _cases[name]


@pytest.mark.parametrize("name", [*MODELS, SD15_AT_512])
def test_diffseg_aggregation_equals_the_references_weighted_layer_means(name, figures):
    """DiffSeg's `aggregate_weights` (diffseg/segmentor.py at 77ea596): each grid's layer mean, head mean, keys
    bilinear to the finest grid and renormalised, queries tiled, weighted side / sum of sides; attnkit's
    `PerQuery` maps of the same one forward (clean latent, t=300, empty prompt) equal it."""
    case = diffseg_case(name)
    assert case.timestep == seg.DEFAULT_TIMESTEP
    assert case.maps.dtype == torch.float64 and case.maps.shape == case.reference.shape
    error = float((case.maps - case.reference).abs().max())
    if name == SD15_AT_512:
        _cases.pop(name)  # 2 x 128 MB of maps, used once
    figures[f"diffseg/{name}/aggregation"] = error
    assert error < MAPS_TOLERANCE


THRESHOLD_SETS = {"benchmark": (1.1, 1.1, 1.1), "notebook": (0.9, 0.9, 0.9), "tight": None}


@pytest.mark.parametrize("refine", [False, True], ids=["no-refinement", "refinement"])
@pytest.mark.parametrize("thresholds", THRESHOLD_SETS)
@pytest.mark.parametrize("name", MODELS)
def test_diffseg_merging_equals_the_references_proposals(name, thresholds, refine, figures):
    """DiffSeg's `generate_masks` (diffseg/segmentor.py at 77ea596, 16 x 16 anchors) with the published thresholds
    (benchmarks.ipynb: KL 1.1 x 3; diffseg.ipynb: 0.9 x 3) and a tighter one that splits these maps, with and without
    its k-means refinement (scikit-learn KMeans as the notebooks run it): attnkit's `merge` on the same maps gives the
    same proposals in the same order."""
    case = diffseg_case(name)
    chosen = list(THRESHOLD_SETS[thresholds] or (case.tight,) * 3)
    want = oracle.diffseg_merge(case.reference.numpy(), chosen, refine)
    got = seg.merge(case.reference, chosen, refine=refine).numpy()
    assert got.shape == want.shape
    error = float(np.abs(got - want).max())
    figures[f"diffseg/{name}/merging/{thresholds},{'refinement' if refine else 'no-refinement'}"] = error
    if thresholds == "tight":
        assert len(want) > 1  # the check has something to merge
    assert error < MAPS_TOLERANCE


@pytest.mark.parametrize("protocol", ["diffseg", "diffseg-notebook", "tight"])
@pytest.mark.parametrize("name", MODELS)
def test_diffseg_labels_of_an_existing_image_equal_the_references(name, protocol, figures):
    """`segment_image(protocol=...)` end to end against the reference's pipeline (clean latent, one forward at t=300,
    aggregation, merging with the protocol's thresholds and refinement, bilinear upsampling, argmax): the same
    partition of every pixel (labels renumbered in reading order, as attnkit numbers them)."""
    case = diffseg_case(name)
    options = {"protocol": "diffseg"} if protocol == "tight" else {"protocol": protocol}
    if protocol == "tight":
        options["thresholds"] = (case.tight,) * 3
    chosen = seg.Options.of(options)
    want = oracle.reading_order(oracle.diffseg_labels(
        oracle.diffseg_merge(case.reference.numpy(), list(chosen.thresholds), chosen.refine),
        (case.image.height, case.image.width)))
    got = seg.segment_image(case.pipe, case.image, **options).labels
    agreement = float((got == want).mean())
    figures[f"diffseg-labels/{name}/{protocol}"] = agreement
    figures[f"diffseg-segments/{name}/{protocol}"] = int(want.max()) + 1
    if protocol == "tight":
        assert want.max() > 0
    assert agreement == 1.0


# DAAM's reference: castorini/daam at 09564e048cf5ffc1523aa0605736e7f178ca505a.
#: DAAM reads UNets; SD1.5's layout at 512 px is DAAM's own geometry (its output side 64 is the finest grid there).
DAAM_MODELS = {"sd15-layout": 512, "tiny-sdxl": 64}
PROMPT = "a red circle and a blue square"
DAAM_STEPS = 2


def daam_reference(pipe, side: int) -> dict[tuple[str, int], torch.Tensor]:
    """DAAM's `UNetCrossAttentionLocator` and `UNetCrossAttentionHooker` (daam/hook.py, daam/trace.py): every head of
    the down- and up-block cross-attention layers (`attn2` with 77 keys), the conditional half of the CFG batch
    (`map_[B*H//2:]`), summed over the steps of one generation, (77, h, w) per (layer, head)."""
    sums: dict[tuple[str, int], torch.Tensor] = {}

    def keep(name: str, head: int, probs: torch.Tensor) -> None:
        if name.endswith(".attn2") and name.startswith(("down_blocks", "up_blocks")):
            cond = probs[probs.shape[0] // 2:][0]  # (queries, 77)
            grid = math.isqrt(cond.shape[0])
            heat = cond.T.reshape(cond.shape[1], grid, grid)
            sums[name, head] = sums.get((name, head), 0) + heat

    text = pipe.tokenizer.model_max_length
    with oracle.named_attention(pipe.unet, keep, only=lambda queries, keys: keys == text), torch.no_grad():
        pipe(PROMPT, num_inference_steps=DAAM_STEPS, height=side, width=side, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    return sums


@pytest.mark.parametrize("name", DAAM_MODELS)
def test_daam_word_maps_equal_the_references(name, figures):
    """`attnkit.maps.trace(method="daam")`, with and without `normalize`, against DAAM 0.2.0's `trace`
    (daam/trace.py, daam/heatmap.py, daam/utils.py at 09564e0; the `daam` package pins diffusers 0.21 and does not
    install beside this diffusers): down- and up-block cross-attention of the conditional half, each (layer, head)
    summed over the steps, bicubic to the finest grid and clamped at 0, averaged, optionally normalised over the
    prompt's tokens; every word's map the mean over its tokens and occurrences ("a" occurs twice)."""
    pipe = float64_pipeline(name)
    side = DAAM_MODELS[name]
    tokens = len(pipe.tokenizer.tokenize(PROMPT.lower()))
    sums = daam_reference(pipe, side)
    with ExitStack() as stack:
        traces = {normalize: stack.enter_context(maps.trace(pipe, PROMPT, method="daam", normalize=normalize))
                  for normalize in (False, True)}
        with torch.inference_mode():
            pipe(PROMPT, num_inference_steps=DAAM_STEPS, height=side, width=side, output_type="latent",
                 generator=torch.Generator().manual_seed(0))
    for normalize, tc in traces.items():
        reference = oracle.daam_global_heat_map(sums, normalize, tokens)
        errors = []
        for word in dict.fromkeys(PROMPT.split()):
            want = oracle.daam_word_map(pipe.tokenizer, PROMPT, word, reference)
            got = tc.heatmap(word)
            assert got.shape == want.shape and got.dtype == torch.float64
            errors.append(float((got - want).abs().max()))
        figures[f"daam/{name}/{'normalized' if normalize else 'plain'}"] = max(errors)
        assert max(errors) < MAPS_TOLERANCE


def test_daam_is_refused_on_a_denoiser_without_down_and_up_blocks():
    from attnkit.errors import AttnkitError

    with pytest.raises(AttnkitError, match="method='daam' reads the cross-attention of a UNet's down and up blocks"):
        maps.trace(build_pipeline("tiny-sd3"), PROMPT, method="daam")


CONCEPT_ATTENTION = {"tiny-flux": "helblazer811/ConceptAttention@8c2709cd34f542b73fc403d8c6a3b684b62142ad",
                     "tiny-sd3": "helblazer811/ConceptAttention@db30c4dcee01184c4d3f9fc9e46477eeb4e3eef3",
                     "tiny-sd35": "helblazer811/ConceptAttention@db30c4dcee01184c4d3f9fc9e46477eeb4e3eef3"}
#: One token each in every tiny tokenizer, as ConceptAttention's SD3 code assumes of every concept.
CONCEPTS = ["sky", "tree", "cat"]
#: ConceptAttention's published runs do not guide (FLUX.1-schnell, SD3.5-large-turbo).
UNGUIDED = {"tiny-flux": {}, "tiny-sd3": {"guidance_scale": 1.0}, "tiny-sd35": {"guidance_scale": 1.0}}


def concept_reference(name: str, pipe, records: list[dict]) -> torch.Tensor:
    if name == "tiny-flux":
        double = len(pipe.transformer.transformer_blocks)
        layers = list(range(max(0, double - 4), double))  # the last four double blocks: FLUX.1's layers 15-18 of 19
        return oracle.flux_concept_maps(pipe, records, CONCEPTS, layers)
    return oracle.sd3_concept_maps(pipe, records, CONCEPTS)


@pytest.mark.parametrize("name", CONCEPT_ATTENTION)
def test_concept_attention_maps_of_a_generation_equal_the_references(name, figures):
    """`attnkit.maps.trace(space="output")` with its defaults against ConceptAttention's code for the family, on a
    3-step generation: Flux (concept_attention/modified_double_stream_block.py, modified_flux_dit.py, utils.py,
    concept_attention_pipeline.py at 8c2709c: first-token concepts, zero pooled vector, the prompt call's image
    outputs, softmax per layer and step) and SD3 (concept_attention/sd3/dit_block.py, pipeline.py,
    concept_attention_pipeline.py at db30c4d: joined concepts with the start token, the concept call's own image
    outputs, vectors averaged over steps, L2-normalised concepts, softmax per layer)."""
    pipe = float64_pipeline(name)
    model = pipe.transformer
    with oracle.block_inputs(model, list(model.transformer_blocks)) as records, torch.no_grad():
        pipe(PROMPT, num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(0),
             **UNGUIDED[name])
    want = concept_reference(name, pipe, records)
    with maps.trace(pipe, PROMPT, space="output", concepts=CONCEPTS) as tc, torch.inference_mode():
        pipe(PROMPT, num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(0),
             **UNGUIDED[name])
    got = tc.maps[0].reshape(len(CONCEPTS), -1)
    error = float((got - want).abs().max())
    figures[f"concept-attention/{name}/generation"] = error
    assert got.dtype == torch.float64 and error < MAPS_TOLERANCE


def flux_sigma(pipe, steps: int, step: int, tokens: int) -> float:
    """FLUX.1's schedule as its reference code makes it (`get_schedule`: linspace(1, 0, steps + 1), time-shifted by
    mu, linear in the image's token count; schnell: unshifted), a float32 tensor there: the noise level of step
    `step`."""
    config = pipe.scheduler.config
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    mu = config.base_shift + slope * (tokens - config.base_image_seq_len)
    t = 1 - step / steps
    shifted = math.exp(mu) / (math.exp(mu) + (1 / t - 1)) if config.use_dynamic_shifting else t
    return float(torch.tensor(shifted, dtype=torch.float32))


@pytest.mark.parametrize("name", CONCEPT_ATTENTION)
def test_concept_maps_of_an_existing_image_equal_the_references(name, figures):
    """`attnkit.maps.concept_maps_of_image` against the code's `encode_image`: the image's latent noised to step 2 of
    a 4-step schedule (x = sigma noise + (1 - sigma) latent; the posterior mean and a seeded noise where the code
    draws unseeded ones), one forward (Flux: empty prompt, zero pooled vector, guidance 0; SD3: the caption's
    embeddings), the family's rule as above."""
    pipe = float64_pipeline(name)
    model = pipe.transformer
    image = scene(64)
    latent = oracle.clean_latent(pipe, image)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5), dtype=latent.dtype)
    rows, cols = latent.shape[-2:]
    prompt = "" if name == "tiny-flux" else PROMPT
    with oracle.block_inputs(model, list(model.transformer_blocks)) as records, torch.no_grad():
        if name == "tiny-flux":
            sigma = flux_sigma(pipe, 4, 2, (rows // 2) * (cols // 2))
            text, _, text_ids = pipe.encode_prompt(prompt, prompt_2=None)
            noised = sigma * noise + (1 - sigma) * latent
            model(hidden_states=pipe._pack_latents(noised, 1, latent.shape[1], rows, cols),
                  timestep=torch.tensor([sigma], dtype=latent.dtype), guidance=torch.zeros(1, dtype=latent.dtype),
                  pooled_projections=torch.zeros(1, model.config.pooled_projection_dim, dtype=latent.dtype),
                  encoder_hidden_states=text, txt_ids=text_ids,
                  img_ids=pipe._prepare_latent_image_ids(1, rows // 2, cols // 2, latent.device, latent.dtype))
        else:
            scheduler = copy.deepcopy(pipe.scheduler)
            scheduler.set_timesteps(4)
            sigma = scheduler.sigmas[2]
            text, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False)
            model(hidden_states=sigma * noise + (1 - sigma) * latent, encoder_hidden_states=text,
                  pooled_projections=pooled, timestep=scheduler.timesteps[2:3])
    want = concept_reference(name, pipe, records)
    tc = maps.concept_maps_of_image(pipe, image, CONCEPTS, prompt, seed=5)
    got = tc.maps[0].reshape(len(CONCEPTS), -1)
    error = float((got - want).abs().max())
    figures[f"concept-attention/{name}/image"] = error
    assert error < MAPS_TOLERANCE
