"""The session's step is the pipeline loop's index at every denoiser call, for every scheduler the SD1.x, SDXL, SD3
and Flux pipelines accept; attention maps and regional step schedules are right on each of them."""

import inspect

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

import attnkit
import attnkit.maps
from attnkit import Control
from attnkit.regional import supports as regional_supported

UNET_SCHEDULERS = {
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "pndm-prk": (PNDMScheduler, {"skip_prk_steps": False}),
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "kdpm2": (KDPM2DiscreteScheduler, {}),
    "kdpm2-ancestral": (KDPM2AncestralDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {}),
    "dpm++2m-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "dpm-singlestep": (DPMSolverSinglestepScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "deis": (DEISMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
}
FLOW_SCHEDULERS = {
    "flowmatch-euler": (FlowMatchEulerDiscreteScheduler, {}),
    "flowmatch-heun": (FlowMatchHeunDiscreteScheduler, {}),
    "unipc-flow": (UniPCMultistepScheduler, {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
    "dpm++2m-flow": (DPMSolverMultistepScheduler, {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
}
# FluxPipeline passes `sigmas=` and `mu=` to `set_timesteps`, which only dynamic-shifting FlowMatch Euler takes.
FLUX_SCHEDULERS = ("flowmatch-euler",)
CASES = (
    [(model, name) for model in ("tiny-sd15", "tiny-sdxl") for name in UNET_SCHEDULERS]
    + [("tiny-sd3", name) for name in FLOW_SCHEDULERS]
    + [("tiny-flux", name) for name in FLUX_SCHEDULERS]
)
STEPS = 5


class StepLog(Control):
    """What the state says at each denoiser call, logged at one site beside the loop's own callbacks."""

    name = "step-log"

    def __init__(self, events):
        self.events = events

    def before(self, call):
        self.events.append(("forward", call.state.step, call.state.num_steps))


class MaskedSteps(Control):
    """Steps at which a control running earlier on the site restricted attention."""

    name = "masked-steps"

    def __init__(self):
        self.steps = set()

    def before(self, call):
        if call.has_mask or call.kernel is not None:
            self.steps.add(call.state.step)


@pytest.fixture
def scheduled(pipelines, request):
    """The shared tiny pipeline with the case's scheduler built from its own config, put back afterwards."""
    model, name = request.param
    pipe = pipelines[model]
    cls, overrides = {**UNET_SCHEDULERS, **FLOW_SCHEDULERS}[name]
    original = pipe.scheduler
    pipe.scheduler = cls.from_config(original.config, **overrides)
    yield pipe
    pipe.scheduler = original


def run(pipe, events=None, **kwargs):
    if "prompt_embeds" not in kwargs:
        kwargs.setdefault("prompt", "a red circle and a blue square")
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    if events is not None:
        def loop_end(pipeline, i, t, tensors):
            events.append(("loop", i))
            return tensors
        kwargs["callback_on_step_end"] = loop_end
    with torch.inference_mode():
        return pipe(output_type="latent", **kwargs).images


def assert_steps_follow_the_loop(events):
    """Every forward before the loop's callback for iteration i reports step i and the loop's length."""
    loops = [i for kind, i, *_ in events if kind == "loop"]
    assert loops == list(range(len(loops))) and loops
    i, forwards = 0, 0
    for kind, step, *total in events:
        if kind == "loop":
            assert forwards > 0, f"no denoiser call in loop iteration {i}"
            i, forwards = i + 1, 0
        else:
            assert (step, total[0]) == (i, len(loops)), f"forward in loop iteration {i} reported {step}/{total[0]}"
            forwards += 1


@pytest.mark.parametrize("scheduled", CASES, indirect=True, ids=[f"{m}-{s}" for m, s in CASES])
def test_state_step_is_the_loop_index_and_maps_are_complete(scheduled):
    pipe = scheduled
    events = []
    site = attnkit.sites(pipe)[:1]
    with attnkit.attach(pipe, StepLog(events), site):
        run(pipe, events)
    assert_steps_follow_the_loop(events)
    with attnkit.maps.trace(pipe, "a red circle and a blue square") as tc:
        run(pipe)
    heat = tc.heatmap("circle")
    assert torch.isfinite(heat).all() and heat.sum() > 0


@pytest.mark.parametrize("model", ("tiny-sd15", "tiny-sdxl"))
@pytest.mark.parametrize("custom", ("timesteps", "sigmas"))
def test_custom_timesteps_and_sigmas_give_loop_steps(pipelines, model, custom):
    pipe = pipelines[model]
    original = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(original.config)
    values = [999, 800, 500, 200, 50] if custom == "timesteps" else [14.0, 6.0, 2.5, 1.0, 0.3, 0.0]
    events = []
    try:
        with attnkit.attach(pipe, StepLog(events), attnkit.sites(pipe)[:1]):
            run(pipe, events, num_inference_steps=None, **{custom: values})
    finally:
        pipe.scheduler = original
    assert_steps_follow_the_loop(events)
    assert sum(kind == "loop" for kind, *_ in events) == 5


@pytest.mark.parametrize("model", ("tiny-sd3", "tiny-flux"))
def test_custom_sigmas_on_flow_pipelines_give_loop_steps(pipelines, model):
    pipe = pipelines[model]
    events = []
    with attnkit.attach(pipe, StepLog(events), attnkit.sites(pipe)[:1]):
        run(pipe, events, num_inference_steps=4, sigmas=[1.0, 0.8, 0.5, 0.2])
    assert_steps_follow_the_loop(events)
    assert sum(kind == "loop" for kind, *_ in events) == 4


def test_img2img_steps_start_at_zero_where_the_strength_begins(pipelines):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**pipelines["tiny-sd15"].components)
    image = torch.rand(1, 3, 64, 64)
    for cls, overrides in (UNET_SCHEDULERS["pndm"], UNET_SCHEDULERS["heun"], UNET_SCHEDULERS["ddim"]):
        original = pipe.scheduler
        pipe.scheduler = cls.from_config(original.config, **overrides)
        events = []
        try:
            with attnkit.attach(pipe, StepLog(events), attnkit.sites(pipe)[:1]):
                run(pipe, events, image=image, strength=0.5, num_inference_steps=6)
        finally:
            pipe.scheduler = original
        assert_steps_follow_the_loop(events)
        assert 0 < sum(kind == "loop" for kind, *_ in events) < 2 * 6


def _true_cfg(pipe):
    """Guidance against the spec's negative on pipelines that guide only so (Flux)."""
    return {"true_cfg_scale": 2.0} if "true_cfg_scale" in inspect.signature(type(pipe).__call__).parameters else {}


@pytest.mark.parametrize("scheduled", CASES, indirect=True, ids=[f"{m}-{s}" for m, s in CASES])
def test_regional_step_schedule_masks_exactly_its_steps(scheduled):
    pipe = scheduled
    assert regional_supported(pipe)
    unet = hasattr(pipe, "unet")
    spec = {"negative": "", "regions": [{"prompt": "a red circle", "box": [0, 0, 0.5, 1]},
                                        {"prompt": "a blue square", "box": [0.5, 0, 1, 1]}]}
    observer = MaskedSteps()
    with attnkit.regional(pipe, spec, steps=(1, 3), **({} if unet else {"max_sequence_length": 8})) as call:
        with attnkit.attach(pipe, observer, kind="cross" if unet else "joint"):
            run(pipe, **call(seed=0, num_inference_steps=STEPS, **_true_cfg(pipe)))
    assert observer.steps == {1, 2}


@pytest.mark.parametrize("name", ("euler", "ddim", "pndm", "heun"))
def test_sdxl_denoising_end_stops_the_loop_early_and_steps_still_follow_it(pipelines, name):
    pipe = pipelines["tiny-sdxl"]
    cls, overrides = UNET_SCHEDULERS[name]
    original = pipe.scheduler
    pipe.scheduler = scheduler = cls.from_config(original.config, **overrides)
    events = []
    try:
        with attnkit.attach(pipe, StepLog(events), attnkit.sites(pipe)[:1]):
            run(pipe, events, num_inference_steps=6, denoising_end=0.5)
    finally:
        pipe.scheduler = original
    assert_steps_follow_the_loop(events)
    assert 0 < sum(kind == "loop" for kind, *_ in events) < len(scheduler.timesteps)
