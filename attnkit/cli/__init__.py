"""The `attnkit` command line: argparse only. Each command's module parses its options and calls the run layer
(`attnkit.run`), the web app (`attnkit.ui`) or batch scheduling (`attnkit.batch`). `--json` output formats are
contracts other tools rely on: keep them exact.

Building the parser imports the command modules, which import torch, diffusers and the features inside their run
functions only: `attnkit --help` and `attnkit COMMAND --help` stay instant.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..errors import AttnkitError
from . import batch, images, inspect, maps, segment, shapes, ui, video
from .options import GENERATION_OPTIONS, MODEL_HELP, add_generation_options, checked_float, positive_int

__all__ = ["GENERATION_OPTIONS", "MODEL_HELP", "Load", "add_generation_options", "check_command", "checked_float",
           "main", "parse_command", "positive_int", "run_command"]

#: How a command gets a pipeline for a model name: `attnkit.run.load_pipeline`, or a batch's `attnkit.run.Pipelines`.
Load = Callable[[str], Any]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnkit",
                                     description="Control and observe attention in diffusers pipelines.")
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (inspect, maps, shapes, images, video, segment, batch, ui):
        module.register(commands)
    return parser


def _quiet_third_party() -> None:
    """Leave stderr to attnkit's messages and progress bars: the libraries' warnings seen here (no torchvision, no
    accelerate, deprecations inside diffusers / transformers) name nothing a user of the command can act on. The
    verbosities apply where the libraries are first imported, as in a command: set TRANSFORMERS_VERBOSITY or
    DIFFUSERS_VERBOSITY to `warning` to see them again."""
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|transformers)\.")


def parse_command(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` parsed as `attnkit` would parse it, its usage error raised as an AttnkitError instead of exiting."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            return _parser().parse_args(list(argv))
    except SystemExit:
        lines = buffer.getvalue().strip().splitlines()
        raise AttnkitError(lines[-1].split("error: ", 1)[-1] if lines else f"cannot parse {list(argv)}") from None


def check_command(argv: Sequence[str]) -> None:
    """An AttnkitError if `argv` would fail before any model loads: its options, and what its command reads first
    (a region spec, say)."""
    args = parse_command(argv)
    check = getattr(args, "check", None)
    if check is not None:
        check(args)


def run_command(argv: Sequence[str], load: Load) -> None:
    """Run the command line `argv` with pipelines from `load` (a batch job: its usage errors are AttnkitErrors)."""
    args = parse_command(argv)
    args.run(args, load)


def main(argv: Sequence[str] | None = None) -> int:
    from ..run.models import load_pipeline

    args = _parser().parse_args(argv)
    _quiet_third_party()
    try:
        args.run(args, load_pipeline)
    except AttnkitError as error:
        print(f"attnkit: error: {error}", file=sys.stderr)
        return 2
    return 0
