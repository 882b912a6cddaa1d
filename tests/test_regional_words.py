"""Regions found from a word of the base prompt (the regional-prompter "prompt" mode): the first pass
(`attnkit.run.word_regions`), the mask it derives, the spec that records it, and the errors."""

import json
import re

import pytest
import torch
from PIL import Image

import attnkit
import attnkit.maps
from attnkit import AttnkitError
from attnkit.cli import main
from attnkit.regional import RegionSpec, load_spec
from attnkit.run import word_mask, word_regions

BASE = "a red circle and a blue square"
SPEC = {"base": {"prompt": BASE, "weight": 0.5},
        "regions": [{"prompt": "a green triangle", "from_word": "circle", "threshold": 0.5}]}
OPTIONS = {"tiny-sd3": {"max_sequence_length": 8}, "tiny-flux": {"max_sequence_length": 8}}


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_the_derived_mask_is_the_words_map_of_a_first_pass_cut_at_the_threshold(pipelines, name):
    pipe = pipelines[name]
    options = OPTIONS.get(name, {})
    generator = torch.Generator().manual_seed(3)
    spec = word_regions(pipe, SPEC, generator=generator, num_inference_steps=2, **options)
    mask = spec.regions[0].mask
    with attnkit.regional(pipe, spec, **options) as call:
        kwargs = call(generator=generator, num_inference_steps=2)
        regional = pipe(**kwargs, output_type="latent").images
    with attnkit.maps.trace(pipe, BASE) as tc, torch.inference_mode():  # the base prompt as users generate it
        pipe(prompt=BASE, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="latent",
             **options)
    heat = tc.heatmap("circle").float()
    assert torch.equal(mask, word_mask(heat, 0.5)) and 0 < mask.mean() < 1
    plain = pipe(prompt=BASE, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="latent",
                 **options).images
    assert not torch.equal(regional, plain)  # the regional pass ran, from the same noise as the first


def test_word_mask_keeps_the_smoothed_peaks_blob_whole_and_drops_stray_cells():
    heat = torch.zeros(12, 12)
    heat[2:7, 2:7] = 1.0  # the object, with a cold cell inside
    heat[4, 4] = 0.0
    heat[9:11, 9:11] = 0.6  # a weaker second blob
    heat[0, 11] = 1.0  # one hot stray cell
    mask = word_mask(heat, 0.4)
    assert mask[2:7, 2:7].all() and mask[4, 4] == 1  # the whole object, hole filled
    assert mask[9:11, 9:11].sum() == 0 and mask[0, 11] == 0  # only the part around the peak
    assert mask.sum() < 49  # not much beyond the object: smoothing spreads it by about a token
    assert word_mask(heat, 0.9).sum() < mask.sum()  # a higher threshold keeps less


def test_the_written_spec_keeps_the_derived_mask_and_reloads_to_the_same_regions(pipelines, tmp_path):
    pipe = pipelines["tiny-sd15"]
    derived = word_regions(pipe, SPEC, generator=torch.Generator().manual_seed(0), num_inference_steps=1)
    written = derived.as_dict()
    assert written["regions"][0]["from_word"] == "circle" and written["regions"][0]["threshold"] == 0.5
    (tmp_path / "spec.json").write_text(json.dumps(written))
    again = load_spec(tmp_path / "spec.json")
    assert not again.pending and torch.equal(again.owners((16, 16)), derived.owners((16, 16)))
    assert word_regions(pipe, again, num_inference_steps=1) is again  # a derived mask is kept: no second first pass


def test_cli_regional_with_a_word_region_records_the_mask_in_the_png(tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text(
        f'base: "{BASE}"\nregions:\n  - prompt: "a green triangle"\n    from_word: square\n')
    out = tmp_path / "out.png"
    assert main(["regional", "tiny-sd15", "--spec", str(tmp_path / "spec.yaml"), "--out", str(out), "--steps", "1"]) == 0
    record = json.loads(Image.open(out).text["attnkit"])
    mask = record["spec"]["regions"][0]["mask"]
    assert len(mask) == 16 and {v for row in mask for v in row} == {0, 1}
    assert RegionSpec.from_dict(record["spec"]).pending == []


BAD = {
    "no base": ({"regions": [{"prompt": "a", "from_word": "hat"}]}, "the spec has no `base`"),
    "box too": ({"base": BASE, "regions": [{"prompt": "a", "from_word": "circle", "box": [0, 0, 1, 1]}]},
                "has `from_word` and a box"),
    "threshold range": ({"base": BASE, "regions": [{"prompt": "a", "from_word": "circle", "threshold": 1.5}]},
                        "threshold must be a number between 0 and 1"),
    "threshold alone": ({"base": BASE, "regions": [{"prompt": "a", "box": [0, 0, 1, 1], "threshold": 0.3}]},
                        "has a threshold but no `from_word`"),
    "empty word": ({"base": BASE, "regions": [{"prompt": "a", "from_word": " "}]}, "from_word must be a word"),
    "bad mask rows": ({"regions": [{"prompt": "a", "mask": [[0, 1], [1]]}]}, "rows of numbers in [0, 1]"),
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_word_region_raises_its_error(case):
    data, message = BAD[case]
    with pytest.raises(AttnkitError, match=re.escape(message)):
        RegionSpec.from_dict(data)


def test_a_word_not_in_the_base_prompt_and_a_region_before_its_first_pass_are_errors(pipelines):
    pipe = pipelines["tiny-sd15"]
    before = dict(pipe.unet.attn_processors)
    spec = RegionSpec.from_dict({"base": BASE, "regions": [{"prompt": "a", "from_word": "triangle"}]})
    first_pass = re.escape("takes its mask from the word 'triangle' in a first pass, which has not run: "
                           "`spec = attnkit.run.word_regions(pipe, spec")
    with pytest.raises(AttnkitError, match=first_pass):
        spec.owners((4, 4))
    with pytest.raises(AttnkitError, match=first_pass):
        attnkit.regional(pipe, spec).__enter__()
    with pytest.raises(AttnkitError, match="'triangle' is not a word of the prompt"):
        word_regions(pipe, spec, generator=torch.Generator().manual_seed(0), num_inference_steps=1)
    assert dict(pipe.unet.attn_processors) == before
