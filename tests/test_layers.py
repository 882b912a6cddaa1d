"""The import layers of docs/architecture.md, as `lint-imports` checks them from pyproject.toml's contracts: the
package keeps them, and a deliberate violation (a feature importing a sibling feature, the core importing the run
layer) breaks them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the contracts of `root`/pyproject.toml over the package in `root`."""
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def copy_of_the_package(folder: Path) -> Path:
    """The package's Python files and pyproject.toml, without the shipped weights."""
    shutil.copytree(ROOT / "attnkit", folder / "attnkit", ignore=shutil.ignore_patterns("models", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    return folder


def test_the_package_keeps_its_import_layers():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("regional/spec.py", "from ..maps import trace", "attnkit.regional is not allowed to import attnkit.maps"),
    ("sites.py", "from .run import load_pipeline", "attnkit.sites is not allowed to import attnkit.run"),
    ("kv/store.py", "from ..shapes import load", "attnkit.kv is not allowed to import attnkit.shapes"),
])
def test_a_deliberate_violation_breaks_the_layers(tmp_path, module, line, broken):
    copy = copy_of_the_package(tmp_path)
    with (copy / "attnkit" / module).open("a") as source:
        source.write(f"\n{line}  # deliberate violation\n")
    done = lint_imports(copy)
    assert done.returncode == 1
    assert broken in done.stdout and "0 kept, 1 broken" in done.stdout
