"""The wheel users install: what it holds, its size, and that it runs with no checkout on the path.

The wheel is built from a copy of this checkout (`python -m build --wheel --no-isolation`) and installed without its
dependencies into a fresh virtual environment that borrows this interpreter's site-packages for torch and diffusers
(not the checkout, not attnkit's editable install); `.ci/run` does the same with a clean install of everything.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import attnkit

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 30 * 10**6  # bytes
SHIPPED = ("shapes-sd3", "shapes-sd15", "shapes-sd15-edges")
MODELS = "attnkit/shapes/models/"
#: the second wheel, built from packaging/attnkit-shapes-extra: the models the first leaves out
EXTRA = ("shapes-flux", "shapes-sd3-128", "shapes-flux-128")
EXTRA_MODELS = "attnkit_shapes_extra/models/"


#: what a build leaves in its source folder, or is no source: the wheel is built from a copy without them
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "site", "*.egg-info", "__pycache__",
                                    ".hypothesis", ".pytest_cache", ".import_linter_cache", "attnkit-demo", "runs",
                                    "out")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, out = tmp_path_factory.mktemp("source") / "attnkit", tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE, symlinks=True)
    command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.glob("attnkit-*.whl")
    return path


@pytest.fixture(scope="module")
def extra_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist-extra")
    source = tmp_path_factory.mktemp("source-extra") / "attnkit"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE, symlinks=True)  # the package's models are links into attnkit/
    command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
               str(source / "packaging" / "attnkit-shapes-extra")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.glob("attnkit_shapes_extra-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; torch and the rest come from this interpreter's site-packages."""
    env = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env, with_pip=True)
    (purelib,) = (Path(p) for p in env.glob("lib/python*/site-packages"))
    (purelib / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install(env, wheel)
    return env


def install(env: Path, wheel: Path) -> None:
    done = subprocess.run([env / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def run(env: Path, *argv, cwd: Path) -> subprocess.CompletedProcess:
    """`argv` in `cwd`, outside the checkout, with nothing of the checkout on PYTHONPATH."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, cwd=cwd, env=environ)


def test_the_wheel_holds_code_and_shipped_models_only_under_30_mb(wheel):
    size = wheel.stat().st_size
    print(f"{wheel.name}: {size / 1e6:.1f} MB")
    assert size < LIMIT, f"{wheel.name} weighs {size / 1e6:.1f} MB, over {LIMIT / 1e6:.0f} MB"
    names = zipfile.ZipFile(wheel).namelist()
    data = [n for n in names if not n.endswith(".py") and ".dist-info/" not in n]
    assert data and all(n.startswith(MODELS) for n in data), [n for n in data if not n.startswith(MODELS)]
    assert {n[len(MODELS):].split("/")[0] for n in data} == set(SHIPPED)
    assert not [n for n in names if n.endswith((".jsonl", "training.json", "edge-following.json"))]
    assert not [n for n in data if "/lora/" in n and n.endswith(".json")]  # a LoRA's training record
    for model in SHIPPED:
        assert f"{MODELS}{model}/README.md" in names  # the model card
        index = f"{MODELS}{model}/model_index.json"
        if index in names:  # a pipeline: every component's folder with its weights or files
            components = [k for k, v in json.loads(zipfile.ZipFile(wheel).read(index)).items()
                          if isinstance(v, list) and v[0] is not None]
            for component in components:
                assert any(n.startswith(f"{MODELS}{model}/{component}/") for n in names), (model, component)
    assert f"attnkit-{attnkit.__version__}.dist-info/entry_points.txt" in names


def test_the_installed_wheel_runs_the_demo_without_a_checkout(installed, tmp_path):
    done = run(installed, installed / "bin" / "attnkit", "--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"attnkit {attnkit.__version__}", done.stderr
    smoke = ("import attnkit, attnkit.regional, attnkit.maps, attnkit.segment, attnkit.kv, attnkit.run, attnkit.cli\n"
             "from attnkit.shapes import shipped_names\n"
             "print(attnkit.__file__); print(','.join(shipped_names()))")
    done = run(installed, installed / "bin" / "python", "-c", smoke, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    where, shipped = done.stdout.split()
    assert Path(where).is_relative_to(installed) and shipped == "shapes-sd3,shapes-sd15"
    done = run(installed, installed / "bin" / "attnkit", "demo", "--out", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "demo").glob("*.png"))) >= 2
    done = run(installed, installed / "bin" / "attnkit", "generate", "shapes-flux", "--prompt", "a red circle",
               "--out", "x.png", cwd=tmp_path)
    assert done.returncode == 2 and "install the attnkit-shapes-extra wheel" in done.stderr


def test_the_extra_wheel_holds_the_other_shapes_models_with_attnkits_version(extra_wheel):
    assert extra_wheel.name.startswith(f"attnkit_shapes_extra-{attnkit.__version__}-")
    print(f"{extra_wheel.name}: {extra_wheel.stat().st_size / 1e6:.1f} MB")
    names = zipfile.ZipFile(extra_wheel).namelist()
    data = [n for n in names if not n.endswith(".py") and ".dist-info/" not in n]
    assert {n[len(EXTRA_MODELS):].split("/")[0] for n in data} == set(EXTRA)
    assert not [n for n in names if n.endswith((".jsonl", "training.json"))]
    assert not [n for n in names if n.startswith("attnkit/")]  # the link that gives it attnkit's version


def test_with_the_extra_wheel_every_shapes_model_loads(installed, extra_wheel, tmp_path):
    install(installed, extra_wheel)
    done = run(installed, installed / "bin" / "python", "-c",
               "from attnkit.shapes import shipped_names; print(','.join(shipped_names()))", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == [",".join(("shapes-sd3", "shapes-sd15") + EXTRA)]
    done = run(installed, installed / "bin" / "attnkit", "generate", "shapes-flux", "--prompt", "a red circle",
               "--steps", "2", "--out", "x.png", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "x.png").is_file(), done.stderr[-3000:]
