"""`attnkit ui [MODEL] [--host H --port P]`: serve the web app on one loaded pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import AttnkitError
from .options import MODEL_HELP, port

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the `ui` subcommand to the `attnkit` parser's subcommands."""
    p = commands.add_parser("ui", help="web app (Gradio): regional prompting, word maps and segmentation in a browser")
    p.add_argument("model", nargs="?", default="shapes-sd3", help=MODEL_HELP + " (default shapes-sd3)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=port, default=7860, help="port to serve on (default 7860)")
    p.set_defaults(run=_ui)


def _ui(args: argparse.Namespace, load: Any) -> None:
    try:
        from ..ui.app import launch
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise AttnkitError("`attnkit ui` needs gradio, an optional dependency: pip install \"attnkit[ui]\" (or "
                           "pip install gradio).") from None
    launch(args.model, args.host, args.port, loader=load)
