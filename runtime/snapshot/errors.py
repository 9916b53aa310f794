"""Errors raised while capturing or restoring a program."""

from __future__ import annotations


class SnapshotError(Exception):
    """Base class of every snapshot/restore failure."""


class CaptureError(SnapshotError):
    """Part of the program's state cannot be captured; the program is left untouched.

    ``path`` names where the object was reached, e.g. ``globals['feed'].gen``.
    """

    def __init__(self, path: str, what: str, hint: str = "") -> None:
        self.path = path
        self.what = what
        message = f"cannot snapshot {path}: {what}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class RestoreError(SnapshotError):
    """A snapshot is corrupt, truncated, tampered with or of an unknown version."""
