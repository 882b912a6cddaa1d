"""Choices of `attnkit.kv.edit_video`, importable without torch (the command line's help and the web app show them)."""

__all__ = ["ATTEND", "VIDEO_METHODS"]

#: The frames later frames attend to: none (plain per-frame img2img), the first frame, or the first and the previous.
ATTEND: tuple[str, ...] = ("none", "first", "first+previous")
#: The published cross-frame attentions `edit_video(method=...)` sets up (`attnkit.kv.methods`).
VIDEO_METHODS: tuple[str, ...] = ("text2video-zero", "rerender")
