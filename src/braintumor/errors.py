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
        self.reason = _printable(reason)
        super().__init__(f"{_printable(self.path)}: {self.reason}")


class ImageTooLargeError(UnreadableImageError):
    """A file over one of the size caps of :mod:`braintumor.data.limits`, found from its header (nothing decoded).

    The service answers it with HTTP 413 and its message.

    Attributes:
        limit: the cap that was exceeded (a number of ``what``).
        what: ``"pixels"``, ``"voxels"`` or ``"decompressed bytes"``.

    Example:
        >>> from braintumor.errors import ImageTooLargeError
        >>> err = ImageTooLargeError("scan.dcm", "image too large: 9000x9000 pixels (limit 40,000,000 pixels)",
        ...                          40_000_000, "pixels")
        >>> str(err), err.limit, err.what
        ('scan.dcm: image too large: 9000x9000 pixels (limit 40,000,000 pixels)', 40000000, 'pixels')
    """

    def __init__(self, path: str | Path, reason: str, limit: int, what: str):
        self.limit = int(limit)
        self.what = what
        super().__init__(path, reason)

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.limit, self.what)


def _printable(text) -> str:
    """``text`` as any terminal can print it: :func:`braintumor.display.printable` (bytes that are not UTF-8 as
    ``\\xNN``, control characters as ``\\x0a``...; ordinary text unchanged)."""
    from .display import printable

    return printable(text)


class RunError(UsageError):
    """A run folder is missing, incomplete or inconsistent."""


class PretrainedUnavailableError(BrainTumorError):
    """Pretrained weights were asked for but cannot be obtained (e.g. no network)."""
