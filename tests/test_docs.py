"""Every fenced code block of README.md and docs/*.md runs here, page by page, in the order a reader meets them.

Blocks are collected from the pages, so a new block or page is covered without editing this file. A block's language
says what happens to it:

- `python`: executed, the page's blocks sharing one namespace;
- `bash`: executed by bash (`-euo pipefail`) with attnkit's command on the PATH;
- `yaml`, `json`: parsed, and checked as what they are (a region spec; a jobs file of `attnkit batch`);
- `text`: shown only (output, install commands, commands that need hardware or a server): never run.

A block without a language, or with another one, fails `test_every_block_says_what_it_is`. A block titled
(`yaml title="spec.yaml"`) is also written to that file for the blocks after it.

Everything runs in a fresh folder holding the inputs the pages name (`in.png`, `cat.png`, `mask.png`, `in.gif`) and
links to the repository's `examples/` and `attnkit/` folders. Hub ids are swapped for tiny pipelines of the same
family saved to folders (`HUB`), and `SWAPS` keeps the code on the CPU in float32: the pages show full-size models on
a GPU, and these tests run the same code offline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
RUN, CHECK, SHOWN = ("python", "bash"), ("yaml", "json"), ("text",)
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
#: hub id in the pages -> the tiny pipeline of the same family that stands in for it
HUB = {
    "stabilityai/stable-diffusion-3.5-medium": "tiny-sd35",
    "stabilityai/stable-diffusion-xl-base-1.0": "tiny-sdxl",
    "black-forest-labs/FLUX.1-dev": "tiny-flux",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15-layout",  # SD1.5's UNet layout (MasaCtrl's layer numbers)
}
#: what the pages write for a GPU -> what runs here
SWAPS = {'.to("cuda")': '.to("cpu")', "torch.bfloat16": "torch.float32", "torch.float16": "torch.float32"}

torch.set_num_threads(1)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    title: str | None
    code: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        info = match.group(1).strip()
        language = info.split()[0] if info else ""
        title = re.search(r'title="([^"]+)"', info)
        found.append(Block(page, text.count("\n", 0, match.start()) + 1, language, title and title.group(1),
                           match.group(2)))
    return found


def test_every_block_says_what_it_is():
    untagged = [f"{b} ({b.language or 'no language'})" for page in PAGES for b in blocks(page)
                if b.language not in RUN + CHECK + SHOWN]
    assert not untagged, f"tag these blocks with one of {RUN + CHECK + SHOWN}: {untagged}"


def test_the_readme_is_short_and_keeps_its_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200, "move detail into a page under docs/"
    set_up = readme.split("## Set up", 1)[1].split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    assert len(set_up) == 2 and set_up[0].endswith("attnkit demo")
    assert set_up[1].startswith("HF_HUB_OFFLINE=1 python -m pytest")  # the command .ci/run runs


def test_the_pages_run_something():
    assert sum(b.language in RUN for page in PAGES for b in blocks(page)) >= 20


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """Hub id -> folder of its stand-in, saved on first use."""
    from attnkit.testing import build_pipeline, sd15_layout_pipeline

    root, saved = tmp_path_factory.mktemp("hub"), {}

    def folder(hub_id: str) -> Path:
        if hub_id not in saved:
            name = HUB[hub_id]
            pipe = sd15_layout_pipeline() if name == "sd15-layout" else build_pipeline(name)
            pipe.save_pretrained(root / name)
            saved[hub_id] = root / name
        return saved[hub_id]

    return folder


def scene(shift: int = 0) -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((6 + shift, 20, 26 + shift, 40), fill="red")
    draw.rectangle((38, 20, 58, 40), fill="blue")
    return image


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    scene().save(tmp_path / "in.png")
    scene().save(tmp_path / "cat.png")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # white and opaque on the right half: a region or a repaint
    ImageDraw.Draw(mask).rectangle((32, 0, 63, 63), fill=(255, 255, 255, 255))
    mask.save(tmp_path / "mask.png")
    frames = [scene(shift) for shift in (0, 2, 4)]
    frames[0].save(tmp_path / "in.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
    for name in ("examples", "attnkit"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def swapped(code: str, hub) -> str:
    for hub_id in HUB:
        if hub_id in code:
            code = code.replace(hub_id, str(hub(hub_id)))
    for page_text, here in SWAPS.items():
        code = code.replace(page_text, here)
    return code


def check(block: Block, code: str, folder: Path) -> None:
    if block.language == "yaml":
        data = yaml.safe_load(code)
        if isinstance(data, dict) and "regions" in data:
            from attnkit.regional.spec import RegionSpec

            RegionSpec.from_dict(data, folder)
    elif block.title and block.title.endswith(".jsonl"):
        from attnkit.batch.jobs import read_jobs
        from attnkit.cli import check_command

        assert read_jobs(folder / block.title, check_command)
    else:
        json.loads(code)


def run_bash(block: Block, code: str, folder: Path) -> None:
    """`code` in bash, where `attnkit` and `python` are this interpreter running this checkout's attnkit."""
    shims = folder / ".bin"
    if not shims.is_dir():
        shims.mkdir()
        (shims / "attnkit").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m attnkit "$@"\n')
        (shims / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        for shim in shims.iterdir():
            shim.chmod(0o755)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               PATH=f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{block} failed:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.language in RUN + CHECK for b in blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page, hub, workdir):
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks(page):
        if block.language in SHOWN:
            continue
        code = swapped(block.code, hub)
        if block.title:
            (workdir / block.title).write_text(code)
        if block.language == "python":
            exec(compile(code, str(block), "exec"), namespace)  # noqa: S102 - the page's own code
        elif block.language == "bash":
            run_bash(block, code, workdir)
        else:
            check(block, code, workdir)
