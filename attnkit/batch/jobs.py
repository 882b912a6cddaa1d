"""Jobs of `attnkit batch`: one JSON object per line, each the options of one attnkit command, all checked before any
job runs so that a typo on line 900 does not surface after hours of work.

    {"command": "regional", "model": "shapes-sd3", "spec": {...}, "seed": 3, "steps": 28, "name": "layout-0003"}

Keys other than `command`, `name`, `model` and `spec` are the command's options without their dashes (`init_image`
or `init-image` for `--init-image`); `true` is a flag, a list is comma-joined. `spec` is a region spec as a mapping
(its relative mask paths resolve next to the jobs file) or the path of a spec file. `name` (default `job-<line>`)
names the job's output folder.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AttnkitError

__all__ = ["COMMANDS", "Check", "Job", "read_jobs"]

#: How a job's command line is checked without running it (the command line's `check_command`): an AttnkitError
#: names what is wrong.
Check = Callable[[list[str]], None]

#: The commands a job may run, and the file each writes its output to inside the job's folder ("" : the folder).
COMMANDS: dict[str, str] = {"generate": "image.png", "regional": "image.png", "maps": "", "segment": "",
                            "video-edit": "video.mp4"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RESERVED = ("command", "name", "model", "spec", "out")


@dataclass(frozen=True)
class Job:
    """One line of a jobs file."""

    line: int
    name: str
    command: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | str | None = None

    def argv(self, folder: Path, root: Path) -> list[str]:
        """The command line running this job with its outputs in `folder`; an inline spec is written there as
        spec.json (mask paths made absolute against `root`, the jobs file's folder)."""
        argv = [self.command, self.model]
        if isinstance(self.spec, dict):
            path = folder / "spec.json"
            path.write_text(json.dumps(_absolute_masks(self.spec, root), indent=2) + "\n")
            argv += ["--spec", str(path)]
        elif self.spec is not None:
            argv += ["--spec", str(root / self.spec)]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
        output = COMMANDS[self.command]
        return argv + ["--out", str(folder / output if output else folder)]

    def as_dict(self) -> dict[str, Any]:
        spec = {} if self.spec is None else {"spec": self.spec}
        return {"command": self.command, "name": self.name, "model": self.model, **spec, **self.options}


def _absolute_masks(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    regions = [dict(r, mask=str(root / r["mask"])) if isinstance(r, dict) and isinstance(r.get("mask"), str) else r
               for r in spec.get("regions", [])]
    return {**spec, "regions": regions} if "regions" in spec else spec


def read_jobs(path: Path, check: Check, model: str | None = None) -> list[Job]:
    """Every job of the jobs file at `path` (`model`: for lines without one), each command line checked by `check`
    as its command would check it (options, sizes, region spec) before anything runs; an error lists every bad line
    by number."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise AttnkitError(f"cannot read the jobs file {str(path)!r}: {error.strerror or error}.") from error
    jobs, errors, names = [], [], {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            job = _job(number, text, model)
            with tempfile.TemporaryDirectory() as folder:
                check(job.argv(Path(folder), path.parent))
        except AttnkitError as error:
            errors.append(f"line {number}: {error}")
            continue
        if job.name in names:
            errors.append(f"line {number}: the name {job.name!r} is taken by line {names[job.name]}; give each job "
                          "its own name.")
            continue
        names[job.name] = number
        jobs.append(job)
    if errors:
        raise AttnkitError(f"{len(errors)} bad line(s) in {path}, so no job was run:\n  " + "\n  ".join(errors))
    if not jobs:
        raise AttnkitError(f"{path} has no jobs: write one JSON object per line, e.g. "
                           '{"command": "generate", "model": "shapes-sd3", "prompt": "a red circle", "name": "one"}.')
    return jobs


def _job(number: int, text: str, model: str | None) -> Job:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise AttnkitError(f"not valid JSON ({error.msg} at column {error.colno}).") from None
    if not isinstance(data, dict):
        raise AttnkitError(f"a job is a JSON object with a `command`, got {type(data).__name__}.")
    command = data.get("command")
    if command not in COMMANDS:
        raise AttnkitError(f"unknown command {command!r}: a job runs one of {', '.join(COMMANDS)}.")
    if "out" in data:
        raise AttnkitError("a job has no `out`: its outputs go to OUT/<name>/. Leave out `out`.")
    name = data.get("name", f"job-{number:04d}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AttnkitError(f"name {name!r} is not a folder name: use letters, digits, '.', '_' and '-'.")
    chosen = data.get("model", model)
    if not isinstance(chosen, str):
        raise AttnkitError("the job names no model: give `model` in the line or `--model` to `attnkit batch`.")
    spec = data.get("spec")
    if spec is not None and command != "regional":
        raise AttnkitError(f"`spec` is an option of regional jobs, not of {command}.")
    options = {key: value for key, value in data.items() if key not in _RESERVED}
    return Job(number, name, command, chosen, options, spec)
