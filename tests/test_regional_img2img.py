"""Regional prompting on the stock img2img and inpaint pipelines (`AutoPipelineFor*.from_pipe`): the size comes from
the init image, a whole-image region is the plain pipeline, inpainting keeps what the stock pipeline keeps, step
ranges count the steps img2img runs, and `attnkit regional --init-image / --strength / --mask-image`; on every
tiny architecture."""

import json
import re

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoPipelineForImage2Image, AutoPipelineForInpainting, SD3Transformer2DModel
from PIL import Image

import attnkit
from attnkit import AttnkitError, Control
from attnkit.cli import main
from attnkit.pipeline import init_size, takes_size
from regional_helpers import LEFT_RIGHT, latents

ARCHITECTURES = ("tiny-sd3", "tiny-sd35", "tiny-flux", "tiny-sd15", "tiny-sdxl")
WHOLE = {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, 1]}]}
SHARED = {"strength": 0.6, "num_inference_steps": 3}


def init_image(height: int = 64, width: int = 64, seed: int = 0) -> Image.Image:
    """Coloured noise: every pixel differs, so a changed pixel shows."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def left_half_mask(height: int = 64, width: int = 64) -> Image.Image:
    """White (repaint) on the left half, black (keep) on the right."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    return mask


@pytest.fixture(scope="module")
def derived():
    """img2img / inpaint siblings made once per (model, kind), sharing the session's tiny pipelines' modules."""
    return {}


def img2img(pipelines, derived, name: str):
    pipe = pipelines[name]
    if (name, "img2img") not in derived:
        sibling = AutoPipelineForImage2Image.from_pipe(pipe)
        sibling.set_progress_bar_config(disable=True)
        derived[name, "img2img"] = sibling
    return derived[name, "img2img"]


def inpaint(pipelines, derived, name: str):
    """The stock SD3 inpaint pipeline refuses a transformer without 16 (or 33) input channels and tiny SD3 has 4:
    on SD3 the sibling gets a 16-channel VAE and transformer of the same tiny architecture, as SD3 itself has."""
    pipe = pipelines[name]
    if (name, "inpaint") not in derived:
        modules = {}
        if hasattr(pipe, "text_encoder_3"):
            with torch.random.fork_rng():
                torch.manual_seed(0)
                modules = {"transformer": SD3Transformer2DModel.from_config(pipe.transformer.config, in_channels=16,
                                                                            out_channels=16).eval(),
                           "vae": AutoencoderKL.from_config(pipe.vae.config, latent_channels=16).eval()}
        sibling = AutoPipelineForInpainting.from_pipe(pipe, **modules)
        sibling.set_progress_bar_config(disable=True)
        derived[name, "inpaint"] = sibling
    return derived[name, "inpaint"]


def sized(pipe, height: int, width: int) -> dict:
    """height/width for pipelines that take them (SD1.x / SDXL img2img take the init image's size)."""
    return {"height": height, "width": width} if takes_size(pipe) else {}


def embeddings(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k.endswith("prompt_embeds")}


class StepRecorder(Control):
    """Per attention call: the step attnkit read, the denoiser's timestep, and whether a mask was applied."""

    name = "test-step-recorder"

    def __init__(self):
        self.calls = []

    def after(self, call, out, lse):
        self.calls.append((call.state.step, call.state.num_steps, call.state.timestep, call.has_mask))


# --- the Python API ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ARCHITECTURES)
def test_img2img_with_regions_runs_masked_at_the_init_images_size(pipelines, derived, name):
    pipe = img2img(pipelines, derived, name)
    with attnkit.regional(pipe, LEFT_RIGHT) as call:
        kwargs = call(seed=0, image=init_image(48, 64), **SHARED)
        with torch.inference_mode():
            image = pipe(output_type="np", **kwargs).images[0]
        plans = call.control._plans
    assert image.shape[:2] == (48, 64)
    assert plans and all(rows * 64 == cols * 48 for rows, cols in (key[1] for key in plans))  # the image's grid
    assert any(not plan.noop for plan in plans.values())
    assert kwargs.get("height", 48) == 48 and kwargs.get("width", 64) == 64


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_whole_image_region_img2img_equals_the_plain_img2img_with_the_same_embeddings(pipelines, derived, name):
    pipe = img2img(pipelines, derived, name)
    image = init_image(48, 64)
    with attnkit.regional(pipe, WHOLE) as call:
        kwargs = call(seed=3, image=image, **SHARED)
        got = latents(pipe, **kwargs)
    want = latents(pipe, **embeddings(kwargs), image=image, **sized(pipe, 48, 64), **SHARED,
               generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_inpaint_with_regions_keeps_exactly_what_the_stock_inpaint_pipeline_keeps(pipelines, derived, name):
    """The stock pipeline puts the init image's latents back outside the mask after every step, so what it keeps is
    read from it: the latents two stock runs with different prompts (same seed, same noise) agree on. The regional
    run must keep the same latents, bit for bit, and repaint the rest."""
    pipe = inpaint(pipelines, derived, name)
    common = {"image": init_image(), "mask_image": left_half_mask(), **sized(pipe, 64, 64), **SHARED}
    stock = [latents(pipe, prompt=prompt, generator=torch.Generator().manual_seed(0), **common)
             for prompt in ("a red circle", "a green triangle")]
    kept = stock[0] == stock[1]
    assert kept.any() and not kept.all()
    with attnkit.regional(pipe, LEFT_RIGHT) as call:
        got = latents(pipe, **call(seed=0, **common))
    assert torch.equal(got[kept], stock[0][kept])
    assert not torch.equal(got[~kept], stock[0][~kept])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_step_range_masks_the_img2img_loops_second_step_at_strength_0_6(pipelines, derived, name):
    """5 steps at strength 0.6 run the last 3 of the scheduler's timesteps (4 with PNDM, whose PLMS schedule repeats
    one); steps=(1, 2) is the second of those, located here by the denoiser's own timestep, not by attnkit's step."""
    pipe = img2img(pipelines, derived, name)
    recorder = StepRecorder()
    executed = []
    with attnkit.regional(pipe, LEFT_RIGHT, steps=(1, 2)) as call:
        with attnkit.attach(pipe, recorder):
            latents(pipe, **call(seed=0, image=init_image(), strength=0.6, num_inference_steps=5),
                callback_on_step_end=lambda p, i, t, kw: executed.append(i) or {})
    timesteps = list(dict.fromkeys(timestep for _, _, timestep, _ in recorder.calls))
    loop = 4 if type(pipe.scheduler).__name__ == "PNDMScheduler" else 3
    assert executed == list(range(loop)) and len(timesteps) == loop
    assert {timestep for _, _, timestep, masked in recorder.calls if masked} == {timesteps[1]}
    assert {(step, num_steps, timestep) for step, num_steps, timestep, _ in recorder.calls} == {
        (i, loop, timestep) for i, timestep in enumerate(timesteps)}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_spec_is_checked_on_the_init_images_token_grid_not_the_default_size(pipelines, derived, name):
    """A top strip 3/4 of a token row high at 128 pixels owns that row, but at the default 64 pixels it covers less
    than half of the (twice as high) first row, which goes to the region below."""
    pipe = img2img(pipelines, derived, name)
    top = 0.75 / attnkit.regional(pipe, LEFT_RIGHT).grid(128, 64)[0]
    strip = {"regions": [{"prompt": "a red circle", "box": [0, 0, 1, top]},
                         {"prompt": "a blue square", "box": [0, top, 1, 1]}]}
    with attnkit.regional(pipe, strip) as call:
        kwargs = call(seed=0, image=init_image(128, 64), **SHARED)
        assert kwargs.get("height", 128) == 128
        with pytest.raises(AttnkitError, match=r"region\(s\) \[1\] get no image token"):
            call(seed=0, image=init_image(64, 64), **SHARED)


BAD_CALLS = {
    "height differs": ({"image": init_image(48, 64), "height": 64}, "height=64, but the init image is 48x64"),
    "width differs": ({"image": init_image(48, 64), "width": 48}, "width=48, but the init image is 48x64"),
    "does not tile": ({"image": init_image(60, 64)}, "init image 60x64 is not divisible by the token grid"),
    "sizes differ": ({"image": [init_image(48, 64), init_image(64, 64)]}, "the init images differ in size"),
    "no size": ({"image": "in.png"}, "cannot tell the size of an init image of type str"),
    "crop": ({"image": init_image(), "mask_image": left_half_mask(), "padding_mask_crop": 8},
             "padding_mask_crop generates only a crop"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_each_bad_init_image_call_is_one_error_naming_the_fix(pipelines, derived, case):
    pipe = img2img(pipelines, derived, "tiny-sd3")
    kwargs, message = BAD_CALLS[case]
    with attnkit.regional(pipe, LEFT_RIGHT) as call:
        with pytest.raises(AttnkitError, match=re.escape(message)):
            call(seed=0, **kwargs)


def test_init_size_reads_images_arrays_tensors_lists_and_latents(pipelines, derived):
    pipe = img2img(pipelines, derived, "tiny-sd3")
    latents = torch.zeros(1, pipe.vae.config.latent_channels, 12, 16)
    assert init_size(pipe, latents) == (12 * pipe.vae_scale_factor, 16 * pipe.vae_scale_factor)
    for image in (init_image(48, 64), [init_image(48, 64)] * 2, np.zeros((48, 64, 3)), np.zeros((2, 48, 64, 3)),
                  torch.zeros(3, 48, 64), torch.zeros(2, 3, 48, 64)):
        assert init_size(pipe, image) == (48, 64)
    assert init_size(pipe, init_image(48, 64), 48, 64) == (48, 64)


# --- the command line ----------------------------------------------------------------------------------------------

def exit_code(argv):
    try:
        return main(argv)
    except SystemExit as error:
        return error.code


@pytest.fixture
def files(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(LEFT_RIGHT))
    init_image(48, 64).save(tmp_path / "in.png")
    left_half_mask(48, 64).save(tmp_path / "mask.png")
    return {"spec": str(spec), "init": str(tmp_path / "in.png"), "mask": str(tmp_path / "mask.png"),
            "out": tmp_path / "out.png"}


def test_cli_init_image_and_strength_give_the_init_images_size_and_are_recorded(files):
    argv = ["regional", "tiny-sd3", "--spec", files["spec"], "--init-image", files["init"], "--strength", "0.5",
            "--steps", "2", "--out", str(files["out"])]
    assert main(argv) == 0
    image = Image.open(files["out"])
    record = json.loads(image.text["attnkit"])
    assert image.size == (64, 48) and (record["height"], record["width"]) == (48, 64)
    assert (record["init_image"], record["strength"], record["mask_image"]) == (files["init"], 0.5, None)


def test_cli_mask_image_inpaints_and_records_the_mask_and_the_default_strength(files, tmp_path):
    argv = ["regional", "tiny-flux", "--spec", files["spec"], "--init-image", files["init"], "--steps", "2"]
    assert main([*argv, "--out", str(tmp_path / "img2img.png")]) == 0
    assert main([*argv, "--mask-image", files["mask"], "--out", str(files["out"])]) == 0
    record = json.loads(Image.open(files["out"]).text["attnkit"])
    assert (record["init_image"], record["mask_image"], record["strength"]) == (files["init"], files["mask"], 0.6)
    inpainted, plain = (np.asarray(Image.open(p), dtype=np.int16) for p in (files["out"], tmp_path / "img2img.png"))
    assert np.abs(inpainted - plain).max() > 0


@pytest.mark.parametrize("strength", ["0", "1.5", "-0.2", "nan"])
def test_cli_strength_outside_0_to_1_is_a_usage_error_naming_the_option(files, capsys, strength):
    argv = ["regional", "tiny-sd3", "--spec", files["spec"], "--init-image", files["init"], "--out", str(files["out"])]
    assert exit_code([*argv, f"--strength={strength}"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--strength" in last and "give a number above 0 and at most 1" in last
    assert not files["out"].exists()


CLI_ERRORS = {
    "mask without init": (["--mask-image", "{mask}"], "--mask-image needs --init-image"),
    "strength without init": (["--strength", "0.5"], "--strength needs --init-image"),
    "unreadable init image": (["--init-image", "{spec}"], "cannot read --init-image"),
    "unreadable mask": (["--init-image", "{init}", "--mask-image", "{spec}"], "cannot read --mask-image"),
    "height differs from the init image": (["--init-image", "{init}", "--height", "64"],
                                           "height=64, but the init image is 48x64"),
}


@pytest.mark.parametrize("case", CLI_ERRORS)
def test_cli_init_image_option_errors_exit_2_with_the_fix(files, capsys, case):
    extra, message = CLI_ERRORS[case]
    argv = ["regional", "tiny-sd3", "--spec", files["spec"], "--steps", "1", "--out", str(files["out"])]
    assert exit_code([*argv, *(a.format(**files) for a in extra)]) == 2
    assert message in capsys.readouterr().err
    assert not files["out"].exists()
