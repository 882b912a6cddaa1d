"""`attnkit ui [MODEL] [--host H --port P]`: serve the web app on one loaded pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli import MODEL_HELP
from ..errors import AttnkitError

__all__ = ["register"]


def _port(text: str) -> int:
    """argparse type of a TCP port, so that 0 or 70000 is a usage error rather than a failure of the server."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"got {text!r}; give a port number from 1 to 65535")
    return value


def register(commands: Any) -> None:
    """Add the `ui` subcommand to the `attnkit` parser's subcommands."""
    p = commands.add_parser("ui", help="web app (Gradio): regional prompting, word maps and segmentation in a browser")
    p.add_argument("model", nargs="?", default="shapes-sd3", help=MODEL_HELP + " (default shapes-sd3)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=_port, default=7860, help="port to serve on (default 7860)")
    p.set_defaults(run=_ui)


def _ui(args: argparse.Namespace) -> None:
    try:
        from .app import launch
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise AttnkitError("`attnkit ui` needs gradio, an optional dependency: pip install \"attnkit[ui]\" (or "
                           "pip install gradio).") from None
    launch(args.model, args.host, args.port)
