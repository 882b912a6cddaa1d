"""The one exception attnkit raises for anything a user can fix, and the one warning for what it works around."""

from __future__ import annotations

__all__ = ["AttnkitError", "AttnkitWarning"]


class AttnkitError(ValueError):
    """A bad input or an unsupported model: the message names the problem and the fix."""


class AttnkitWarning(UserWarning):
    """attnkit took a slower or different path than the one selected (for example its own attention kernel where
    the chosen backend cannot return what a feature needs); the results stay exact."""
