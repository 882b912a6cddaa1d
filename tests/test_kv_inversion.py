"""Inversion takes an image back to the noise its regeneration starts from: DDIM's steps as MasaCtrl's and
StyleAligned's code run them backwards, flow matching's Euler steps from sigma 0 up, each equal in float64 to an
independent loop written from those equations; a generated image regenerated from its inversion; a real image's
regeneration attended to by MasaCtrl; and the errors a user meets."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

import attnkit.kv as kv
from attnkit import AttnkitError
from attnkit.testing import build_pipeline, sd15_layout_pipeline

STEPS = 6


@pytest.fixture(scope="module")
def fp64():
    torch.set_num_threads(1)
    built = {"sd15-layout": sd15_layout_pipeline(), "tiny-sd3": build_pipeline("tiny-sd3")}
    for pipe in built.values():
        pipe.to(torch.float64)
        pipe.set_progress_bar_config(disable=True)
    return built


def picture(seed=0, size=64):
    pixels = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.BILINEAR)


def vae_latents(pipe, image):
    pixels = pipe.image_processor.preprocess(image).to(torch.float64)
    vae = pipe.vae
    return (vae.encode(pixels).latent_dist.mean - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def ddim_inversion_oracle(pipe, image, prompt, steps, guidance):
    """MasaCtrl's `invert` (and StyleAligned's `ddim_inversion`): at each timestep t of the run, taken in reverse,
    the noise predicted at t (guided against the empty prompt) moves the latents from alpha[t - 1000 / steps]
    (alpha[0] before the first, as their scheduler's `final_alpha_cumprod`) to alpha[t]."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, "")
    latents, trajectory = vae_latents(pipe, image), []
    alphas = scheduler.alphas_cumprod  # float32, as the reference's scheduler holds them
    for t in reversed(scheduler.timesteps):
        both = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps = both[0:1] + guidance * (both[1:2] - both[0:1])
        source = int(t) - scheduler.config.num_train_timesteps // steps
        alpha = alphas[source] if source >= 0 else alphas[0]
        clean = (latents - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        latents = alphas[int(t)].sqrt() * clean + (1 - alphas[int(t)]).sqrt() * eps
        trajectory.append(latents)
    return trajectory


def euler_inversion_oracle(pipe, image, prompt, steps):
    """Rectified flow's ODE dx/dsigma = v integrated with Euler steps from sigma 0 through the run's sigmas in
    reverse, the velocity taken at each step's start (the schedule's float32 sigmas, as the forward run has them)."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, prompt, prompt, device="cpu", do_classifier_free_guidance=False)
    sigmas = scheduler.sigmas.flip(0)
    latents, trajectory = vae_latents(pipe, image), []
    for here, there in zip(sigmas[:-1], sigmas[1:]):
        velocity = pipe.transformer(latents, encoder_hidden_states=embeds, pooled_projections=pooled,
                                    timestep=(here * scheduler.config.num_train_timesteps).reshape(1)).sample
        latents = latents + (there - here) * velocity
        trajectory.append(latents)
    return trajectory


@pytest.mark.parametrize(("prompt", "guidance"), [("", 1.0), ("a red circle", 2.0)])
def test_ddim_inversion_equals_the_reference_codes_loop_in_float64(fp64, prompt, guidance, figures):
    """MasaCtrl inverts with the empty prompt, StyleAligned with the image's description at guidance 2."""
    pipe = fp64["sd15-layout"]
    with torch.inference_mode():
        inversion = kv.invert(pipe, picture(), prompt, num_inference_steps=STEPS, guidance_scale=guidance)
        expected = ddim_inversion_oracle(pipe, picture(), prompt, STEPS, guidance)
    assert len(inversion.trajectory) == STEPS + 1
    differences = [float((got - want).abs().max()) for got, want in zip(inversion.trajectory[1:], expected)]
    figures[f"ddim-inversion/sd15-layout/guidance-{guidance:g}"] = max(differences)
    assert max(differences) < 1e-10, differences
    assert torch.equal(inversion.latents, inversion.trajectory[-1])
    assert type(pipe.scheduler) is DDIMScheduler


def test_flow_matching_inversion_equals_euler_steps_backwards_in_float64(fp64, figures):
    pipe = fp64["tiny-sd3"]
    with torch.inference_mode():
        inversion = kv.invert(pipe, picture(size=32), "a red circle", num_inference_steps=STEPS)
        expected = euler_inversion_oracle(pipe, picture(size=32), "a red circle", STEPS)
    differences = [float((got - want).abs().max()) for got, want in zip(inversion.trajectory[1:], expected)]
    figures["flow-matching-inversion/tiny-sd3"] = max(differences)
    assert max(differences) < 1e-6, differences  # diffusers' flow-matching step adds in float32
    assert float((expected[-1] - vae_latents(pipe, picture(size=32))).abs().max()) > 0.1  # it did move


def test_a_scene_inverted_with_50_ddim_steps_is_regenerated_within_5_percent_of_the_latent_range(figures):
    """shapes-sd15 with DDIM, each scene inverted with its caption and regenerated from the inverted latents: the mean
    latent error stays under 5% of the clean latents' range (the picture loses detail: these small models invert
    roughly)."""
    from attnkit import shapes
    from attnkit.shapes.data import random_scene

    torch.set_num_threads(1)
    pipe = shapes.load("shapes-sd15")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    call = {"num_inference_steps": 50, "guidance_scale": 1.0}
    errors = []
    for seed in (5, 6, 7):
        scene = random_scene(seed)
        inversion = kv.invert(pipe, Image.fromarray(scene.image), scene.caption, **call)
        with torch.inference_mode():
            regenerated = pipe(scene.caption, latents=inversion.latents, output_type="latent", **call).images
        clean = inversion.trajectory[0]
        errors.append(float((regenerated - clean).abs().mean() / (clean.max() - clean.min())))
    figures["inversion/shapes-sd15/mean-latent-error-over-range"] = max(errors)
    assert max(errors) < 0.05, errors


@pytest.mark.parametrize("name", ["shapes-sd3", "shapes-flux"])
def test_a_generated_image_is_regenerated_from_its_inversion(name):
    """50 steps, as the methods' demos invert: the regeneration is within 2/255 of the image on average, while the
    same prompt from other noise draws another image. (shapes-sd15 draws nearly the same picture from any noise
    without guidance, so a round trip there would show nothing; its DDIM inversion is checked by parity above.)"""
    from attnkit import shapes

    torch.set_num_threads(1)
    pipe = shapes.load(name)
    pipe.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": 50, **shapes.call_kwargs(pipe)}
    if name != "shapes-flux":
        call["guidance_scale"] = 1.0

    def generate(**kwargs):
        with torch.inference_mode():
            return np.asarray(pipe("a red circle", **call, **kwargs).images[0]).astype(float)

    image = generate(generator=torch.Generator().manual_seed(3))
    inversion = kv.invert(pipe, Image.fromarray(image.astype(np.uint8)), "a red circle", **call)
    regenerated = generate(latents=inversion.latents)
    other = generate(generator=torch.Generator().manual_seed(4))
    assert np.abs(regenerated - image).mean() < 2.0
    assert np.abs(other - image).mean() > 4 * np.abs(regenerated - image).mean()


def test_masactrl_on_an_inverted_image_with_its_own_prompt_regenerates_it(pipelines):
    """The reference pass regenerates the image from its inversion and the edit starts from the same latents, so
    with the source prompt MasaCtrl's K/V are the edit's own and the edit is the regeneration."""
    pipe = pipelines["tiny-sd15"]
    forward = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(forward.config, timestep_spacing="trailing")
    try:
        call = {"num_inference_steps": 8, "guidance_scale": 1.0}
        inversion = kv.invert(pipe, picture(size=32), "a red circle", **call)
        with torch.inference_mode():
            regenerated = pipe("a red circle", latents=inversion.latents, output_type="latent", **call).images
            with kv.reference(pipe, picture(size=32), prompt="a red circle", inversion=inversion,
                              method="masactrl", start_step=2, start_layer=0, **call):
                same = pipe("a red circle", latents=inversion.latents, output_type="latent", **call).images
            with kv.reference(pipe, picture(size=32), prompt="a red circle", inversion=inversion,
                              method="masactrl", start_step=2, start_layer=0, **call):
                edited = pipe("a blue square", latents=inversion.latents, output_type="latent", **call).images
            plain_edit = pipe("a blue square", latents=inversion.latents, output_type="latent", **call).images
    finally:
        pipe.scheduler = forward
    assert torch.allclose(same, regenerated, atol=1e-5)
    assert (edited - regenerated).abs().mean() < (plain_edit - regenerated).abs().mean()


def test_an_inversion_of_other_steps_is_refused_by_the_reference_pass(pipelines):
    pipe = pipelines["tiny-sd15"]
    forward = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(forward.config, timestep_spacing="trailing")
    try:
        inversion = kv.invert(pipe, picture(size=32), num_inference_steps=4)
        with pytest.raises(AttnkitError, match="the inversion ran 4 steps and the reference pass would run 8: invert "
                                               "with the generation's steps"):
            kv.record_image(pipe, picture(size=32), inversion=inversion, num_inference_steps=8)
    finally:
        pipe.scheduler = forward


def test_a_scheduler_that_cannot_run_backwards_is_refused_with_the_fix(pipelines):
    pipe = pipelines["tiny-sd15"]
    with pytest.raises(AttnkitError, match=r"samples with \w+Scheduler: set `pipe.scheduler = DDIMScheduler"):
        kv.invert(pipe, picture(size=32))
    forward = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(forward.config, timestep_spacing="linspace")
    try:
        with pytest.raises(AttnkitError, match="spaces them 'linspace': .*timestep_spacing='trailing'"):
            kv.invert(pipe, picture(size=32))
    finally:
        pipe.scheduler = forward


def test_the_pipelines_scheduler_is_restored_when_the_inversion_raises(pipelines):
    pipe = pipelines["tiny-sd15"]
    forward = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    before, pipe.scheduler = pipe.scheduler, forward
    try:
        with pytest.raises(ValueError):
            kv.invert(pipe, picture(size=32), prompt=None)  # the pipeline's own error: no prompt, no embeddings
        assert pipe.scheduler is forward
    finally:
        pipe.scheduler = before
