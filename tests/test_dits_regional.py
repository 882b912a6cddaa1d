"""Regional prompting on every DiT family that describes how its pipeline takes several prompts' text (the families
whose image and text tokens share attention), from the same spec files as SD3 and SD1.x."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.errors import AttnkitError
from attnkit.families import dits
from attnkit.processors import Control
from attnkit.regional import supports
from attnkit.testing import build_pipeline

REGIONAL = {family.name: family for family in dits() if supports(family)}
WITHOUT = {family.name: family for family in dits() if not supports(family)}
LEFT_RIGHT = {"regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]},
                          {"prompt": "a blue square", "box": [0.5, 0, 1, 1]}]}


def _pipe(family):
    if family.model_class is None:
        pytest.skip(f"this diffusers has no {family.model}")
    torch.set_num_threads(1)
    return build_pipeline(f"tiny-{family.name}")


def _latents(pipe, **kwargs):
    with torch.inference_mode():
        return pipe(output_type="latent", **kwargs).images


class _Probabilities(Control):
    """Keeps the image->text probabilities of every call at its site, per batch item (over the item's own text), with
    the CFG branches."""

    name = "probabilities"
    needs_lse = True

    def __init__(self):
        self.kept = []

    def after(self, call, out, lse):
        per_item = [call.probabilities(lse, "image", layout.span("keys", "text"))[item]
                    for item, layout in enumerate(call.layouts())]
        self.kept.append((call.state.branches, per_item, call.grid))


def _other_regions_text_is_unseen(probabilities, owners, text_owners):
    """Image tokens of each of two regions give the other region's text probability 0 and their own some."""
    for region, other in ((0, 1), (1, 0)):
        block = probabilities[:, owners == region][..., text_owners == other]
        assert block.numel() and torch.all(block == 0)
        own = probabilities[:, owners == region][..., text_owners == region]
        assert torch.all(own.sum(-1) > 0)


@pytest.mark.parametrize("name", sorted(REGIONAL))
def test_one_whole_image_region_is_the_plain_pipeline(name):
    pipe = _pipe(REGIONAL[name])
    want = _latents(pipe, prompt="a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    with attnkit.regional(pipe, {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1]}]}) as call:
        got = _latents(pipe, **call(seed=3, num_inference_steps=2))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(REGIONAL))
def test_image_tokens_of_one_region_give_the_other_regions_text_probability_zero(name):
    pipe = _pipe(REGIONAL[name])
    site = next(s for s in attnkit.sites(pipe) if s.kind in ("joint", "single", "cross"))
    kept = _Probabilities()
    with attnkit.regional(pipe, LEFT_RIGHT) as call:
        with attnkit.attach(pipe, kept, [site]):
            _latents(pipe, **call(seed=0, num_inference_steps=2))
        text_owners = call.encoded.text_owners("cond")
    branches, probabilities, grid = kept.kept[0]
    owners = call.spec.owners(grid).flatten()
    _other_regions_text_is_unseen(probabilities[branches.index("cond")], owners, text_owners)


@pytest.mark.parametrize("name", sorted(name for name, family in REGIONAL.items()
                                        if family.text.negative != "never"))
def test_with_negatives_per_region_uncond_image_tokens_give_the_other_regions_negative_probability_zero(name):
    """Each region's negative has a length of its own (Z-Image's captions are as long as their text), so the
    uncond batch items lay out their tokens differently from the cond ones."""
    pipe = _pipe(REGIONAL[name])
    spec = {"regions": [dict(LEFT_RIGHT["regions"][0], negative="blurry"),
                        dict(LEFT_RIGHT["regions"][1], negative="a dark and very ugly picture of low quality")]}
    site = next(s for s in attnkit.sites(pipe) if s.kind in ("joint", "single", "cross"))
    kept = _Probabilities()
    true_cfg = {"true_cfg_scale": 2.0} if REGIONAL[name].text.negative == "given" else {}
    with attnkit.regional(pipe, spec) as call:
        with attnkit.attach(pipe, kept, [site]):
            _latents(pipe, **call(seed=0, num_inference_steps=2, **true_cfg))
        text_owners = {branch: call.encoded.text_owners(branch) for branch in ("cond", "uncond")}
    seen = set()
    for branches, probabilities, grid in kept.kept:
        owners = call.spec.owners(grid).flatten()
        for item, branch in enumerate(branches):
            _other_regions_text_is_unseen(probabilities[item], owners, text_owners[branch])
            seen.add(branch)
    assert seen == {"cond", "uncond"}


@pytest.mark.parametrize("name", sorted(name for name, family in REGIONAL.items() if family.text.negative == "given"))
def test_negatives_that_true_cfg_would_leave_unused_are_an_error(name):
    pipe = _pipe(REGIONAL[name])
    spec = {"regions": [dict(LEFT_RIGHT["regions"][0], negative="blurry"), LEFT_RIGHT["regions"][1]]}
    with attnkit.regional(pipe, spec) as call:
        with pytest.raises(AttnkitError, match="only with true_cfg_scale > 1"):
            call(seed=0, num_inference_steps=2, true_cfg_scale=1.0)


@pytest.mark.parametrize("name", sorted(WITHOUT))
def test_a_family_without_regional_prompting_says_so(name):
    pipe = _pipe(WITHOUT[name])
    with pytest.raises(AttnkitError, match=f"{type(pipe).__name__} is a {name} model, where attnkit does not offer it"):
        attnkit.regional(pipe, LEFT_RIGHT)


class _TextProbabilities(Control):
    name = "text probabilities"
    needs_lse = True

    def __init__(self):
        self.kept = []

    def after(self, call, out, lse):
        if "cond" in call.state.branches:
            item = call.state.branches.index("cond")
            text = call.layouts()[item].span("queries", "text")
            self.kept.append(call.probabilities(lse, text, text)[item])


@pytest.mark.parametrize("name", sorted(name for name, family in REGIONAL.items()
                                        if any(pattern.kind == "text" for pattern in family.sites)))
def test_in_caption_refiners_each_regions_text_gives_the_others_probability_zero(name):
    pipe = _pipe(REGIONAL[name])
    site = next(s for s in attnkit.sites(pipe) if s.kind == "text")
    kept = _TextProbabilities()
    with attnkit.regional(pipe, LEFT_RIGHT) as call:
        with attnkit.attach(pipe, kept, [site]):
            _latents(pipe, **call(seed=0, num_inference_steps=1))
        owners = call.encoded.text_owners("cond")
    assert kept.kept
    for probabilities in kept.kept:
        for region, other in ((0, 1), (1, 0)):
            assert torch.all(probabilities[:, owners == region][..., owners == other] == 0)
            assert torch.all(probabilities[:, owners == region][..., owners == region].sum(-1) > 0)
