"""Shapes world: the generator's ground truth, the scorer that judges generated images, the shipped model."""

from __future__ import annotations

import argparse
import inspect
import json

import numpy as np
import pytest
import torch

from attnkit import AttnkitError
from attnkit.run import call_kwargs as model_call_kwargs
from attnkit.sites import denoiser_of
from attnkit.shapes import GUIDANCE, MODEL_NAMES, MODELS_DIR, call_kwargs, guidance_kwargs, image_size, load
from attnkit.shapes import train
from attnkit.shapes.package import model_card, package
from attnkit.shapes.data import BACKGROUND, PALETTE, ShapeObject, random_scene, random_video, render
from attnkit.shapes.scorer import detect, follows_prompt, region_success
from attnkit.shapes.tokenizer import MAX_LENGTH, WORDS, shapes_t5_tokenizer, shapes_tokenizer

LEFT = np.zeros((64, 64), bool)
LEFT[:, :32] = True
RIGHT = ~LEFT


@pytest.mark.parametrize("seed", range(20))
def test_masks_are_exactly_the_drawn_pixels(seed: int) -> None:
    scene = random_scene(seed)
    assert len(scene.objects) == len(scene.masks) >= 1
    assert scene.caption == " and ".join(f"a {o.color} {o.shape}" for o in scene.objects)
    assert not (scene.masks.sum(0) > 1).any(), "objects overlap"
    for obj, mask in zip(scene.objects, scene.masks):
        assert mask.sum() > 50
        assert (scene.image[mask] == PALETTE[obj.color]).all()
    assert (scene.image[~scene.masks.any(0)] == BACKGROUND).all()


def test_video_masks_follow_the_moving_object() -> None:
    video = random_video(3, frames=6)
    assert video.frames.shape == (6, 64, 64, 3) and video.masks.shape == (6, 64, 64)
    color = PALETTE[video.path[0].color]
    for frame, mask, obj in zip(video.frames, video.masks, video.path):
        assert (mask == obj.mask()).all() and (frame[mask] == color).all()
    assert not (video.masks[0] == video.masks[-1]).all(), "the object should move"


@pytest.mark.parametrize("seed", range(10))
def test_scenes_at_twice_the_size_have_objects_twice_as_large_and_still_apart(seed: int) -> None:
    small, large = random_scene(seed), random_scene(seed, size=128)
    assert large.image.shape == (128, 128, 3) and large.caption == small.caption
    for obj, twin in zip(small.objects, large.objects):
        assert 12 <= obj.extent <= 22 and 24 <= twin.extent <= 44
    assert not (large.masks.sum(0) > 1).any(), "objects overlap"
    assert sorted((b.color, b.shape) for b in detect(large.image)) == sorted(
        (o.color, o.shape) for o in large.objects)
    video = random_video(seed, frames=4, size=128)
    assert video.frames.shape == (4, 128, 128, 3) and 24 <= video.path[0].extent <= 44


def test_scorer_is_right_on_ground_truth() -> None:
    for seed in range(100):
        scene = random_scene(seed)
        found = sorted((b.color, b.shape) for b in detect(scene.image))
        assert found == sorted((o.color, o.shape) for o in scene.objects), seed
    image, _ = render([ShapeObject("triangle", "yellow", 20, 20, 16)])
    assert follows_prompt(image, "yellow", "triangle") == (True, True)
    assert follows_prompt(image, "yellow", "circle") == (True, False)


def test_region_rule_is_object_level() -> None:
    separate, _ = render([ShapeObject("circle", "red", 20, 6, 18), ShapeObject("square", "green", 20, 40, 16)])
    assert region_success(separate, [LEFT, RIGHT], [("red", "circle"), ("green", "square")]) == [True, True]
    assert region_success(separate, [LEFT, RIGHT], [("green", None), ("red", None)]) == [False, False]
    # One square painted half red, half green across the border: two colours, one object, both regions fail.
    split = np.full((64, 64, 3), BACKGROUND, np.uint8)
    split[20:40, 22:32] = PALETTE["red"]
    split[20:40, 32:42] = PALETTE["green"]
    assert region_success(split, [LEFT, RIGHT], [("red", None), ("green", None)]) == [False, False]


def test_every_word_is_one_token() -> None:
    tokenizer = shapes_tokenizer()
    for word in WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a red circle and a blue square").input_ids
    assert len(ids) == 9 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    t5 = shapes_t5_tokenizer()
    for word in WORDS:
        assert len(t5(word, add_special_tokens=False).input_ids) == 1, word
    ids = t5("a red circle and a blue square", padding="max_length", max_length=MAX_LENGTH).input_ids
    assert len(ids) == MAX_LENGTH and ids[7] == t5.eos_token_id and ids[8:] == [t5.pad_token_id] * 8


def test_unknown_model_is_an_attnkit_error() -> None:
    with pytest.raises(AttnkitError, match="shapes-sd3"):
        load("shapes-nope")


@pytest.fixture(scope="module", params=MODEL_NAMES)
def shipped(request):
    return request.param, load(request.param)


PIPELINE_CLASSES = {"shapes-sd3": "StableDiffusion3Pipeline", "shapes-sd15": "StableDiffusionPipeline",
                    "shapes-flux": "FluxPipeline", "shapes-sd3-128": "StableDiffusion3Pipeline",
                    "shapes-flux-128": "FluxPipeline"}


def test_shipped_model_is_a_stock_pipeline_loaded_from_the_package(shipped) -> None:
    name, pipe = shipped
    assert (MODELS_DIR / name / "model_index.json").is_file() and (MODELS_DIR / name / "README.md").is_file()
    assert type(pipe).__name__ == PIPELINE_CLASSES[name]
    denoiser = denoiser_of(pipe)
    assert denoiser.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    size = sum(f.stat().st_size for f in (MODELS_DIR / name).rglob("*") if f.is_file())
    assert size < 25 * 2**20


def test_two_step_generation_is_deterministic_at_the_size_in_the_models_name(shipped) -> None:
    name, pipe = shipped
    side = 128 if name.endswith("-128") else 64

    def run() -> np.ndarray:
        out = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                   output_type="np", **call_kwargs(pipe))
        return out.images[0]

    first, second = run(), run()
    assert first.shape == (side, side, 3)
    np.testing.assert_array_equal(first, second)


def test_call_kwargs_drop_t5_padding_only_for_shapes_sd3(pipelines) -> None:
    sd3, sd15 = load("shapes-sd3"), pipelines["tiny-sd15"]
    assert call_kwargs(sd3) == {"max_sequence_length": 0} and call_kwargs(sd15) == {}
    assert model_call_kwargs("shapes-sd3", sd3) == {"max_sequence_length": 0}
    assert model_call_kwargs("tiny-sd3", pipelines["tiny-sd3"]) == {}, "stock SD3 pads T5 as usual"
    assert model_call_kwargs("tiny-flux", pipelines["tiny-flux"]) == {}, "stock Flux pads T5 as usual"
    assert guidance_kwargs(sd3) == guidance_kwargs(pipelines["tiny-flux"]) == {"guidance_scale": GUIDANCE}


def _train(out, *args: str) -> dict:
    assert train.main(["--out", str(out), "--steps", "2", "--scenes", "24", "--minutes", "5", *args]) == 0
    return json.loads((out / "pipeline" / "training.json").read_text())


@pytest.mark.parametrize("arch", ["sd3", "flux", "sd15"])
def test_trainer_is_reproducible_and_continues_a_saved_run(tmp_path, arch: str) -> None:
    vae = ["--vae-steps", "2"] if arch == "sd3" else ["--vae", str(MODELS_DIR / "shapes-sd3" / "vae")]
    first = _train(tmp_path / "a", "--arch", arch, *vae)
    _train(tmp_path / "b", "--arch", arch, *vae)
    weights = sorted((tmp_path / "a" / "pipeline").rglob("*.safetensors"))
    assert len(weights) >= 3
    for path in weights:
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert path.read_bytes() == twin.read_bytes(), f"{path.name} differs between two runs with one seed"

    pipe = load(str(tmp_path / "a" / "pipeline"))
    assert type(pipe).__name__ == PIPELINE_CLASSES[f"shapes-{arch}"]
    if arch == "sd15":
        assert pipe.vae.config.shift_factor is None, "SD1.x pipelines only scale latents"
    if arch == "flux":  # no guidance embedding: CFG is true CFG, at 64 px and 16 T5 tokens by default
        assert guidance_kwargs(pipe) == {"true_cfg_scale": GUIDANCE}
        assert pipe.default_sample_size * pipe.vae_scale_factor == 64
        assert call_kwargs(pipe) == {"max_sequence_length": MAX_LENGTH}
    shipped = package(tmp_path / "a" / "pipeline", "shapes-x", models_dir=tmp_path / "models")
    second = _train(tmp_path / "c", "--arch", arch, "--init", str(shipped), "--seed", "1")
    assert second["init_training"] == first and second["steps"] == 2
    continued = load(str(tmp_path / "c" / "pipeline"))
    assert continued.vae.config.scaling_factor == pipe.vae.config.scaling_factor, "--init keeps the latent scaling"
    assert package(tmp_path / "c" / "pipeline", "shapes-x", models_dir=tmp_path / "models") == shipped
    for n, run in enumerate("ac", 1):
        assert (shipped / f"loss-run{n}.jsonl").read_bytes() == (tmp_path / run / "loss.jsonl").read_bytes()
    card = model_card("shapes-x", shipped, None)
    assert "- Run 1: 2 steps" in card and "- Run 2: `--init` with the weights of the run above" in card
    assert "- Loss logs: `loss-run1.jsonl`, `loss-run2.jsonl`" in card
    assert second["device"] == "cpu" and card.count("minutes on one CPU thread") == 2

    larger = _train(tmp_path / "d", "--arch", arch, "--init", str(shipped), "--size", "128")
    assert larger["size"] == 128 and larger["init_training"] == second
    resized = load(str(tmp_path / "d" / "pipeline"))
    assert image_size(resized) == 128
    image = resized("a red circle", num_inference_steps=1, output_type="np", **call_kwargs(resized)).images[0]
    assert image.shape == (128, 128, 3), "the continued model generates at its new size by default"
    denoiser = denoiser_of(resized)
    folder = tmp_path / "d" / "pipeline" / ("unet" if arch == "sd15" else "transformer")
    saved = json.loads((folder / "config.json").read_text())
    expected = inspect.signature(type(denoiser).__init__).parameters
    assert not {key for key in saved if not key.startswith("_")} - set(expected), \
        "the denoiser's saved config holds only options its class takes (else loading warns)"
    card = model_card("shapes-x", tmp_path / "d" / "pipeline", None)
    assert "64x64 then 128x128 images" in card
    assert "- Run 3: `--init` with the weights of the run above: at 128 px" in card


def test_pooled_dropout_gives_that_share_of_items_the_empty_captions_pooled_vector() -> None:
    captions = torch.arange(4000) % 7
    args = argparse.Namespace(pooled_dropout=0.25)
    pooled = train._pooled_captions(captions, 99, args, torch.Generator().manual_seed(0))
    dropped = pooled == 99
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    assert torch.equal(pooled[~dropped], captions[~dropped])
    gen = torch.Generator().manual_seed(0)
    unchanged = train._pooled_captions(captions, 99, argparse.Namespace(pooled_dropout=0.0), gen)
    assert unchanged is captions and torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state()), \
        "without pooled dropout the batches of earlier recipes stay the same"


@pytest.mark.parametrize("argv, message", [
    (["--arch", "sd15", "--layers", "4"], "--layers"),
    (["--arch", "sd15", "--init", "shapes-sd3"], "not an sd15 pipeline"),
    (["--init", "shapes-sd3", "--heads", "2"], "--init continues"),
    (["--arch", "sd15", "--pooled-dropout", "0.5"], "SD1.x has no pooled vector"),
    (["--arch", "sd3", "--pooled-dropout", "1.5"], "a share from 0 to 1"),
    (["--init", "shapes-sd3", "--size", "100"], "multiple of 16"),
    (["--init", "shapes-sd3", "--size", "256"], "position embedding covers 16x16"),
])
def test_trainer_refuses_conflicting_options(tmp_path, argv: list[str], message: str) -> None:
    with pytest.raises(AttnkitError, match=message):
        train.main(["--out", str(tmp_path), *argv])


def test_video_metrics_tell_a_frozen_edit_from_one_that_follows_the_input(monkeypatch) -> None:
    import attnkit.kv
    from attnkit.shapes.evaluate import video_editing

    def follows(pipe, frames, prompt, attend, **kwargs):  # every frame as it came in: moves, never flickers
        frames = list(frames)
        return frames if attend != "first" else [frames[0]] * len(frames)  # "first" frozen on the first frame

    monkeypatch.setattr(attnkit.kv, "edit_video", follows)
    result = video_editing(load("shapes-sd3"), videos=2)
    assert result["flicker_per_frame"] == result["flicker_first"] == result["flicker_first_previous"] == 0.0
    assert result["motion_per_frame"] == result["motion_first_previous"] > 0.1
    assert result["motion_first"] == 0.0


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_eval_json_contract(capsys, model: str) -> None:
    from attnkit.cli import main

    assert main(["eval", model, "--json", "--seeds", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == {"model", "prompt_following", "regional_adherence", "plain_adherence", "map_iou",
                           "flicker_per_frame", "flicker_first", "flicker_first_previous", "edit_adherence",
                           "regional_adherence_4", "map_iou_output", "segment_miou", "lora_inside", "lora_leak",
                           "lora_whole"}
    assert result["model"] == model
    lora = [result[key] for key in ("lora_inside", "lora_leak", "lora_whole")]
    if (MODELS_DIR / model / "lora").is_dir():
        assert all(0.0 <= value <= 1.0 for value in lora)
    else:  # no LoRA ships with this model
        assert lora == [None, None, None]
    if model == "shapes-sd15":  # a UNet has no joint text stream for concepts
        assert result["map_iou_output"] is None
    else:
        assert 0.0 <= result["map_iou_output"] <= 1.0
    for key in ("prompt_following", "plain_adherence", "map_iou", "edit_adherence", "segment_miou"):
        assert 0.0 <= result[key] <= 1.0, key
    for key in ("flicker_per_frame", "flicker_first", "flicker_first_previous"):
        assert 0.0 < result[key] < 1.0, key
    assert 0.0 <= result["regional_adherence"] <= 1.0 and 0.0 <= result["regional_adherence_4"] <= 1.0


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_demo_writes_its_pictures(tmp_path, model: str) -> None:
    from attnkit.shapes.demo import run_demo

    written = run_demo(model, tmp_path, seed=0)
    names = {p.name for p in written}
    assert names == {"plain.png", "regional.png", "maps.png", "demo.png"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)


def test_docs_quality_table_is_the_benchmark_json() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality_benchmark", path)
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    results = quality.saved_results()
    assert {r["model"] for r in results} == set(MODEL_NAMES), "every shipped model is measured"
    page = quality.PAGE.read_text()
    assert quality.page_with_table(page, results) == page, "run `python benchmarks/quality.py --table`"


def test_docs_regional_ablation_table_is_the_benchmark_json() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "regional_ablation.py"
    spec = importlib.util.spec_from_file_location("regional_ablation", path)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    results = [json.loads(p.read_text()) for p in sorted(ablation.RESULTS.glob("regional-ablation-*.json"))]
    assert {r["model"] for r in results} == set(MODEL_NAMES), "every shipped model is measured"
    page = ablation.PAGE.read_text()
    table = page.split(ablation.START, 1)[1].split(ablation.END, 1)[0]
    assert table.strip() == ablation.ablation_table(results), "run `python benchmarks/regional_ablation.py --table`"


def test_model_card_says_when_a_run_trained_with_pooled_dropout() -> None:
    from attnkit.shapes.package import _stage

    run = {"steps": 10, "planned_steps": 10, "batch": 4, "lr": 3e-4, "minutes": 1.0, "seed": 0, "scenes": 24,
           "loss": 0.5}
    assert "--pooled-dropout" not in _stage(run)
    assert "25% of the batch items got the empty caption's pooled vector" in _stage({**run, "pooled_dropout": 0.25})
