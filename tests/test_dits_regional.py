"""Regional prompting on every DiT family that describes how its pipeline takes several prompts' text (the families
whose image and text tokens share attention), from the same spec files as SD3 and SD1.x."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.errors import AttnkitError
from attnkit.families import dits
from attnkit.processors import Control
from attnkit.testing import build_pipeline

REGIONAL = {family.name: family for family in dits() if family.regional is not None}
WITHOUT = {family.name: family for family in dits() if family.regional is None}
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
    """Keeps the image->text probabilities of the first call of every forward at its site, with the CFG branches."""

    name = "probabilities"
    needs_lse = True

    def __init__(self):
        self.kept = []

    def after(self, call, out, lse):
        self.kept.append((call.state.batch_index("cond"), call.probabilities(lse, "image", "text"), call.grid))


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
    cond, probabilities, grid = kept.kept[0]
    owners = call.spec.owners(grid).flatten()
    for region, other in ((0, 1), (1, 0)):
        block = probabilities[cond][:, :, owners == region][..., text_owners == other]
        assert block.numel() and torch.all(block == 0)
        own = probabilities[cond][:, :, owners == region][..., text_owners == region]
        assert torch.all(own.sum(-1) > 0)


@pytest.mark.parametrize("name", sorted(WITHOUT))
def test_a_family_without_regional_prompting_says_so(name):
    pipe = _pipe(WITHOUT[name])
    with pytest.raises(AttnkitError, match=f"{type(pipe).__name__} is a {name} model, where attnkit does not offer it"):
        attnkit.regional(pipe, LEFT_RIGHT)
