"""Regional prompting on tiny SD1.5 and SDXL UNets, both methods: the plain pipeline for one whole-image region,
isolation of the regions' texts in cross-attention, the couple blend, masks at every UNet resolution, SDXL pooled
embeddings, and the errors (with the pipeline restored after each)."""

import re

import numpy as np
import pytest
import torch

import attnkit
import attnkit.maps
from attnkit import AttnkitError, Control
from attnkit.regional import BASE, RegionSpec
from regional_helpers import LEFT_RIGHT, latents, state_of

UNETS = ("tiny-sd15", "tiny-sdxl")
METHODS = ("mask", "couple")


class Outputs(Control):
    """Keeps each call's output, and with `probabilities` the image->text attention probabilities via the lse."""

    name = "test-outputs"

    def __init__(self, probabilities: bool = False):
        self.needs_lse = probabilities
        self.calls = []

    def after(self, call, out, lse):
        p = call.probabilities(lse, "image", "text") if self.needs_lse else None
        self.calls.append((call.state.branches, out.clone(), p))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", UNETS)
def test_one_whole_image_region_is_the_plain_pipeline_with_and_without_a_negative_prompt(pipelines, name, method):
    """Called as users call it, without a negative prompt: SDXL then guides against zero embeddings, not the empty
    prompt's; with a negative prompt, even the empty one, against its embeddings."""
    pipe = pipelines[name]
    region = {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1]}]}
    for negative in ({}, {"negative_prompt": ""}, {"negative_prompt": "a blue square"}):
        plain = latents(pipe, prompt="a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                        **negative)
        spec = region | ({"negative": negative["negative_prompt"]} if negative else {})
        with attnkit.regional(pipe, spec, method=method) as call:
            got = latents(pipe, **call(seed=0, num_inference_steps=2))
        torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)


def test_sdxl_without_a_negative_prompt_guides_against_other_embeddings_than_the_empty_prompts(pipelines):
    """What the test above tells apart: on SDXL no negative prompt and the empty one are different generations."""
    pipe = pipelines["tiny-sdxl"]
    none, empty = (latents(pipe, prompt="a red circle", num_inference_steps=2,
                           generator=torch.Generator().manual_seed(0), **negative)
                   for negative in ({}, {"negative_prompt": ""}))
    assert (none - empty).abs().max() > 1e-2


@pytest.mark.parametrize("name", UNETS)
def test_mask_method_gives_region_b_tokens_zero_probability_from_region_a_pixels(pipelines, name):
    pipe = pipelines[name]
    spec = {**LEFT_RIGHT, "base": {"prompt": "a park", "weight": 0.5}}
    recorder = Outputs(probabilities=True)
    with attnkit.regional(pipe, spec) as call:
        kwargs = call(seed=0, num_inference_steps=1)
        cross = attnkit.sites(pipe).select(kind="cross")
        with attnkit.attach(pipe, recorder, cross):
            latents(pipe, **kwargs)
        segments = call.encoded.cond
    (_, first), (_, second), (_, base) = segments
    assert len(recorder.calls) == len(cross)
    for (branches, _, p), site in zip(recorder.calls, cross):
        rows, cols = site.grid((16, 16))
        left = (torch.arange(rows * cols) % cols) < cols // 2
        cond = p[list(branches).index("cond")]  # (heads, image, text)
        assert torch.all(cond[:, left, first:first + second] == 0)  # region A pixels never see region B's words
        assert torch.all(cond[:, ~left, :first] == 0)
        assert torch.all(cond[:, left, :first] > 0) and torch.all(cond[:, :, first + second:] > 0)  # base: all


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", UNETS)
def test_changing_region_b_leaves_the_first_cross_attention_on_region_a_unchanged(pipelines, name, method):
    pipe = pipelines[name]
    first = attnkit.sites(pipe).select(kind="cross")[0]
    outputs = []
    for right in ("a blue square", "a green triangle"):
        spec = {"regions": [LEFT_RIGHT["regions"][0], {"prompt": right, "box": [0.5, 0, 1, 1]}]}
        recorder = Outputs()
        with attnkit.regional(pipe, spec, method=method) as call:
            kwargs = call(seed=0, num_inference_steps=1)
            if "pooled_prompt_embeds" in kwargs:  # SDXL's pooled text conditions every pixel through the time embedding
                kwargs["pooled_prompt_embeds"] = kwargs["negative_pooled_prompt_embeds"]
            with attnkit.attach(pipe, recorder, [first]):
                latents(pipe, **kwargs)
        outputs.append(recorder.calls[0][1])
    cols = first.grid((16, 16))[1]
    left = (torch.arange(outputs[0].shape[2]) % cols) < cols // 2
    assert torch.equal(outputs[0][:, :, left], outputs[1][:, :, left])
    assert not torch.equal(outputs[0][:, :, ~left], outputs[1][:, :, ~left])


@pytest.mark.parametrize("name", UNETS)
def test_couple_weights_of_soft_masks_and_the_base_sum_to_one_at_every_pixel(pipelines, name):
    pipe = pipelines[name]
    ramp = torch.linspace(0, 1, 40).repeat(30, 1)  # 0 at the left edge, 1 at the right
    spec = RegionSpec.from_dict({"base": {"prompt": "a park", "weight": 0.3}, "regions": [
        {"prompt": "a red circle", "box": [0, 0, 0.7, 1]}, {"prompt": "a blue square", "box": [0, 0, 1, 1]}]})
    spec = RegionSpec((spec.regions[0], spec.regions[1].__class__("a blue square", mask=ramp)), base=spec.base)
    recorder = Outputs()
    with attnkit.regional(pipe, spec, method="couple") as call:
        kwargs = call(seed=0, num_inference_steps=1, height=72, width=72)
        with attnkit.attach(pipe, recorder, attnkit.sites(pipe).select(kind="cross")):
            latents(pipe, **kwargs)
        weights = list(call.control._weights.items())
    assert {key[2] for key, _ in weights} == {site.stride for site in attnkit.sites(pipe).select(kind="cross")}
    for (branch, latent, stride, _), found in weights:
        total = sum(weight for _, weight in found)
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)
        if branch == "cond":
            assert len(found) == 3 and all(bool((w > 0).any()) for _, w in found)
            assert len({w.shape for _, w in found}) == 1 and found[0][1].numel() == np.prod(
                [-(-n // stride) for n in latent])


def test_masks_at_every_unet_level_match_an_independent_downsampling_where_sizes_turn_odd(pipelines):
    pipe = pipelines["tiny-sdxl"]  # cross-attention at strides 2 and 4
    spec = RegionSpec.from_dict({"base": "a park", "regions": [{"prompt": "a", "box": [0, 0, 0.45, 0.7]},
                                                               {"prompt": "b", "box": [0.3, 0.2, 1, 1]}]})
    seen = {}

    class Levels(Control):
        name = "levels"

        def before(self, call):
            seen[call.site.stride] = control.image_owners(call).view(*call.grid)

    with attnkit.regional(pipe, spec) as call:
        control = call.control
        kwargs = call(seed=0, num_inference_steps=1, height=72, width=88)  # latent 18 x 22: 9 x 11 at stride 2
        with attnkit.attach(pipe, Levels(), attnkit.sites(pipe).select(kind="cross")):
            latents(pipe, **kwargs)
    latent = spec.coverage((18, 22)).numpy()
    assert sorted(seen) == [2, 4]
    for stride, owners in seen.items():
        rows, cols = -(-18 // stride), -(-22 // stride)  # each down-sampling conv rounds odd sizes up
        assert owners.shape == (rows, cols)
        for r in range(rows):
            for c in range(cols):
                cells = latent[:, r * stride:(r + 1) * stride, c * stride:(c + 1) * stride]
                cover = cells.reshape(len(cells), -1).mean(1)
                want = BASE if cover.max() == 0 else len(cover) - 1 - int(np.argmax(cover[::-1]))
                assert int(owners[r, c]) == want, (stride, r, c)


def test_sdxl_pooled_is_the_region_mean_or_the_base_prompts(pipelines):
    pipe = pipelines["tiny-sdxl"]
    spec = {"base": "a park", **LEFT_RIGHT}
    encoded = {}
    for pooled in ("mean", "base"):
        with attnkit.regional(pipe, spec, pooled=pooled) as call:
            encoded[pooled] = call(num_inference_steps=1)["pooled_prompt_embeds"]
    prompts = ["a red circle", "a blue square", "a park"]
    with torch.no_grad():
        _, _, pools, _ = pipe.encode_prompt(prompt=prompts, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(encoded["mean"], pools[:2].mean(0, keepdim=True))
    torch.testing.assert_close(encoded["base"], pools[2:])


def test_sd15_gets_no_pooled_embeddings_and_global_negatives_by_default(pipelines):
    pipe = pipelines["tiny-sd15"]
    with attnkit.regional(pipe, {**LEFT_RIGHT, "negative": "blurry"}) as call:
        kwargs = call(num_inference_steps=1)
    assert "pooled_prompt_embeds" not in kwargs and "negative_pooled_prompt_embeds" not in kwargs
    assert kwargs["prompt_embeds"].shape == kwargs["negative_prompt_embeds"].shape == (1, 2 * 77, 32)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", UNETS)
def test_image_isolation_on_unets_masks_self_attention_across_regions(pipelines, name, method):
    pipe = pipelines[name]
    self_sites = attnkit.sites(pipe).select(kind="self")
    seen = []

    class SelfMask(Control):
        name = "self-mask"

        def before(self, call):
            seen.append(call.mask.clone() if call.has_mask else None)

    with attnkit.regional(pipe, LEFT_RIGHT, image_isolation=True, method=method) as call:
        kinds = {s.kind for s in call.sites()}
        with attnkit.attach(pipe, SelfMask(), self_sites[:1]):
            isolated = latents(pipe, **call(seed=0, num_inference_steps=1))
    with attnkit.regional(pipe, LEFT_RIGHT, method=method) as call:
        assert {s.kind for s in call.sites()} == {"cross"}
        plain = latents(pipe, **call(seed=0, num_inference_steps=1))
    assert kinds == {"cross", "self"} and not torch.equal(isolated, plain)
    rows, cols = self_sites[0].grid((16, 16))
    left = (torch.arange(rows * cols) % cols) < cols // 2
    mask = seen[0][-1, 0]  # the cond item: left tokens see left tokens only
    assert mask.dtype == torch.bool and torch.equal(mask, left[:, None] == left[None, :])


def test_unet_errors_name_the_problem_and_leave_the_pipeline_as_it_was(pipelines):
    pipe = pipelines["tiny-sd15"]
    before = state_of(pipe)
    long_prompt = " ".join(["red"] * 90)
    cases = [
        ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1]}, {"prompt": long_prompt, "box": [0, 0, 1, 1]}]},
         {}, {}, "region 2 prompt is 9[0-9] CLIP tokens; CLIP keeps 77, so it would be truncated"),
        ({"regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]}]}, {}, {}, "lie in no region"),
        (LEFT_RIGHT, {}, {"height": 62}, "not divisible by the token grid"),
        ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1]}, {"prompt": "b", "box": [0, 0, 0.01, 0.01]}]}, {}, {},
         "get no image token"),
        (LEFT_RIGHT, {}, {"prompt": "a cat"}, "come from the region spec"),
        ({**LEFT_RIGHT, "method": "couple"}, {"method": "mask"}, {}, "give the method in one place"),
        (LEFT_RIGHT, {"max_sequence_length": 64}, {}, "keeps 77 tokens"),
        (LEFT_RIGHT, {"method": "pairs"}, {}, "method='pairs': choose one of mask, couple"),
        ({**LEFT_RIGHT, "method": "pairs"}, {}, {}, "method 'pairs': choose one of mask, couple"),
        ({"base": {"prompt": "a park", "weight": 0}, "regions": [{"prompt": "a", "box": [0, 0, 0.5, 1]}]},
         {"method": "couple"}, {}, "some pixels get no prompt"),
    ]
    for spec, options, kwargs, message in cases:
        with pytest.raises(AttnkitError, match=message):
            with attnkit.regional(pipe, spec, **options) as call:
                latents(pipe, **call(num_inference_steps=1, **kwargs))
        assert state_of(pipe) == before
    with pytest.raises(AttnkitError, match="text tokens, but the region spec encodes"):
        with attnkit.regional(pipe, LEFT_RIGHT, method="couple") as call:
            kwargs = call(num_inference_steps=1)
            latents(pipe, **{k: v[:, :-1] for k, v in kwargs.items() if k.endswith("prompt_embeds")},
                    num_inference_steps=1)
    assert state_of(pipe) == before
    with pytest.raises(AttnkitError, match=re.escape("method 'couple' blends UNet cross-attention")):
        attnkit.regional(pipelines["tiny-sd3"], LEFT_RIGHT, method="couple")


def test_couple_refuses_attention_maps_on_the_same_sites(pipelines):
    pipe = pipelines["tiny-sd15"]
    before = state_of(pipe)
    with pytest.raises(AttnkitError, match="'regional' computes attention with a kernel that has no single "
                                           "log-sum-exp"):
        with attnkit.regional(pipe, LEFT_RIGHT, method="couple") as call, attnkit.maps.trace(pipe, call) as tc:
            latents(pipe, **call(seed=0, num_inference_steps=1))
    assert state_of(pipe) == before
    with attnkit.regional(pipe, LEFT_RIGHT, method="mask") as call, attnkit.maps.trace(pipe, call) as tc:
        latents(pipe, **call(seed=0, num_inference_steps=1))
    assert tc.total.sum() > 0


@pytest.mark.parametrize("name", UNETS)
def test_per_region_negatives_are_masked_like_their_prompts_and_a_global_one_is_seen_everywhere(pipelines, name):
    pipe = pipelines[name]
    site = attnkit.sites(pipe).select(kind="cross")[0]
    rows, cols = site.grid((16, 16))
    left = (torch.arange(rows * cols) % cols) < cols // 2
    per_region = {"regions": [{**LEFT_RIGHT["regions"][0], "negative": "green"}, LEFT_RIGHT["regions"][1]]}
    for spec, regional_negatives in ((per_region, True), ({**LEFT_RIGHT, "negative": "green"}, False)):
        recorder = Outputs(probabilities=True)
        with attnkit.regional(pipe, spec) as regions:
            kwargs = regions(seed=0, num_inference_steps=1)
            with attnkit.attach(pipe, recorder, [site]):
                latents(pipe, **kwargs)
            first = regions.encoded.uncond[0][1]  # tokens of the first segment: 77 CLIP tokens
        branches, _, p = recorder.calls[0]
        uncond = p[list(branches).index("uncond")]
        if regional_negatives:  # region A's negative only for region A's pixels, as its prompt
            assert torch.all(uncond[:, ~left, :first] == 0) and torch.all(uncond[:, left, first:] == 0)
        else:  # the global negative once, seen by every pixel; its padding copies by none
            assert torch.all(uncond[:, :, :77] > 0) and torch.all(uncond[:, :, 77:] == 0)
