"""What keeps `attnkit ui` up for whoever reaches it: uploads checked before anything decodes them (bytes, pixels,
format; the page takes images as plain file uploads, since Gradio's image field decodes an upload before any check
and fails with no message), mask files of an uploaded spec confined to that upload, each request's files removed once they are old or
over a size budget, and the address and login it serves on.

Gradio only, like the rest of `attnkit.ui`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

import gradio as gr
from PIL import Image, UnidentifiedImageError

from ..errors import AttnkitError

__all__ = ["Keep", "Keeper", "Limits", "check_mask_name", "exposed", "read_upload"]


@dataclass(frozen=True)
class Limits:
    """The largest upload the server takes: `max_bytes` per file and `max_pixels` per image (checked from the
    image's header, before it is decoded)."""

    max_bytes: int = 50 * 2**20
    max_pixels: int = 50_000_000

    def check_bytes(self, path: str | Path, what: str) -> None:
        size = Path(path).stat().st_size
        if size > self.max_bytes:
            raise AttnkitError(f"{what} is {size / 2**20:.1f} MB; this server takes files up to "
                               f"{self.max_bytes / 2**20:.0f} MB (`attnkit ui --max-upload-mb`). Upload a smaller "
                               "file.")


def read_upload(path: str | Path, what: str, limits: Limits) -> Image.Image:
    """The uploaded image at `path`, decoded, once its size in bytes and pixels is within `limits`; an AttnkitError
    naming `what` for a file too large, one that is not an image, or one that is cut short."""
    limits.check_bytes(path, what)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > limits.max_pixels:
                _too_many(what, f"{width}x{height} pixels ({width * height / 1e6:.0f} megapixels)", limits)
            image.load()
            return image.copy()
    except Image.DecompressionBombError as error:  # Pillow refuses to open it at all
        found = re.search(r"\((\d+) pixels\)", str(error))
        _too_many(what, f"{int(found[1]) / 1e6:.0f} megapixels" if found else "too many pixels to decode safely",
                  limits)
    except UnidentifiedImageError:
        raise AttnkitError(f"{what} is not an image (its content is no PNG, JPEG, WebP or other image format, "
                           "whatever its name says); upload an image file.") from None
    except OSError as error:  # truncated or corrupt data
        raise AttnkitError(f"{what} is a damaged image ({error}); save it again and upload the new file.") from None


def _too_many(what: str, size: str, limits: Limits) -> NoReturn:
    raise AttnkitError(f"{what} is {size}; this server takes images up to {limits.max_pixels / 1e6:.0f} megapixels "
                       "(`attnkit ui --max-upload-mpx`). Scale it down first.")


def check_mask_name(name: Any, where: str) -> str:
    """A spec's `mask:` file name, checked to name a file of the same upload: a bare name, never a path that leaves
    it (absolute, with folders, or `..`)."""
    if not isinstance(name, str) or not name.strip():
        raise AttnkitError(f"{where}: mask must be the name of a mask image uploaded with the spec, or rows of numbers "
                           f"in [0, 1]; got {name!r}.")
    parts = (PurePosixPath(name), PureWindowsPath(name))
    if any(p.is_absolute() or p.anchor or len(p.parts) != 1 or ".." in p.parts for p in parts) or name in (".", ".."):
        raise AttnkitError(f"{where}: mask {name!r} points outside the upload; a spec loaded here may name only mask "
                           "images uploaded together with it, by file name (e.g. `mask: mask-2.png`). Upload the "
                           "mask beside the spec and name it so.")
    return name


@dataclass(frozen=True)
class Keep:
    """How long the files a request leaves (its outputs, Gradio's copies of them, uploads) are kept: at most
    `max_age` seconds, and while all of them together pass `max_bytes` the oldest go first; none goes before
    `min_age` seconds, the time a page has to fetch what it was just sent."""

    max_age: float = 3600.0
    max_bytes: int = 2 * 2**30
    min_age: float = 60.0


class Keeper:
    """Removes the files of an app's requests under a `Keep` budget: the request folders under `folder` and the
    files Gradio recorded for the app (uploads and its cached copies of outputs). It replaces Gradio's own
    `delete_cache`, which goes by age only and whose loop over those records must not meet a second remover."""

    def __init__(self, folder: Path, keep: Keep) -> None:
        self.folder = folder
        self.keep = keep
        self._blocks: gr.Blocks | None = None
        self._lock = threading.Lock()

    def attach(self, blocks: gr.Blocks) -> None:
        """Also keep the files Gradio records for `blocks`: uploads and its cached copies of outputs (not the
        files the page itself shows at start, such as a component's first value)."""
        self._blocks = blocks

    def _entries(self) -> list[tuple[float, int, Path, set[str] | None]]:
        """(time, bytes, path, Gradio's set that records it) of every kept request folder and Gradio file."""
        entries = []
        if self.folder.is_dir():
            for child in self.folder.iterdir():
                try:
                    stamp = child.stat().st_mtime
                    size = sum(f.stat().st_size for f in child.rglob("*") if f.is_file()) if child.is_dir() else \
                        child.stat().st_size
                except FileNotFoundError:
                    continue
                entries.append((stamp, size, child, None))
        if self._blocks is None:
            return entries
        lasting = set().union(*(getattr(block, "keep_in_cache", set()) for block in self._blocks.blocks.values()))
        for recorded in self._blocks.temp_file_sets:
            for name in _snapshot(recorded):
                if name in lasting:
                    continue
                try:
                    stat = os.lstat(name)
                except FileNotFoundError:
                    recorded.discard(name)
                    continue
                entries.append((stat.st_ctime, stat.st_size, Path(name), recorded))
        return entries

    def sweep(self, now: float | None = None) -> int:
        """Remove what is past the budget at time `now` (default: the clock); returns the bytes removed."""
        now = time.time() if now is None else now
        keep = self.keep
        removed = 0
        with self._lock:
            entries = sorted(self._entries(), key=lambda entry: entry[0])
            total = sum(entry[1] for entry in entries)
            for stamp, size, path, recorded in entries:
                age = now - stamp
                if age < keep.min_age or (age <= keep.max_age and total <= keep.max_bytes):
                    continue
                _remove(path, recorded)
                total -= size
                removed += size
        return removed

    def run_every(self, seconds: float) -> threading.Thread:
        """Sweep every `seconds` on a daemon thread, so that an idle server frees its disk too."""

        def loop() -> None:
            while True:
                time.sleep(seconds)
                self.sweep()

        thread = threading.Thread(target=loop, name="attnkit-ui-keeper", daemon=True)
        thread.start()
        return thread


def _snapshot(recorded: set[str]) -> list[str]:
    """The names in a set that Gradio's request threads may add to while it is copied."""
    while True:
        try:
            return list(recorded)
        except RuntimeError:  # it changed size during the copy: copy again
            continue


def _remove(path: Path, recorded: set[str] | None) -> None:
    """Remove a request folder, or a Gradio file and its hash folder once empty."""
    if recorded is None:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return
    path.unlink(missing_ok=True)
    recorded.discard(str(path))
    try:
        path.parent.rmdir()  # Gradio keeps each file in a folder named by its hash
    except OSError:
        pass


def exposed(host: str) -> bool:
    """Whether serving on `host` lets other machines in: anything but a loopback address or name."""
    if host.lower() in ("localhost", "ip6-localhost"):
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True  # a host name: it may resolve to any interface
