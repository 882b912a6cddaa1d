"""The shipped edge ControlNet of shapes-sd15: a stock fp16 folder, deterministic, trainable in seconds, and it
puts objects where the edge map says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnkit import AttnkitError
from attnkit.kv.video import edges
from attnkit.shapes import MODELS_DIR, load
from attnkit.shapes.controlnet import NAME, build, edge_following, load_controlnet, main, ship
from attnkit.shapes.data import random_scene


@pytest.fixture(scope="module")
def sd15():
    pipe = load("shapes-sd15")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def controlnet():
    return load_controlnet()


def test_shipped_controlnet_is_a_small_fp16_folder_that_loads_as_fp32(sd15, controlnet) -> None:
    from safetensors import safe_open

    folder = MODELS_DIR / NAME
    for name in ("config.json", "README.md", "training.json", "loss.jsonl", "edge-following.json"):
        assert (folder / name).is_file(), name
    with safe_open(folder / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F16"}
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5 * 2**20
    assert type(controlnet).__name__ == "ControlNetModel" and controlnet.dtype == torch.float32
    channels = controlnet.config.conditioning_embedding_out_channels
    assert 2 ** (len(channels) - 1) == sd15.vae_scale_factor, "the condition must land on the latent grid"


def test_unknown_controlnet_is_an_attnkit_error_naming_the_shipped_one(tmp_path) -> None:
    with pytest.raises(AttnkitError, match=NAME):
        load_controlnet(str(tmp_path / "nope"))


def test_two_step_controlnet_img2img_is_deterministic_and_reads_the_condition(sd15, controlnet) -> None:
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pipe(sd15, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    scene = random_scene(0)
    image = Image.fromarray(scene.image)

    def run(scale: float = 1.0) -> np.ndarray:
        return pipe(scene.caption, image=image, control_image=edges(image), strength=0.5, num_inference_steps=4,
                    controlnet_conditioning_scale=scale, generator=torch.Generator().manual_seed(0),
                    output_type="np").images[0]

    first, second = run(), run()
    assert first.shape == (64, 64, 3)
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - run(0.0)).max() > 0.01, "the ControlNet must change the image"


def test_trainer_writes_reproducible_loadable_weights_and_ships_them(tmp_path) -> None:
    for run in "ab":
        assert main(["--out", str(tmp_path / run), "--steps", "2", "--batch", "2", "--minutes", "1"]) == 0
    checkpoint = tmp_path / "a" / "controlnet"
    weights = checkpoint / "diffusion_pytorch_model.safetensors"
    assert weights.read_bytes() == (tmp_path / "b" / "controlnet" / weights.name).read_bytes()
    training = json.loads((checkpoint / "training.json").read_text())
    assert training["steps"] == 2 and training["device"] == "cpu"
    assert [json.loads(line)["step"] for line in (tmp_path / "a" / "loss.jsonl").read_text().splitlines()] == [2]
    trained = load_controlnet(str(checkpoint))
    assert any(block.weight.abs().max() > 0 for block in trained.controlnet_down_blocks), "zero convs never moved"
    fresh = build(load("shapes-sd15"), seed=0)
    assert all(block.weight.abs().max() == 0 for block in fresh.controlnet_down_blocks)

    shipped = ship(checkpoint, "edges-x", models_dir=tmp_path / "models", seeds=2, steps=2)
    assert load_controlnet(str(shipped)).dtype == torch.float32
    card = (shipped / "README.md").read_text()
    assert "- 2 steps of batch 2" in card and "on one CPU thread" in card
    assert (shipped / "loss.jsonl").read_bytes() == (tmp_path / "a" / "loss.jsonl").read_bytes()


def test_trainer_continues_a_controlnet_on_a_base_at_another_size(tmp_path) -> None:
    base = load("shapes-sd15")
    base.vae.register_to_config(sample_size=128)  # the shapes world at 128 px: what `train.py --size 128` records
    base.save_pretrained(tmp_path / "base")
    assert main(["--out", str(tmp_path / "a"), "--steps", "1", "--batch", "1", "--minutes", "1"]) == 0
    first = tmp_path / "a" / "controlnet"
    assert main(["--out", str(tmp_path / "b"), "--steps", "1", "--batch", "1", "--minutes", "1",
                 "--base", str(tmp_path / "base"), "--init", str(first)]) == 0
    training = json.loads((tmp_path / "b" / "controlnet" / "training.json").read_text())
    assert training["size"] == 128 and training["init"] == str(first) and training["base"] == str(tmp_path / "base")
    started, continued = (load_controlnet(str(run / "controlnet")) for run in (tmp_path / "a", tmp_path / "b"))
    moved = [(a.weight - b.weight).abs().max() for a, b in zip(started.controlnet_down_blocks,
                                                               continued.controlnet_down_blocks)]
    assert 0 < max(moved) < 0.01, "one step from the first run's weights, not from zero convolutions"
    shipped = ship(tmp_path / "b" / "controlnet", "edges-128", models_dir=tmp_path / "models", seeds=1, steps=1)
    card = (shipped / "README.md").read_text()
    assert "black, 128x128)" in card and "128 px to the 32x32 latents" in card
    assert "- `--init` with the weights of ControlNet `controlnet`, then 1 steps" in card


def test_time_box_stops_training_with_a_checkpoint(tmp_path) -> None:
    assert main(["--out", str(tmp_path), "--steps", "50", "--batch", "2", "--minutes", "0.0001"]) == 0
    training = json.loads((tmp_path / "controlnet" / "training.json").read_text())
    assert training["steps"] == 1 and training["planned_steps"] == 50


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "--steps"), (["--ship", "edges-x"], "checkpoint")])
def test_controlnet_cli_refuses_bad_input(tmp_path, argv: list[str], message: str) -> None:
    with pytest.raises(AttnkitError, match=message):
        main(["--out", str(tmp_path), *argv])


def test_generated_objects_follow_the_edge_map_only_with_the_controlnet(sd15, controlnet) -> None:
    measured = edge_following(sd15, controlnet, seeds=8)
    with_cn, without = measured["with"], measured["without"]
    assert with_cn["iou"] > 0.6 and without["iou"] < 0.3, measured
    assert min(with_cn["iou_per_object"]) > 0.4, "every object must sit on its outline"
