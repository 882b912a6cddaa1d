"""The `attnkit` command line as a whole: instant help, a quiet stderr, one meaning and one check per number."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from attnkit.cli import GENERATION_OPTIONS, _parser, main

COMMANDS = ("sites", "inspect", "maps", "demo", "eval", "generate", "regional", "video-edit", "segment", "batch", "ui")
HEAVY = ("torch", "diffusers", "transformers")


def commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(command: str) -> dict[str, argparse.Action]:
    return {flag: a for a in commands()[command]._actions for flag in a.option_strings}


def run_child(*argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    """A fresh interpreter, as a user's shell starts one: nothing imported yet, no verbosity set by the caller."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY")}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "attnkit.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as error:
        return error.code


def test_the_commands_listed_here_are_all_the_commands():
    assert set(commands()) == set(COMMANDS)


def test_help_of_attnkit_and_of_every_command_imports_neither_torch_nor_diffusers_nor_transformers():
    code = f"""
import sys
from attnkit.cli import main
for argv in [["--help"]] + [[command, "--help"] for command in {COMMANDS!r}]:
    try:
        main(argv)
    except SystemExit:
        pass
print("imported:", sorted(name for name in {HEAVY!r} if name in sys.modules))
"""
    child = run_child(code=code)
    assert child.returncode == 0, child.stderr
    assert "usage: attnkit regional" in child.stdout and "usage: attnkit maps" in child.stdout
    assert child.stdout.splitlines()[-1] == "imported: []"


def test_lazy_package_names_stay_the_objects_eager_imports_gave_whatever_was_imported_first():
    """Importing a submodule binds it on its package: `attnkit.regional` must stay the function, not the package."""
    code = """
import attnkit.regional.spec, attnkit.sites, attnkit.maps.trace
import attnkit
from attnkit.maps import trace
print(attnkit.regional.__module__, attnkit.sites.__module__, trace.__module__, attnkit.maps.trace is trace,
      attnkit.ops.__name__, attnkit.Control.__name__)
"""
    child = run_child(code=code)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["attnkit.regional.session", "attnkit.sites", "attnkit.maps.trace", "True",
                                    "attnkit.ops", "Control"]


def test_sites_writes_nothing_on_stderr():
    child = run_child("sites", "tiny-sd3")
    assert child.returncode == 0, child.stderr
    assert "sites: joint" in child.stdout
    assert child.stderr == ""


def test_generate_writes_nothing_on_stderr(tmp_path):
    child = run_child("generate", "tiny-sd3", "--prompt", "a red circle", "--out", str(tmp_path / "x.png"),
                      "--steps", "1")
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""


MODEL = ["tiny-sd3"]
GENERATE = ["generate", *MODEL, "--prompt", "a red circle", "--out", "never.png"]
REGIONAL = ["regional", *MODEL, "--spec", "never.yaml", "--out", "never.png"]
MAPS = ["maps", *MODEL, "--prompt", "a red circle", "--out", "never"]


@pytest.mark.parametrize("argv, option", [
    (GENERATE + ["--guidance", "nan"], "--guidance"),
    (GENERATE + ["--guidance", "inf"], "--guidance"),
    (GENERATE + ["--guidance=-1"], "--guidance"),
    (GENERATE + ["--guidance", "seven"], "--guidance"),
    (GENERATE + ["--steps", "0"], "--steps"),
    (GENERATE + ["--steps", "2.5"], "--steps"),
    (GENERATE + ["--seed", "nan"], "--seed"),
    (GENERATE + ["--seed", str(2**64)], "--seed"),
    (REGIONAL + ["--height", "-8"], "--height"),
    (REGIONAL + ["--width", "0"], "--width"),
    (REGIONAL + ["--steps", "-1"], "--steps"),
    (MAPS + ["--guidance", "nan"], "--guidance"),
    (MAPS + ["--size", "0"], "--size"),
    (MAPS + ["--size", "64", "--height", "32"], "--size"),
    (MAPS + ["--size", "64", "--width", "32"], "--size"),
    (["inspect", *MODEL, "--height", "0"], "--height"),
    (["demo", "--seed", "x", "--out", "never"], "--seed"),
    (["demo", "--threads", "0", "--out", "never"], "--threads"),
    (["eval", "shapes-sd3", "--seeds", "0"], "--seeds"),
    (["eval", "shapes-sd3", "--threads", "-2"], "--threads"),
])
def test_a_bad_number_is_one_error_naming_the_option_with_exit_code_2(capsys, argv, option):
    assert exit_code(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("attnkit") and option in last and "give" in last, last


def test_numbers_at_the_edge_of_their_range_are_accepted():
    args = _parser().parse_args(GENERATE + ["--guidance", "0", "--steps", "1", "--seed", str(2**64 - 1),
                                            "--height", "1", "--width", "1"])
    assert (args.guidance, args.steps, args.seed, args.height, args.width) == (0.0, 1, 2**64 - 1, 1, 1)
    assert _parser().parse_args(GENERATE + ["--seed", "-1"]).seed == -1  # torch seeds from -2**63


def test_generate_regional_and_maps_take_the_same_five_sampling_options():
    assert set(GENERATION_OPTIONS) == {"--height", "--width", "--seed", "--steps", "--guidance"}
    for option in GENERATION_OPTIONS:
        found = {command: options(command)[option] for command in ("generate", "regional", "maps")}
        meanings = {(a.type, a.default, a.help) for a in found.values()}
        assert len(meanings) == 1, (option, meanings)


def test_the_demo_seed_and_the_inspect_size_mean_what_they_mean_when_generating():
    generate = options("generate")
    for command, option in [("demo", "--seed"), ("inspect", "--height"), ("inspect", "--width")]:
        ours, theirs = options(command)[option], generate[option]
        assert (ours.type, ours.default, ours.help) == (theirs.type, theirs.default, theirs.help), (command, option)


def test_maps_takes_height_and_width_and_size_sets_both(tmp_path):
    argv = ["maps", "tiny-sd15", "--prompt", "a red circle", "--words", "red", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "hw"), "--height", "32", "--width", "48"]) == 0
    assert Image.open(tmp_path / "hw" / "image.png").size == (48, 32)
    assert main([*argv, "--out", str(tmp_path / "size"), "--size", "32"]) == 0
    assert Image.open(tmp_path / "size" / "image.png").size == (32, 32)


def test_maps_guidance_changes_the_image(tmp_path):
    """Same seed and steps, guidance 1 (off) against 20: an ignored --guidance gives the same pixels."""
    images = []
    for scale in ("1", "20"):
        out = tmp_path / scale
        assert main(["maps", "tiny-sd15", "--prompt", "a red circle", "--words", "red", "--steps", "2", "--size", "32",
                     "--guidance", scale, "--out", str(out)]) == 0
        images.append(np.asarray(Image.open(out / "image.png"), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() > 0


def test_generate_records_the_parsed_numbers_in_the_png(tmp_path):
    out = tmp_path / "x.png"
    assert main(["generate", "tiny-sd3", "--prompt", "a red circle", "--out", str(out), "--steps", "1",
                 "--height", "32", "--width", "48", "--seed", "3", "--guidance", "2.5"]) == 0
    record = json.loads(Image.open(out).text["attnkit"])
    assert (record["num_inference_steps"], record["height"], record["width"], record["seed"],
            record["guidance_scale"]) == (1, 32, 48, 3, 2.5)


SIZE_CASES = [(command, model) for command in ("generate", "regional", "maps", "inspect")
              for model in ("tiny-sd15", "tiny-sd3", "tiny-flux") if (command, model) != ("regional", "tiny-sd15")]


@pytest.mark.parametrize(("command", "model"), SIZE_CASES)
def test_a_size_the_model_cannot_take_is_one_error_naming_the_multiple(capsys, tmp_path, model, command):
    argv = {"generate": ["generate", model, "--prompt", "a red circle", "--out", str(tmp_path / "x.png")],
            "regional": ["regional", model, "--spec", "examples/regional-left-right.yaml", "--out",
                         str(tmp_path / "x.png")],
            "maps": ["maps", model, "--prompt", "a red circle", "--out", str(tmp_path)],
            "inspect": ["inspect", model]}[command]
    assert exit_code(argv + ["--height", "68", "--width", "64", *(["--steps", "1"] if command != "inspect" else [])]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "attnkit: error: --height 68 is not a multiple of 8, which this {} needs; use e.g. --height 64."\
        .format({"tiny-sd15": "StableDiffusionPipeline", "tiny-sd3": "StableDiffusion3Pipeline",
                 "tiny-flux": "FluxPipeline"}[model])
    assert not list(tmp_path.iterdir())


def test_regional_spec_negatives_on_flux_are_an_error_without_true_cfg_and_recorded_with_it(capsys, tmp_path):
    argv = ["regional", "tiny-flux", "--spec", "examples/regional-left-right.yaml", "--steps", "1"]
    assert exit_code(argv + ["--out", str(tmp_path / "without.png")]) == 2
    assert "--true-cfg-scale" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(argv + ["--out", str(tmp_path / "with.png"), "--true-cfg-scale", "3"]) == 0
    assert json.loads(Image.open(tmp_path / "with.png").text["attnkit"])["true_cfg_scale"] == 3.0


def test_true_cfg_scale_on_a_pipeline_that_has_none_is_one_error_naming_it(capsys, tmp_path):
    argv = ["regional", "tiny-sd3", "--spec", "examples/regional-left-right.yaml", "--steps", "1",
            "--out", str(tmp_path / "x.png"), "--true-cfg-scale", "3"]
    assert exit_code(argv) == 2
    assert "StableDiffusion3Pipeline does not" in capsys.readouterr().err.strip().splitlines()[-1]
