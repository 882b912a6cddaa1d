"""Choices of `attnkit.kv.edit_video`, importable without torch (the command line's help and the web app show them)."""

__all__ = ["ATTEND"]

#: Cross-frame attention: none (plain per-frame img2img), the first frame (Text2Video-Zero), or the first and the
#: previous frame (Rerender-A-Video).
ATTEND: tuple[str, ...] = ("none", "first", "first+previous")
