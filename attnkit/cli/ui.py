"""`attnkit ui [MODEL] [--host H --port P --auth USER:PASS]`: serve the web app on one loaded pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import AttnkitError
from .options import MODEL_HELP, checked_float, port

__all__ = ["register"]

_positive = checked_float(lambda value: value > 0, "a positive number")


def _auth(text: str) -> tuple[str, str]:
    """`--auth USER:PASS` as Gradio's (user, password); the password may itself hold colons."""
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise argparse.ArgumentTypeError("give USER:PASS, both non-empty, e.g. --auth ana:s3cret")
    return user, password


def register(commands: Any) -> None:
    """Add the `ui` subcommand to the `attnkit` parser's subcommands."""
    p = commands.add_parser("ui", help="web app (Gradio): regional prompting, word maps and segmentation in a browser")
    p.add_argument("model", nargs="?", default="shapes-sd3", help=MODEL_HELP + " (default shapes-sd3)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface, "
                        "which lets anyone on the network use the page and the GPU: add --auth)")
    p.add_argument("--port", type=port, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--auth", type=_auth, metavar="USER:PASS", help="ask for this login before serving the page")
    p.add_argument("--keep-minutes", type=_positive, default=60.0,
                   help="remove each request's files (outputs, uploads) this many minutes after it (default 60)")
    p.add_argument("--keep-mb", type=_positive, default=2048.0,
                   help="remove the oldest request files first while they take more than this many MB (default 2048)")
    p.add_argument("--max-upload-mb", type=_positive, default=50.0,
                   help="refuse uploads larger than this many MB (default 50)")
    p.add_argument("--max-upload-mpx", type=_positive, default=50.0,
                   help="refuse uploaded images of more than this many megapixels (default 50)")
    p.set_defaults(run=_ui)


def _ui(args: argparse.Namespace, load: Any) -> None:
    try:
        from ..ui.app import Keep, Limits, launch
    except ModuleNotFoundError as error:
        if error.name not in ("gradio", "gradio_image_annotation"):
            raise
        raise AttnkitError(f"`attnkit ui` needs {error.name}, an optional dependency: pip install \"attnkit[ui]\" (or "
                           "pip install gradio gradio_image_annotation).") from None
    keep = Keep(max_age=args.keep_minutes * 60, max_bytes=int(args.keep_mb * 2**20))
    limits = Limits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_upload_mpx * 1e6))
    launch(args.model, args.host, args.port, loader=load, keep=keep, limits=limits, auth=args.auth)
