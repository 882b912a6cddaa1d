"""Regional prompting on tiny SD3, SD3.5 and Flux (UNets: test_regional_unet.py): specs, the mask and its exact split, the pipeline behaviour the
issue asks for (whole-image region == plain prompt, isolation, schedules), every bad spec, and the CLI."""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import attnkit
from attnkit import AttnkitError, Control, ops
from attnkit.cli import main
from attnkit.regional import BASE, PAD, Plan, RegionSpec, Rules, Token, allowed, load_spec, parse_grid
from regional_helpers import LEFT_RIGHT, latents, state_of

MODELS = ("tiny-sd3", "tiny-sd35", "tiny-flux")
SHORT_T5 = 8  # T5 tokens per region in most tests: small masks, fast references


class Recorder(Control):
    """Records what every call attended: q, k, v, mask, output and lse, and the probabilities of the whole
    matrix through the lse (as any other feature composed on the same site would see them)."""

    name = "test-recorder"
    needs_lse = True

    def __init__(self):
        self.calls = []

    def after(self, call, out, lse):
        self.calls.append(SimpleNamespace(
            site=call.site, step=call.state.step, branches=call.state.branches, layout=call.layout, grid=call.grid,
            q=call.q, k=call.k, v=call.v, mask=call.mask, scale=call.scale, out=out, lse=lse,
            probabilities=call.probabilities(lse, slice(None), slice(None)) if call.q.shape[2] < 2000 else None))


def reference_bias(parts, owners, rules):
    """The additive mask straight from the pure function, one token pair at a time."""
    tokens = [Token(p, o) for p, o in zip(parts, owners)]
    return torch.tensor([[allowed(q, k, rules) for k in tokens] for q in tokens], dtype=torch.float32)


def explicit(q, k, v, bias, scale):
    """softmax(q k^T * scale + bias) v in float32."""
    scores = q.float() @ k.float().transpose(-1, -2) * scale + bias
    return torch.softmax(scores, dim=-1) @ v.float()


# --- specs ---------------------------------------------------------------------------------------------------------

def test_spec_loads_from_yaml_and_json_with_masks_next_to_the_file(tmp_path):
    Image.new("L", (30, 10), 0).save(tmp_path / "black.png")
    right = Image.new("L", (30, 10), 0)
    right.paste(255, (15, 0, 30, 10))
    right.save(tmp_path / "right.png")
    (tmp_path / "spec.yaml").write_text(
        'negative: "blurry"\nbase: {prompt: "a park", weight: 0.3}\nregions:\n'
        '  - prompt: "a red circle"\n    box: [0.0, 0.0, 0.5, 1.0]\n'
        '  - prompt: "a blue square"\n    mask: right.png\n    negative: "green"\n')
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.base.weight == 0.3 and spec.negative == "blurry" and spec.regions[1].negative == "green"
    assert spec.owners((2, 4)).view(2, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    (tmp_path / "spec.json").write_text(json.dumps(spec.as_dict()))
    again = load_spec(tmp_path / "spec.json")
    assert again.as_dict() == spec.as_dict()
    assert torch.equal(again.coverage((4, 6)), spec.coverage((4, 6)))


def test_grid_follows_regional_prompter_ratios():
    assert parse_grid("1,1", 2) == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    assert parse_grid("1,1;1,2", 2) == [(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)]
    boxes = parse_grid("1;2,3,1", 3)  # a full-width row of height 1, then a row of height 2 split 3:1
    assert boxes[0] == (0.0, 0.0, 1.0, pytest.approx(1 / 3))
    assert boxes[1] == (0.0, pytest.approx(1 / 3), 0.75, 1.0) and boxes[2] == (0.75, pytest.approx(1 / 3), 1.0, 1.0)
    spec = RegionSpec.from_dict({"grid": "1,1,2", "regions": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]})
    assert spec.owners((1, 8)).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]


def test_overlap_rule_most_area_then_later_region():
    spec = RegionSpec.from_dict({"regions": [{"prompt": "a", "box": [0, 0, 0.6, 1]},
                                             {"prompt": "b", "box": [0.4, 0, 1, 1]},
                                             {"prompt": "c", "box": [0.0, 0.0, 0.25, 0.5]}]})
    # columns of 0.25: col 0 is a's and c's (c later, equal area) -> c in the top row; col 1 a alone; col 2: a 0.4
    # of it, b 0.6 -> b; col 3 b.
    assert spec.owners((2, 4)).view(2, 4).tolist() == [[2, 0, 1, 1], [0, 0, 1, 1]]
    with_base = RegionSpec.from_dict({"base": "a park", "regions": [{"prompt": "a", "box": [0, 0, 0.5, 0.5]}]})
    assert with_base.owners((2, 2)).tolist() == [0, BASE, BASE, BASE]


BAD_SPECS = {
    "no regions": ({"regions": []}, "no regions"),
    "box outside [0, 1]": ({"regions": [{"prompt": "a", "box": [0, 0, 1.5, 1]}]}, "outside [0, 1]"),
    "empty box": ({"regions": [{"prompt": "a", "box": [0.5, 0, 0.5, 1]}]}, "is empty"),
    "box and mask": ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1], "mask": "m.png"}]}, "exactly one of"),
    "mask unreadable": ({"regions": [{"prompt": "a", "mask": "missing.png"}]}, "cannot read mask"),
    "grid count": ({"grid": "1,1,1", "regions": [{"prompt": "a"}, {"prompt": "b"}]}, "3 cells, but the spec has 2"),
    "bad grid": ({"grid": "1,x", "regions": [{"prompt": "a"}, {"prompt": "b"}]}, "ratios must be numbers"),
    "unknown key": ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1], "weight": 2}]}, "unknown key"),
    "empty prompt": ({"regions": [{"prompt": " ", "box": [0, 0, 1, 1]}]}, "non-empty string"),
    "negative base weight": ({"base": {"prompt": "p", "weight": -1}, "regions": [{"prompt": "a", "box": [0, 0, 1, 1]}]},
                             "base weight"),
}


@pytest.mark.parametrize("name", ("tiny-sd3", "tiny-sd15", "tiny-sdxl"))
@pytest.mark.parametrize("case", BAD_SPECS)
def test_each_bad_spec_raises_its_error(pipelines, case, name, tmp_path):
    data, message = BAD_SPECS[case]
    with pytest.raises(AttnkitError, match=re.escape(message)):
        RegionSpec.from_dict(data, root=tmp_path)
    pipe = pipelines[name]
    before = state_of(pipe)
    with pytest.raises(AttnkitError, match=re.escape(message)):
        with attnkit.regional(pipe, data):
            pass
    assert state_of(pipe) == before


def test_unreadable_mask_file_and_spec_file(tmp_path):
    (tmp_path / "m.png").write_text("not a png")
    with pytest.raises(AttnkitError, match="cannot read mask"):
        RegionSpec.from_dict({"regions": [{"prompt": "a", "mask": "m.png"}]}, root=tmp_path)
    (tmp_path / "bad.yaml").write_text("regions: [")
    with pytest.raises(AttnkitError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    with pytest.raises(AttnkitError, match="cannot read the region spec"):
        load_spec(tmp_path / "absent.yaml")


# --- the mask and its split ----------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(
    regions=st.integers(1, 3),
    image_tokens=st.integers(1, 40),
    text=st.integers(1, 6),
    base=st.booleans(),
    pads=st.integers(0, 5),
    text_first=st.booleans(),
    flags=st.tuples(*[st.booleans()] * 4),
    weight=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
    image_bias=st.sampled_from([float("-inf"), -2.0]),
    text_bias=st.sampled_from([0.0, 1.5]),
    seed=st.integers(0, 2**16),
)
def test_split_kernel_equals_explicit_masked_softmax(regions, image_tokens, text, base, pads, text_first, flags,
                                                     weight, image_bias, text_bias, seed):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(BASE if base else 0, regions, (image_tokens,), generator=generator)
    text_owners = [r for r in range(regions) for _ in range(text)] + [BASE] * (text if base else 0) + [PAD] * pads
    runs = (("image", image_tokens), ("text", len(text_owners)))
    runs = runs[::-1] if text_first else runs
    parts = [part for part, n in runs for _ in range(n)]
    owners = text_owners + image.tolist() if text_first else image.tolist() + text_owners
    rules = Rules(*flags, True, math.log(weight) if weight else float("-inf"), image_bias, text_bias)
    plan = Plan([(runs, torch.tensor(owners))], rules, torch.float32, torch.device("cpu"))
    bias = reference_bias(parts, owners, rules)
    if plan.noop:  # nothing masked: the control leaves the call to the stock kernel
        assert not bias.any()
        return
    q, k, v = (torch.randn(2, 3, len(parts), 8, generator=generator) for _ in range(3))
    out, lse = plan.attend(q, k, v, 0.35)
    torch.testing.assert_close(out, explicit(q, k, v, bias, 0.35), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.35 + bias, -1), atol=1e-5, rtol=1e-5)
    want64, _ = ops.explicit_attention(q.double(), k.double(), v.double(), bias.double(), 0.35)
    assert (out.double() - want64).abs().max() < 1e-5
    assert torch.equal(ops.additive(plan.mask, torch.float32)[0, 0], bias)


def test_mask_parts_follow_the_rules():
    rules = Rules()
    assert allowed(Token("image", 0), Token("text", 1), rules) == -math.inf
    assert allowed(Token("image", 0), Token("text", 0), rules) == 0
    assert allowed(Token("text", 1), Token("image", 0), rules) == -math.inf
    assert allowed(Token("text", 0), Token("text", 1), rules) == -math.inf
    assert allowed(Token("image", 0), Token("image", 1), rules) == 0
    assert allowed(Token("image", 0), Token("image", 1), Rules(image_isolation=True)) == -math.inf
    assert allowed(Token("image", 0), Token("text", 0), Rules(text_bias=0.7)) == 0.7  # region weight e^0.7
    assert allowed(Token("image", 0), Token("text", 1), Rules(text_bias=0.7)) == -math.inf
    soft = Rules(image_isolation=True, image_bias=-2.0)  # soft isolation: other regions' image tokens at e^-2
    assert allowed(Token("image", 0), Token("image", 1), soft) == -2.0
    assert allowed(Token("image", 1), Token("image", 1), soft) == allowed(Token("image", 0), Token("image", 1), rules)
    assert allowed(Token("image", 1), Token("text", BASE), Rules(base_bias=-1.5)) == -1.5
    assert allowed(Token("text", BASE), Token("image", 1), rules) == 0
    assert allowed(Token("image", 0), Token("text", PAD), rules) == -math.inf
    loose = Rules(image_to_text=False, text_to_image=False, text_isolation=False)
    assert allowed(Token("image", 0), Token("text", 1), loose) == allowed(Token("text", 0), Token("text", 1), loose) == 0


# --- on the pipelines ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_one_whole_image_region_is_the_plain_pipeline(pipelines, name):
    pipe = pipelines[name]
    want = latents(pipe, prompt="a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    with attnkit.regional(pipe, {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1]}]}) as call:
        got = latents(pipe, **call(seed=3, num_inference_steps=2))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_masked_attention_equals_explicit_reference_at_every_site(pipelines, name):
    pipe = pipelines[name]
    spec = {"negative": "blurry", "base": {"prompt": "a park", "weight": 0.4},
            "regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]},
                        {"prompt": "a blue square", "box": [0.5, 0.25, 1, 1], "negative": "green"}]}
    recorder = Recorder()
    true_cfg = {"true_cfg_scale": 2.0} if name == "tiny-flux" else {}  # Flux guides against negatives only so
    with attnkit.regional(pipe, spec, max_sequence_length=SHORT_T5, image_isolation=True) as call:
        with attnkit.attach(pipe, recorder):
            latents(pipe, **call(seed=0, num_inference_steps=2, **true_cfg))
        owners_image = call.spec.owners((8, 8))
        encoded = call.encoded
    assert recorder.calls
    references = {}
    for c in recorder.calls:
        if c.site.kind == "self2":  # image-only attention: image isolation only
            parts, rules = ["image"] * 64, Rules(False, False, False, True, True, 0.0)
            items = [owners_image.tolist()] * len(c.branches)
        else:
            rules = Rules(True, True, True, True, True, math.log(0.4))
            parts = [name for name, n in c.layout.queries for _ in range(n)]
            items = []
            for branch in c.branches:
                text = encoded.text_owners(branch).tolist()
                items.append(text + owners_image.tolist() if parts[0] == "text" else owners_image.tolist() + text)
        for i, owners in enumerate(items):
            key = (tuple(parts), tuple(owners), rules)
            if key not in references:
                references[key] = reference_bias(parts, owners, rules)
            bias = references[key]
            want = explicit(c.q[i], c.k[i], c.v[i], bias, c.scale)
            torch.testing.assert_close(c.out[i].float(), want, atol=1e-5, rtol=1e-5)
            assert torch.equal(ops.additive(c.mask, torch.float32).expand(len(items), 1, -1, -1)[i, 0], bias)


@pytest.mark.parametrize("name", MODELS)
def test_split_and_dense_kernels_generate_the_same(pipelines, name):
    pipe = pipelines[name]
    results = []
    for kernel in ("split", "dense"):
        with attnkit.regional(pipe, LEFT_RIGHT, kernel=kernel, max_sequence_length=SHORT_T5) as call:
            results.append(latents(pipe, **call(seed=1, num_inference_steps=2)))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_the_split_kernel_builds_no_dense_mask_unless_another_control_reads_it(pipelines, name):
    pipe = pipelines[name]
    with attnkit.regional(pipe, LEFT_RIGHT, max_sequence_length=SHORT_T5) as call:
        kwargs = call(seed=0, num_inference_steps=1)
        latents(pipe, **kwargs)
        assert call.control._plans and not any("mask" in vars(plan) for plan in call.control._plans.values())
        with attnkit.attach(pipe, Recorder(), attnkit.sites(pipe).select(kind="joint")[:1]):
            latents(pipe, **kwargs)  # the recorder reads call.mask at one site, whose calls all share one plan
        assert sum("mask" in vars(plan) for plan in call.control._plans.values()) == 1


@pytest.mark.parametrize("name", MODELS)
def test_region_a_is_isolated_from_region_b_at_the_first_joint_block(pipelines, name):
    pipe = pipelines[name]
    first = attnkit.sites(pipe).select(kind="joint")[0]
    runs = []
    pooled = None
    for right in ("a blue square", "a green triangle"):
        spec = {"regions": [LEFT_RIGHT["regions"][0], {"prompt": right, "box": [0.5, 0, 1, 1]}]}
        recorder = Recorder()
        with attnkit.regional(pipe, spec, image_to_text=True, text_isolation=True) as call:
            kwargs = call(seed=0, num_inference_steps=1)
            pooled = kwargs["pooled_prompt_embeds"] if pooled is None else pooled
            kwargs["pooled_prompt_embeds"] = pooled  # the pooled text conditions every token through AdaLN
            with attnkit.attach(pipe, recorder, [first]):
                latents(pipe, **kwargs)
            owners = call.spec.owners((8, 8))
        runs.append((recorder.calls[0], kwargs["prompt_embeds"]))
    (a, embeds_a), (b, embeds_b) = runs
    image = a.layout.span("queries", "image")
    text = a.layout.span("keys", "text")
    segment = embeds_a.shape[1] // 2
    assert not torch.equal(embeds_a[:, segment:], embeds_b[:, segment:])
    region_a = torch.arange(image.start, image.stop)[owners == 0]
    torch.testing.assert_close(a.out[:, :, region_a], b.out[:, :, region_a], atol=1e-6, rtol=0)
    region_b_text = torch.arange(text.start + segment, text.stop)
    for c in (a, b):
        assert torch.all(c.probabilities[:, :, region_a][..., region_b_text] == 0)
        assert torch.all(c.probabilities[:, :, region_a][..., text.start:text.start + segment].sum(-1) > 0)


@pytest.mark.parametrize("name", MODELS)
def test_mask_in_no_step_is_unmasked_attention_over_the_concatenated_tokens(pipelines, name):
    pipe = pipelines[name]
    with attnkit.regional(pipe, LEFT_RIGHT, steps=(0, 0), max_sequence_length=SHORT_T5) as call:
        kwargs = call(seed=2, num_inference_steps=2)
        got = latents(pipe, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(2)
    assert torch.equal(got, latents(pipe, **kwargs))


def test_step_and_block_schedules(pipelines):
    pipe = pipelines["tiny-sd35"]
    recorder = Recorder()
    with attnkit.regional(pipe, LEFT_RIGHT, steps=(1, None), blocks="joint.1", image_isolation=True,
                          image_isolation_steps=(0, 1), max_sequence_length=SHORT_T5) as call:
        with attnkit.attach(pipe, recorder):
            latents(pipe, **call(seed=0, num_inference_steps=3))
    masked = {(c.step, c.site.name) for c in recorder.calls if c.mask is not None}
    assert masked == {(0, "transformer_blocks.1.attn.processor"), (0, "transformer_blocks.1.attn2.processor"),
                      (1, "transformer_blocks.1.attn.processor"), (2, "transformer_blocks.1.attn.processor")}
    by_step = {c.step: c for c in recorder.calls if c.mask is not None and c.site.kind == "joint"}
    image, text = by_step[0].layout.span("keys", "image"), by_step[0].layout.span("keys", "text")
    assert by_step[0].mask[..., image, text].all()  # step 0: image isolation only, text parts off
    assert not by_step[0].mask[1, 0][image, image].all()
    assert by_step[1].mask[..., image, image].all() and not by_step[1].mask[..., image, text].all()


def test_sd35_image_only_attention_gets_image_isolation_only(pipelines):
    pipe = pipelines["tiny-sd35"]
    recorder = Recorder()
    with attnkit.regional(pipe, LEFT_RIGHT, max_sequence_length=SHORT_T5) as call:
        assert {s.kind for s in call.sites()} == {"joint"}
    with attnkit.regional(pipe, LEFT_RIGHT, image_isolation=True, max_sequence_length=SHORT_T5) as call:
        with attnkit.attach(pipe, recorder, kind="self2"):
            latents(pipe, **call(seed=0, num_inference_steps=1))
        owners = call.spec.owners((8, 8))
    assert recorder.calls
    for c in recorder.calls:
        assert c.branches == ("uncond", "cond")  # the global negative's branch is unmasked, isolation included
        assert c.mask[0, 0].all() and torch.equal(c.mask[1, 0], owners[:, None] == owners[None, :])


@pytest.mark.parametrize("name", ("tiny-sd3", "tiny-flux"))
def test_negatives_regional_share_the_mask_global_is_unmasked(pipelines, name):
    pipe = pipelines[name]
    spec = {"negative": "blurry", "regions": [LEFT_RIGHT["regions"][0], {**LEFT_RIGHT["regions"][1],
                                                                          "negative": "green"}]}
    extra = {"true_cfg_scale": 2.0} if name == "tiny-flux" else {}
    for negatives in ("regional", "global"):
        recorder = Recorder()
        with attnkit.regional(pipe, spec, negatives=negatives, max_sequence_length=SHORT_T5) as call:
            with attnkit.attach(pipe, recorder, kind="joint"):
                latents(pipe, **call(seed=0, num_inference_steps=1, **extra))
        masks = {}
        for c in recorder.calls:
            for i, branch in enumerate(c.branches):
                masks[branch] = (c.mask.expand(len(c.branches), -1, -1, -1)[i, 0], c.layout)
        (cond, layout), (uncond, _) = masks["cond"], masks["uncond"]
        if negatives == "regional":
            assert torch.equal(cond, uncond)
            continue
        image, text = layout.span("keys", "image"), layout.span("keys", "text")
        first_copy = slice(text.start, text.start + (text.stop - text.start) // 2)
        assert uncond[image, image].all() and uncond[image, first_copy].all() and uncond[first_copy, image].all()
        assert not uncond[image, first_copy.stop:text.stop].any()  # the padding copy is hidden


def test_flux_encodes_negatives_only_when_the_spec_gives_one_and_empty_counts(pipelines):
    """Flux guides with true CFG only against a negative; an explicit "" (the empty prompt) must be encoded too."""
    pipe = pipelines["tiny-flux"]
    for spec, expected in ((LEFT_RIGHT, False), ({**LEFT_RIGHT, "negative": ""}, True)):
        with attnkit.regional(pipe, spec, max_sequence_length=SHORT_T5) as call:
            kwargs = call(seed=0, num_inference_steps=1, true_cfg_scale=2.0 if expected else 1.0)
            assert ("negative_prompt_embeds" in kwargs) is expected
            if expected:
                assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape
                latents(pipe, **kwargs)


def test_a_negative_prompt_outside_the_spec_is_refused_with_the_fix(pipelines):
    pipe = pipelines["tiny-flux"]
    with attnkit.regional(pipe, LEFT_RIGHT, max_sequence_length=SHORT_T5) as call:
        with pytest.raises(AttnkitError, match="negative prompt goes in the spec's `negative`"):
            latents(pipe, true_cfg_scale=2.0, negative_prompt="blurry", **call(seed=0, num_inference_steps=1))


@pytest.mark.parametrize("name", MODELS)
def test_masks_are_compiled_once_per_layout_and_never_reused_across_sizes_or_specs(pipelines, name):
    pipe = pipelines[name]
    with attnkit.regional(pipe, LEFT_RIGHT, max_sequence_length=SHORT_T5) as call:
        latents(pipe, **call(seed=0, num_inference_steps=2))
        first = dict(call.control._plans)
        latents(pipe, **call(seed=0, num_inference_steps=2))
        assert call.control._plans == first  # same layout: compiled once, reused
        latents(pipe, **call(seed=0, num_inference_steps=1, height=96, width=64))
        plans = call.control._plans
        assert {key[1] for key in plans} == {(8, 8), (12, 8)}
        assert all(plan.mask.shape[-1] == sum(n for _, n in key[0][0].queries) for key, plan in plans.items())
    swapped = {"regions": [{**LEFT_RIGHT["regions"][0], "box": [0.5, 0, 1, 1]},
                           {**LEFT_RIGHT["regions"][1], "box": [0, 0, 0.5, 1]}]}
    with attnkit.regional(pipe, swapped, max_sequence_length=SHORT_T5) as call:
        latents(pipe, **call(seed=0, num_inference_steps=1))
        key, plan = next(iter(call.control._plans.items()))
    assert not torch.equal(plan.mask, plans[key].mask)


def test_pooled_is_the_region_mean_or_the_base_prompts(pipelines):
    pipe = pipelines["tiny-sd3"]
    spec = {"base": "a park", **LEFT_RIGHT}
    with torch.no_grad():
        _, _, pooled, _ = pipe.encode_prompt(["a red circle", "a blue square", "a park"], None, None,
                                             do_classifier_free_guidance=False)
    with attnkit.regional(pipe, spec) as call:
        torch.testing.assert_close(call(seed=0)["pooled_prompt_embeds"], pooled[:2].mean(0, keepdim=True))
    with attnkit.regional(pipe, spec, pooled="base") as call:
        torch.testing.assert_close(call(seed=0)["pooled_prompt_embeds"], pooled[2:])
    with pytest.raises(AttnkitError, match="has no `base`"):
        with attnkit.regional(pipe, LEFT_RIGHT, pooled="base"):
            pass


def test_example_specs_load():
    examples = sorted((Path(__file__).parent.parent / "examples").glob("regional-*.yaml"))
    assert examples
    for path in examples:
        assert load_spec(path).regions


# --- errors, and restoration after each ----------------------------------------------------------------------------

def test_pipeline_errors_leave_the_pipeline_as_it_was(pipelines):
    pipe = pipelines["tiny-sd3"]
    before = state_of(pipe)
    long_prompt = " ".join(["red"] * 90)
    cases = [
        ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1]}, {"prompt": long_prompt, "box": [0, 0, 1, 1]}]},
         {}, "region 2 prompt is 9[0-9] CLIP tokens; CLIP keeps 77, so it would be truncated"),
        ({"regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]}]}, {}, "lie in no region"),
        (LEFT_RIGHT, {"height": 60}, "not divisible by the token grid"),
        ({"regions": [{"prompt": "a", "box": [0, 0, 1, 1]}, {"prompt": "b", "box": [0, 0, 0.01, 0.01]},
                      {"prompt": "c", "box": [0, 0, 0.5, 0.5]}]}, {}, "get no image token"),
        (LEFT_RIGHT, {"prompt": "a cat"}, "come from the region spec"),
    ]
    for spec, kwargs, message in cases:
        with pytest.raises(AttnkitError, match=message):
            with attnkit.regional(pipe, spec, max_sequence_length=SHORT_T5) as call:
                latents(pipe, **call(num_inference_steps=1, **kwargs))
        assert state_of(pipe) == before
    with pytest.raises(AttnkitError, match="region 1 prompt is 8 T5 tokens; T5 keeps 4"):
        with attnkit.regional(pipe, {"regions": [{"prompt": "a red circle and a blue square", "box": [0, 0, 1, 1]}]},
                              max_sequence_length=4):
            pass
    with pytest.raises(AttnkitError, match="text tokens, but the region spec encodes"):
        with attnkit.regional(pipe, LEFT_RIGHT, max_sequence_length=SHORT_T5) as call:
            kwargs = call(num_inference_steps=1)
            short = {k: v[:, :-1] if k.endswith("prompt_embeds") and v.ndim == 3 else v for k, v in kwargs.items()}
            latents(pipe, **short)
    assert state_of(pipe) == before
    with pytest.raises(AttnkitError, match="unknown regional option"):
        attnkit.regional(pipe, LEFT_RIGHT, isolate=True)


def test_error_raised_by_the_pipeline_inside_the_block_restores(pipelines):
    pipe = pipelines["tiny-flux"]
    before = state_of(pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with attnkit.regional(pipe, LEFT_RIGHT, max_sequence_length=SHORT_T5) as call:
            def boom(*args, **kwargs):
                raise RuntimeError("boom")
            latents(pipe, **call(num_inference_steps=2), callback_on_step_end=boom)
    assert state_of(pipe) == before


# --- CLI -----------------------------------------------------------------------------------------------------------

def test_cli_generate_and_regional_write_pngs_with_metadata(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("regions:\n  - {prompt: a red circle, box: [0, 0, 0.5, 1]}\n"
                    "  - {prompt: a blue square, box: [0.5, 0, 1, 1]}\n")
    out = tmp_path / "img.png"
    assert main(["regional", "tiny-sd3", "--spec", str(spec), "--out", str(out), "--steps", "1", "--outline"]) == 0
    record = json.loads(Image.open(out).text["attnkit"])
    assert record["spec"] == load_spec(spec).as_dict() and record["seed"] == 0
    outline = Image.open(tmp_path / "img.outline.png")
    assert outline.size == Image.open(out).size == (64, 64)
    plain = tmp_path / "plain.png"
    assert main(["generate", "tiny-flux", "--prompt", "a red circle", "--out", str(plain), "--steps", "1",
                 "--height", "32", "--width", "48"]) == 0
    assert Image.open(plain).size == (48, 32)
    assert json.loads(Image.open(plain).text["attnkit"])["prompt"] == "a red circle"
    (tmp_path / "bad.yaml").write_text("regions: []\n")
    assert main(["regional", "tiny-sd3", "--spec", str(tmp_path / "bad.yaml"), "--out", str(out)]) == 2
    assert "no regions" in capsys.readouterr().err


def test_cli_guidance_on_a_flux_without_guidance_embedding_is_true_cfg(tmp_path):
    """diffusers ignores `guidance_scale` there; --guidance must still guide, against the empty prompt."""
    from attnkit.shapes.train import build_flux

    folder = tmp_path / "flux"
    build_flux(0, layers=1).save_pretrained(folder)
    size = ["--height", "64", "--width", "64", "--steps", "1", "--guidance", "3"]
    plain = tmp_path / "plain.png"
    assert main(["generate", str(folder), "--prompt", "a red circle", "--out", str(plain), *size]) == 0
    record = json.loads(Image.open(plain).text["attnkit"])
    assert record["true_cfg_scale"] == 3.0 and record["negative_prompt"] == "" and "guidance_scale" not in record
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(LEFT_RIGHT))
    out = tmp_path / "regional.png"
    assert main(["regional", str(folder), "--spec", str(spec), "--out", str(out), *size]) == 0
    record = json.loads(Image.open(out).text["attnkit"])
    assert record["true_cfg_scale"] == 3.0 and record["spec"]["negative"] == ""
