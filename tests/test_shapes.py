"""Shapes world: the generator's ground truth, the scorer that judges generated images, the shipped model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnkit import AttnkitError
from attnkit.shapes import CALL_KWARGS, MODEL_NAMES, MODELS_DIR, load
from attnkit.shapes.data import BACKGROUND, PALETTE, ShapeObject, random_scene, random_video, render
from attnkit.shapes.scorer import detect, follows_prompt, region_success
from attnkit.shapes.tokenizer import WORDS, shapes_tokenizer

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


def test_unknown_model_is_an_attnkit_error() -> None:
    with pytest.raises(AttnkitError, match="shapes-sd3"):
        load("shapes-nope")


@pytest.fixture(scope="module")
def shapes_sd3():
    return load("shapes-sd3")


def test_shipped_model_is_a_stock_pipeline_loaded_from_the_package(shapes_sd3) -> None:
    assert "shapes-sd3" in MODEL_NAMES and (MODELS_DIR / "shapes-sd3" / "model_index.json").is_file()
    assert type(shapes_sd3).__name__ == "StableDiffusion3Pipeline"
    assert shapes_sd3.text_encoder_3 is None and shapes_sd3.transformer.dtype == torch.float32
    size = sum(f.stat().st_size for f in (MODELS_DIR / "shapes-sd3").rglob("*") if f.is_file())
    assert size < 25 * 2**20


def test_two_step_generation_is_deterministic(shapes_sd3) -> None:
    def run() -> np.ndarray:
        out = shapes_sd3("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                         output_type="np", **CALL_KWARGS)
        return out.images[0]

    first, second = run(), run()
    assert first.shape == (64, 64, 3)
    np.testing.assert_array_equal(first, second)
