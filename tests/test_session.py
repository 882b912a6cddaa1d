"""Sessions: install controls, compose them on one site, read state from the pipeline, restore on any exit."""

import pytest
import torch
from conftest import TINY, generate
from diffusers.models.attention_processor import AttnProcessor2_0

import attnkit
from attnkit import AttnkitError, Control
from attnkit.processors import SiteProcessor

pytestmark = pytest.mark.core


def processors(pipe):
    denoiser = pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet
    return denoiser, dict(denoiser.attn_processors)


def hooks(model):
    registry = getattr(model, "_diffusers_hook", None)
    return [] if registry is None else [n for n in registry.hooks if n.startswith("attnkit")]


class Noop(Control):
    name = "noop"


class StepLog(Control):
    """Logs what the state says at every call: the step comes from the pipeline, never from counting calls."""

    name = "step-log"

    def __init__(self):
        self.seen = []

    def before(self, call):
        self.seen.append((call.state.step, call.state.num_steps, call.state.branches))


class RaiseAtStep(Control):
    name = "raise"

    def before(self, call):
        if call.state.step == 1:
            raise RuntimeError("boom inside a processor")


def hidden_pairs(grid, text_tokens):
    """(image token, text token) pairs a minimal regional-style mask hides: odd text tokens from the left half."""
    rows, cols = grid
    left = (torch.arange(cols) < cols // 2).repeat(rows)
    odd = torch.arange(text_tokens) % 2 == 1
    return left[:, None] & odd[None, :]


class HideTextFromLeftHalf(Control):
    name = "hide-text-left"

    def before(self, call):
        image, text = call.layout.span("queries", "image"), call.layout.span("keys", "text")
        allowed = torch.ones(call.q.shape[2], call.k.shape[2], dtype=torch.bool)
        allowed[image, text] = ~hidden_pairs(call.grid, text.stop - text.start)
        call.restrict(allowed)


class TextMapRecorder(Control):
    """A minimal recorder: image->text probabilities through the lse, plus what a reference needs."""

    name = "text-maps"
    needs_lse = True

    def __init__(self):
        self.calls = []

    def after(self, call, out, lse):
        self.calls.append((call.probabilities(lse, "image", "text"), call.q, call.k, call.mask, call.layout,
                           call.grid, call.scale))


@pytest.mark.parametrize("name", TINY)
def test_noop_control_leaves_generation_bit_identical(pipelines, name):
    pipe = pipelines[name]
    want = generate(pipe)
    with attnkit.attach(pipe, Noop()):
        got = generate(pipe)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", TINY)
def test_processors_restored_after_a_processor_raises_mid_generation(pipelines, name):
    pipe = pipelines[name]
    model, before = processors(pipe)
    want = generate(pipe)
    with pytest.raises(RuntimeError, match="boom inside a processor"):
        with attnkit.attach(pipe, RaiseAtStep()):
            generate(pipe, steps=3)
    _, after = processors(pipe)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert hooks(model) == []
    assert torch.equal(generate(pipe), want)


def test_nested_sessions_share_one_processor_and_restore_in_any_order(pipelines):
    pipe = pipelines["tiny-sd15"]
    model, original = processors(pipe)
    outer, inner = Noop(), StepLog()
    site = attnkit.sites(pipe).select(kind="cross")[0].name
    with attnkit.attach(pipe, outer):
        _, mid = processors(pipe)
        assert isinstance(mid[site], SiteProcessor) and mid[site].original is original[site]
        with attnkit.attach(pipe, inner, kind="cross"):
            _, both = processors(pipe)
            assert both[site] is mid[site]
            assert [c for c, _ in both[site].entries] == [outer, inner]
        _, after_inner = processors(pipe)
        assert all(after_inner[k] is mid[k] for k in mid)
        assert [c for c, _ in after_inner[site].entries] == [outer]
    _, end = processors(pipe)
    assert all(end[k] is original[k] for k in original)

    first, second = attnkit.attach(pipe, Noop()), attnkit.attach(pipe, StepLog())
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the outer one ends first
    _, mixed = processors(pipe)
    assert all(isinstance(p, SiteProcessor) and len(p.entries) == 1 for p in mixed.values())
    second.__exit__(None, None, None)
    _, end = processors(pipe)
    assert all(end[k] is original[k] for k in original) and hooks(model) == []


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sd3", "tiny-flux"])
def test_mask_and_recorder_compose_on_the_same_sites(pipelines, name):
    pipe = pipelines[name]
    kind = {"tiny-sd15": "cross", "tiny-sd3": "joint", "tiny-flux": ["joint", "single"]}[name]
    recorder = TextMapRecorder()
    with attnkit.attach(pipe, HideTextFromLeftHalf(), kind=kind), attnkit.attach(pipe, recorder, kind=kind):
        masked = generate(pipe)
    assert len(recorder.calls) > 0
    for probs, q, k, mask, layout, grid, scale in recorder.calls:
        hidden = hidden_pairs(grid, probs.shape[-1])
        assert torch.all(probs[:, :, hidden] == 0) and torch.all(probs[:, :, ~hidden] > 0)
        scores = (q.double() @ k.double().transpose(-1, -2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        want = torch.softmax(scores, -1)[:, :, layout.span("queries", "image"), layout.span("keys", "text")]
        torch.testing.assert_close(probs.double(), want, rtol=1e-4, atol=1e-6)
    assert not torch.equal(masked, generate(pipe))


def test_state_of_two_pipelines_is_independent_and_read_from_the_pipeline(pipelines):
    sd, sd3 = pipelines["tiny-sd15"], pipelines["tiny-sd3"]
    log_sd, log_sd3 = StepLog(), StepLog()
    steps_seen_by_callback = []

    def callback(pipe, step, timestep, kwargs):
        steps_seen_by_callback.append(step)
        return kwargs

    with attnkit.attach(sd, log_sd) as s1, attnkit.attach(sd3, log_sd3) as s2:
        generate(sd, steps=3, callback_on_step_end=callback)
        generate(sd3, steps=2, guidance_scale=1.0)
        assert s1.state is not s2.state
        assert (s1.state.step, s2.state.step) == (3, 1)
    assert steps_seen_by_callback == [0, 1, 2, 3]  # SD1.5's PNDM loops once more than the steps asked for
    assert sorted({(s, n) for s, n, _ in log_sd.seen}) == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert {b for _, _, b in log_sd.seen} == {("uncond", "cond")}  # CFG batch [uncond, cond]
    assert sorted({(s, n) for s, n, _ in log_sd3.seen}) == [(0, 2), (1, 2)]
    assert {b for _, _, b in log_sd3.seen} == {("cond",)}  # guidance 1: no CFG batch


def test_sd3_skip_layer_guidance_forward_is_labelled_cond(pipelines):
    # two images per prompt: each step runs the CFG batch [uncond x2, cond x2], then skip-layer guidance runs the two
    # cond items alone, an even batch that is not [uncond, cond]
    pipe = pipelines["tiny-sd3"]
    log = StepLog()
    with attnkit.attach(pipe, log, attnkit.sites(pipe)[-1:]):  # a block that is not skipped
        generate(pipe, steps=3, num_images_per_prompt=2, skip_guidance_layers=[0], skip_layer_guidance_stop=1.0)
    guided = ("uncond", "uncond", "cond", "cond")
    assert [b for _, _, b in log.seen] == [guided, guided, ("cond", "cond"), guided, ("cond", "cond")]  # not at step 0


def test_step_counts_from_the_start_of_an_img2img_run(pipelines):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**pipelines["tiny-sd15"].components)
    log = StepLog()
    image = torch.rand(1, 3, 64, 64)
    loop = []
    with attnkit.attach(pipe, log):
        generate(pipe, steps=4, image=image, strength=0.5, callback_on_step_end=lambda p, i, t, kw: loop.append(i) or kw)
    assert loop == [0, 1, 2]  # half of 4 PNDM steps, plus the one PNDM repeats
    assert sorted({(s, n) for s, n, _ in log.seen}) == [(0, 3), (1, 3), (2, 3)]


def test_unknown_processor_is_refused_before_anything_changes(pipelines):
    pipe = pipelines["tiny-sd15"]
    site = attnkit.sites(pipe).select(kind="self")[0]
    module = pipe.unet.get_submodule(site.module_name)
    stock = module.processor

    class Custom(AttnProcessor2_0):
        pass

    module.set_processor(Custom())
    try:
        _, before = processors(pipe)
        with pytest.raises(AttnkitError, match=f"cannot take over 1 attention site.*{site.name}: Custom"):
            attnkit.attach(pipe, Noop()).__enter__()
        _, after = processors(pipe)
        assert all(after[k] is before[k] for k in before) and hooks(pipe.unet) == []
        with attnkit.attach(pipe, Noop(), kind="cross"):  # other sites still work
            generate(pipe)
    finally:
        module.set_processor(stock)


def test_two_controls_cannot_both_own_the_kernel(pipelines):
    class Owner(Control):
        def __init__(self, name):
            self.name = name

        def before(self, call):
            call.use_kernel(lambda c: attnkit.ops.attention(c.q, c.k, c.v, c.mask, c.scale), self.name)

    pipe = pipelines["tiny-sd3"]
    with pytest.raises(AttnkitError, match="two features want to compute attention"):
        with attnkit.attach(pipe, Owner("a")), attnkit.attach(pipe, Owner("b")):
            generate(pipe)
    _, after = processors(pipe)
    assert not any(isinstance(p, SiteProcessor) for p in after.values())
