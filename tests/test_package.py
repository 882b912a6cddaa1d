"""The package as users get it: one version, `attnkit --version`, and a changelog that names what each release added."""

import argparse
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import attnkit
from attnkit.cli import _parser

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "attnkit.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", attnkit.__version__)


def test_version_option_prints_the_package_version():
    done = subprocess.run([sys.executable, "-m", "attnkit", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"attnkit {attnkit.__version__}"


def _releases() -> dict[str, str]:
    """CHANGELOG.md's sections by version, newest first."""
    text = (ROOT / "CHANGELOG.md").read_text()
    parts = re.split(r"^## (\d+\.\d+\.\d+)\b.*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_changelog_starts_with_this_version():
    assert next(iter(_releases())) == attnkit.__version__


def test_changelog_names_every_command_and_public_module():
    text = "\n".join(_releases().values())
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"attnkit {name}" for name in action.choices if f"`attnkit {name}" not in text]
    missing += [f"attnkit.{m.name}" for m in pkgutil.iter_modules(attnkit.__path__)
                if not m.name.startswith("_") and f"`attnkit.{m.name}" not in text]
    assert not missing, f"CHANGELOG.md names no release that added {missing}"
