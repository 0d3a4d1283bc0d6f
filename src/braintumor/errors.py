"""Typed errors raised by the library. Only the CLI turns them into one-line messages and exit codes."""

from __future__ import annotations

from pathlib import Path


class BrainTumorError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class UsageError(BrainTumorError):
    """The caller asked for something that cannot work (bad folder layout, bad option): exit code 2."""

    exit_code = 2


class DataError(UsageError):
    """The data set as a whole is unusable: no images, an empty class folder, a single class."""


class UnreadableImageError(BrainTumorError):
    """One file could not be turned into an image.

    Attributes:
        path: the file.
        reason: a short human-readable reason (``"not an image (text)"``, ``"truncated JPEG"``...).
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class RunError(UsageError):
    """A run folder is missing, incomplete or inconsistent."""


class PretrainedUnavailableError(BrainTumorError):
    """Pretrained weights were asked for but cannot be obtained (e.g. no network)."""
