"""The one base class of errors that are the user's to fix (the CLI prints them on one line)."""

from __future__ import annotations

__all__ = ["StudyError", "UserError"]


class UserError(Exception):
    """Bad input the user can fix; the message names the cause and the fix (CLI: exit code 2)."""


class StudyError(UserError):
    """A study file that cannot be used; the message names file, key and reason."""
