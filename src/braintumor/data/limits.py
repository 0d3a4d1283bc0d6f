"""How big an input may be: one place for the pixel, voxel and decompressed-byte caps of every reader.

Every reader checks its input against these caps from the file's *header*, before any pixel is decoded or any
stream is decompressed, and refuses a file over a cap with :class:`~braintumor.errors.ImageTooLargeError` (an
:class:`~braintumor.errors.UnreadableImageError` with ``.limit`` and ``.what``):

=========================  ==========================================================================================
``max_pixels``             pixels of one 2-D image or one slice/frame (PIL ``width x height``, DICOM ``Rows x
                           Columns``, the two in-plane axes of a NIfTI volume). Default 64,000,000 (an 8000x8000
                           image; the largest MRI slices are 1024x1024).
``max_voxels``             voxels of one volume: DICOM ``Rows x Columns x NumberOfFrames``, the product of a
                           NIfTI's three spatial dimensions (of its first volume when 4-D). Default 256,000,000:
                           about four times a 0.5 mm isotropic whole head at 7 T (480x480x300, 69 Mvoxel), while
                           decoding such a volume needs about 15 bytes per voxel (4 GB) at its peak; the next
                           power of two would let one file take 8 GB.
``max_decompressed_bytes`` bytes a gzip/deflate stream may expand to: a ``.nii.gz`` up to the end of the data read,
                           a DICOM file with the Deflated transfer syntax. Default 1 GiB (the largest volume above
                           as ``float32`` still fits; a gzip bomb expanding to more is refused before it is
                           decompressed when its header says so, and after 1 GiB otherwise).
=========================  ==========================================================================================

The caps in force are, first to last: those of :func:`use_limits` (a context manager, per call and per thread:
a :mod:`contextvars` variable), those of :func:`set_process_limits`, the environment variables
``BRAINTUMOR_MAX_PIXELS``, ``BRAINTUMOR_MAX_VOXELS`` and ``BRAINTUMOR_MAX_DECOMPRESSED_MB`` (mebibytes; read at
every call, like ``BRAINTUMOR_DICOM_WINDOW``), then the defaults. :func:`~braintumor.data.read.read_image` also
takes ``limits=`` for one call. A service that decodes in a thread pool passes ``limits=`` (or enters
:func:`use_limits` inside the worker function: a context is not inherited by ``concurrent.futures`` workers).

Example:
    >>> from braintumor.data.limits import Limits, current_limits, use_limits
    >>> current_limits().max_pixels                       # doctest: +SKIP
    64000000
    >>> with use_limits(max_pixels=40_000_000):
    ...     current_limits().max_pixels
    40000000
    >>> Limits(max_voxels=1_000_000).max_voxels
    1000000
"""

from __future__ import annotations

import contextvars
import io
import math
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import BinaryIO

from ..errors import ImageTooLargeError, UsageError

#: Default cap on the pixels of one 2-D image or slice (an 8000x8000 image).
DEFAULT_MAX_PIXELS = 64_000_000
#: Default cap on the voxels of one volume (see the module docstring for why).
DEFAULT_MAX_VOXELS = 256_000_000
#: Default cap on what one gzip/deflate stream may decompress to, in bytes (1 GiB).
DEFAULT_MAX_DECOMPRESSED_BYTES = 1 << 30

#: Environment variables (read at every call); the last is in mebibytes (2**20 bytes) and may be fractional.
PIXELS_ENV = "BRAINTUMOR_MAX_PIXELS"
VOXELS_ENV = "BRAINTUMOR_MAX_VOXELS"
DECOMPRESSED_ENV = "BRAINTUMOR_MAX_DECOMPRESSED_MB"

#: Largest value any cap may be set to (2**48: far above any memory, small enough that products stay exact).
CEILING = 1 << 48
_MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """The caps one read works under (see the module docstring).

    Args:
        max_pixels: pixels of one 2-D image or slice.
        max_voxels: voxels of one volume.
        max_decompressed_bytes: bytes one gzip/deflate stream may decompress to.

    Raises:
        UsageError: a value that is not a whole number from 1 to 2**48.

    Example:
        >>> from braintumor.data.limits import Limits
        >>> Limits(max_pixels=1000).tighter(Limits(max_pixels=500, max_voxels=10**9)).max_pixels
        500
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_voxels: int = DEFAULT_MAX_VOXELS
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _whole(getattr(self, f.name), f.name))

    def replace(self, **values) -> Limits:
        """A copy with the given caps changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def tighter(self, other: Limits) -> Limits:
        """The smaller of the two for each cap (a service's limits never loosen the operator's)."""
        return Limits(*(min(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))


def _whole(value, name: str) -> int:
    """``value`` as an int in 1..CEILING, or UsageError naming ``name``, the value and what is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{name} must be a whole number from 1 to {CEILING:,}, got {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise UsageError(f"{name} must be a whole number from 1 to {CEILING:,}, got {value!r}")
    if not 1 <= value <= CEILING:
        raise UsageError(f"{name} must be a whole number from 1 to {CEILING:,}, got {value!r}")
    return int(value)


def _env_number(name: str, scale: int = 1, environ=None) -> int | None:
    text = (os.environ if environ is None else environ).get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = math.nan
    unit = " (mebibytes)" if scale != 1 else ""
    if not math.isfinite(value) or value <= 0 or (scale == 1 and value != int(value)) or value * scale > CEILING:
        raise UsageError(f"environment variable {name}{unit} must be a positive "
                         f"{'number' if scale != 1 else 'whole number'} up to {CEILING // scale:,}, got '{text}'")
    return max(1, int(value * scale))


def limits_from_env(environ=None) -> Limits:
    """The defaults overridden by ``BRAINTUMOR_MAX_PIXELS``/``_VOXELS``/``_DECOMPRESSED_MB`` where set.

    Raises:
        UsageError: a variable that is not a positive number (the message names it and its value).

    Example:
        >>> from braintumor.data.limits import limits_from_env
        >>> limits_from_env({"BRAINTUMOR_MAX_DECOMPRESSED_MB": "256"}).max_decompressed_bytes
        268435456
    """
    return Limits().replace(max_pixels=_env_number(PIXELS_ENV, environ=environ),
                            max_voxels=_env_number(VOXELS_ENV, environ=environ),
                            max_decompressed_bytes=_env_number(DECOMPRESSED_ENV, _MIB, environ))


_CALL: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("braintumor_limits", default=None)
_PROCESS: Limits | None = None


def set_process_limits(limits: Limits | None) -> None:
    """Caps for the whole process, above the environment (``None``: back to the environment and defaults).

    Example:
        >>> from braintumor.data.limits import Limits, current_limits, set_process_limits
        >>> set_process_limits(Limits(max_pixels=40_000_000))
        >>> current_limits().max_pixels
        40000000
        >>> set_process_limits(None)
    """
    global _PROCESS
    if limits is not None and not isinstance(limits, Limits):
        raise TypeError(f"set_process_limits takes a Limits or None, got {type(limits).__name__}")
    _PROCESS = limits


def current_limits() -> Limits:
    """The caps in force here and now (see the module docstring for the order).

    Raises:
        UsageError: a malformed environment variable (only when nothing above it decides).
    """
    call = _CALL.get()
    if call is not None:
        return call
    return _PROCESS if _PROCESS is not None else limits_from_env()


@contextmanager
def use_limits(limits: Limits | None = None, **values) -> Iterator[Limits]:
    """Read under other caps inside the ``with`` block (this thread/task only).

    Args:
        limits: the caps to use (default: those in force now).
        **values: caps changed on top of that (``max_pixels=``, ``max_voxels=``, ``max_decompressed_bytes=``).

    Example:
        >>> from braintumor.data.limits import current_limits, use_limits
        >>> with use_limits(max_decompressed_bytes=256 << 20) as lim:
        ...     lim.max_decompressed_bytes == current_limits().max_decompressed_bytes == 268435456
        True
    """
    base = limits if limits is not None else current_limits()
    token = _CALL.set(base.replace(**values))
    try:
        yield _CALL.get()
    finally:
        _CALL.reset(token)


# ------------------------------------------------------------------------------------------------------ checks


def _dims(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def check_pixels(path: str | Path, width: int, height: int, limits: Limits | None = None, *,
                 kind: str = "image") -> None:
    """Refuse an image (or slice) of ``width x height`` pixels over ``max_pixels``.

    Raises:
        ImageTooLargeError: ``"scan.dcm: image too large: 9000x9000 pixels (limit 64,000,000 pixels)"``.
    """
    limit = (limits or current_limits()).max_pixels
    if int(width) * int(height) > limit:
        raise ImageTooLargeError(path, f"{kind} too large: {int(width)}x{int(height)} pixels "
                                       f"(limit {limit:,} pixels)", limit, "pixels")


def check_voxels(path: str | Path, shape, limits: Limits | None = None) -> None:
    """Refuse a volume whose dimensions ``shape`` multiply to more than ``max_voxels``.

    Raises:
        ImageTooLargeError: ``"vol.nii.gz: volume too large: 2048x2048x512 voxels (limit 256,000,000 voxels)"``.
    """
    limit = (limits or current_limits()).max_voxels
    if math.prod(int(s) for s in shape) > limit:
        raise ImageTooLargeError(path, f"volume too large: {_dims(shape)} voxels (limit {limit:,} voxels)",
                                 limit, "voxels")


def _too_many_bytes(path, limit: int, what: str) -> ImageTooLargeError:
    return ImageTooLargeError(path, f"too large when decompressed: {what} (limit {limit:,} decompressed bytes)",
                              limit, "decompressed bytes")


def check_decompressed(path: str | Path, nbytes: int, limits: Limits | None = None, what: str = "") -> None:
    """Refuse a stream whose header says it decompresses to ``nbytes`` bytes, over ``max_decompressed_bytes``."""
    limit = (limits or current_limits()).max_decompressed_bytes
    if int(nbytes) > limit:
        raise _too_many_bytes(path, limit, what or f"{int(nbytes):,} bytes")


def inflate(src: BinaryIO | bytes, path: str | Path, *, wbits: int = -zlib.MAX_WBITS,
            limits: Limits | None = None, chunk: int = 1 << 20,
            on_prefix: Callable[[bytes], None] | None = None, prefix: int = 1 << 16) -> bytes:
    """Decompress a deflate (``wbits=-15``), zlib (15) or gzip (31) stream, never past ``max_decompressed_bytes``.

    ``on_prefix(first_bytes)`` is called once with the first ``prefix`` decompressed bytes (or all of them when
    fewer), before the rest is decompressed: a reader checks the header there and raises to stop early.

    Raises:
        ImageTooLargeError: the stream expands to more than the cap (found without decompressing further).
        zlib.error, EOFError: a corrupt or truncated stream (the caller names the format).

    Example:
        >>> import zlib
        >>> from braintumor.data.limits import Limits, inflate
        >>> packed = zlib.compress(bytes(10_000))[2:-4]          # raw deflate
        >>> len(inflate(packed, "x.dcm"))
        10000
        >>> inflate(packed, "x.dcm", limits=Limits(max_decompressed_bytes=100))   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        braintumor.errors.ImageTooLargeError: x.dcm: too large when decompressed: more than 100 bytes (limit 100 ...
    """
    limit = (limits or current_limits()).max_decompressed_bytes
    stream = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    d = zlib.decompressobj(wbits)
    out = bytearray()
    while not d.eof:
        data = d.unconsumed_tail or stream.read(chunk)
        if not data:
            break
        want = limit + 1 - len(out)
        if on_prefix is not None:
            want = min(want, max(1, prefix - len(out)))
        out += d.decompress(data, want)
        if on_prefix is not None and len(out) >= prefix:
            on_prefix(bytes(out))
            on_prefix = None
        if len(out) > limit:
            raise _too_many_bytes(path, limit, f"more than {limit:,} bytes")
    if not d.eof:
        raise EOFError("truncated compressed stream")
    if on_prefix is not None:
        on_prefix(bytes(out))
    return bytes(out)


class BoundedReader(io.RawIOBase):
    """A read-only, seekable view of a decompressing stream (e.g. :class:`gzip.GzipFile`) that refuses to go past
    ``max_decompressed_bytes``: reading or seeking beyond raises :class:`ImageTooLargeError` instead of inflating
    a bomb. Seeking from the end is refused (it would decompress everything).

    Example:
        >>> import gzip, io
        >>> from braintumor.data.limits import BoundedReader, Limits
        >>> raw = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(bytes(1000))))
        >>> len(BoundedReader(raw, "v.nii.gz", Limits(max_decompressed_bytes=1000)).read())
        1000
    """

    def __init__(self, raw, path: str | Path, limits: Limits | None = None):
        super().__init__()
        self._raw = raw
        self.path = path
        self.limit = (limits or current_limits()).max_decompressed_bytes

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._raw.tell()
        elif whence != io.SEEK_SET:
            raise OSError("seeking from the end of a compressed stream is not supported")
        if offset > self.limit:
            raise _too_many_bytes(self.path, self.limit, f"data at byte {int(offset):,}")
        return self._raw.seek(max(0, offset))

    def read(self, size: int | None = -1) -> bytes:
        room = self.limit - self._raw.tell()
        want = room + 1 if size is None or size < 0 else min(size, room + 1)
        data = self._raw.read(max(0, want))
        if len(data) > room:
            raise _too_many_bytes(self.path, self.limit, f"more than {self.limit:,} bytes")
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()
