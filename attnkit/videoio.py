"""Reading and writing videos one frame at a time: mp4 (and other containers) through PyAV, GIF through Pillow, and
folders of numbered images. Readers yield frames lazily, so memory does not grow with the video's length."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image, ImageSequence, UnidentifiedImageError

from .errors import AttnkitError

__all__ = ["FRAME_SUFFIXES", "probe", "read_frames", "write_frames"]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_FPS = 8.0


def _kind(path: Path) -> str:
    if path.suffix.lower() == ".gif":
        return "gif"
    if path.is_dir() or not path.suffix:
        return "folder"
    return "av"


def probe(path: str | Path) -> tuple[tuple[int, int], float]:
    """((width, height), frames per second) of a video, GIF or folder, from its first frame; a clear error if it
    is missing, unreadable or empty."""
    path = Path(path)
    first = next(read_frames(path), None)
    if first is None:
        raise AttnkitError(f"{str(path)!r} holds no frames: give a video with at least one frame.")
    return first.size, _fps(path)


def _fps(path: Path) -> float:
    kind = _kind(path)
    if kind == "gif":
        with Image.open(path) as image:
            duration = image.info.get("duration") or 1000 / DEFAULT_FPS
        return 1000.0 / duration
    if kind == "folder":
        return DEFAULT_FPS
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else DEFAULT_FPS


def read_frames(path: str | Path, limit: int | None = None) -> Iterator[Image.Image]:
    """RGB frames of `path` in order, at most `limit` of them."""
    path = Path(path)
    if not path.exists():
        raise AttnkitError(f"no video at {str(path)!r}: give an .mp4 / .gif file or a folder of frame images.")
    frames = {"gif": _gif, "folder": _folder, "av": _av}[_kind(path)](path)
    for index, frame in enumerate(frames):
        if limit is not None and index >= limit:
            return
        yield frame


def _gif(path: Path) -> Iterator[Image.Image]:
    try:
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                yield frame.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise AttnkitError(f"cannot read {str(path)!r} as a GIF ({error}).") from error


def _folder(path: Path) -> Iterator[Image.Image]:
    if not path.is_dir():
        raise AttnkitError(f"{str(path)!r} is neither a folder of frames nor a file with a video suffix.")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    for file in files:
        try:
            with Image.open(file) as image:
                yield image.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise AttnkitError(f"cannot read frame {str(file)!r} ({error}).") from error


def _av(path: Path) -> Iterator[Image.Image]:
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as error:
        raise AttnkitError(f"cannot read {str(path)!r} as a video ({error}).") from error
    with container:
        if not container.streams.video:
            raise AttnkitError(f"{str(path)!r} has no video stream.")
        try:
            for frame in container.decode(video=0):
                yield frame.to_image().convert("RGB")
        except av.error.FFmpegError as error:
            raise AttnkitError(f"cannot decode {str(path)!r} ({error}).") from error


def write_frames(path: str | Path, frames: Iterable[Image.Image], fps: float) -> int:
    """Write `frames` as an mp4 (H.264 through PyAV), a GIF, or numbered PNGs in a folder; returns the count."""
    path = Path(path)
    kind = _kind(path)
    if kind == "folder":
        path.mkdir(parents=True, exist_ok=True)
        count = 0
        for count, frame in enumerate(frames, start=1):
            frame.save(path / f"{count - 1:05d}.png")
        return count
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "gif":
        held = list(frames)  # Pillow writes a GIF in one go
        if held:
            held[0].save(path, save_all=True, append_images=held[1:], duration=round(1000 / fps), loop=0)
        return len(held)
    return _write_av(path, frames, fps)


def _write_av(path: Path, frames: Iterable[Image.Image], fps: float) -> int:
    from fractions import Fraction

    import av

    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height = frame.size
                stream.pix_fmt = "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count
