"""The one exception attnkit raises for anything a user can fix."""

from __future__ import annotations

__all__ = ["AttnkitError"]


class AttnkitError(ValueError):
    """A bad input or an unsupported model: the message names the problem and the fix."""
