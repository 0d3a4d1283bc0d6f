"""Turn any supported file into an ``uint8`` RGB image array, or raise :class:`UnreadableImageError`.

The format is decided by the file's content, not its name: the Navoneel set has PNGs named ``.jpg``.
Greyscale, RGB, RGBA, LA, palette, CMYK and 16-bit images all come out as ``(H, W, 3)`` ``uint8``.

Other modules register readers for further formats with :func:`register_reader` (DICOM, NIfTI).

Multi-slice sources (NIfTI volumes, multi-frame DICOM, folders holding one DICOM series) have *frames*:
``read_image(path, frame=k)`` reads slice ``k``, and the reference ``"vol.nii.gz#12"`` (see :func:`frame_ref`)
means the same thing wherever a path is expected. Without a frame a volume gives its middle slice.

Example:
    >>> from braintumor.data.read import read_image
    >>> img = read_image("scan.png")          # doctest: +SKIP
    >>> img.shape, img.dtype                  # doctest: +SKIP
    ((512, 512, 3), dtype('uint8'))
"""

from __future__ import annotations

import os
import re
import stat
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import ImageTooLargeError, UnreadableImageError
from . import limits as _limits
from .limits import Limits, use_limits

#: Suffixes discovered as 2-D raster images (compared lower-case).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

#: The default cap on an image's pixels (decompression-bomb guard). The cap in force is
#: :func:`braintumor.data.limits.current_limits` ``.max_pixels`` (``BRAINTUMOR_MAX_PIXELS``, ``use_limits``).
MAX_PIXELS = _limits.DEFAULT_MAX_PIXELS
#: Smallest side accepted, in pixels.
MIN_SIDE = 8

# A truncated file must fail loudly, never be half-decoded.
ImageFile.LOAD_TRUNCATED_IMAGES = False

Reader = Callable[[Path], np.ndarray]
# (predicate on path, reader, frame counter or None); first match wins. Predicates look at names or magic bytes.
_READERS: list[tuple[Callable[[Path], bool], Callable, Callable[[Path], int] | None, str | None]] = []
# Predicates that claim files without a usable suffix by their content (e.g. DICOM's 'DICM' magic).
_SNIFFERS: list[Callable[[Path], bool]] = []


def register_reader(predicate: Callable[[Path], bool], reader: Reader, *, first: bool = True,
                    frames: Callable[[Path], int] | None = None, name: str | None = None) -> None:
    """Register a reader for files where ``predicate(path)`` is true (e.g. DICOM by magic bytes).

    Args:
        predicate: ``predicate(path) -> bool``; may be given folders too (a DICOM series folder).
        reader: ``reader(path) -> array``; with ``frames`` it is called as ``reader(path, frame)``
            (``frame=None``: its default frame, the middle slice of a volume).
        first: try this reader before the ones registered earlier.
        frames: ``frames(path) -> int``, the number of slices of a multi-slice source (header only, cheap).
        name: the format's name reported by :func:`image_format` (``"DICOM"``, ``"NIfTI"``).
    """
    entry = (predicate, reader, frames, name)
    if first:
        _READERS.insert(0, entry)
    else:
        _READERS.append(entry)


def register_sniffer(predicate: Callable[[Path], bool]) -> None:
    """Make discovery pick up files without a known suffix when ``predicate(path)`` recognises their content."""
    _SNIFFERS.append(predicate)


def sniff_supported(path: Path) -> bool:
    """True when a registered sniffer recognises the content of ``path`` (used for suffix-less files)."""
    return any(pred(path) for pred in _SNIFFERS)


def _match(path: Path) -> tuple:
    """``(reader, frames, name)`` of the first registered reader that claims ``path``; ``(None, None, None)``."""
    for predicate, reader, frames, name in _READERS:
        try:
            hit = predicate(path)
        except OSError:
            hit = False
        if hit:
            return reader, frames, name
    return None, None, None


def split_ref(path: str | Path) -> tuple[Path, int | None]:
    """``"vol.nii.gz#12"`` -> ``(Path("vol.nii.gz"), 12)``; a plain path -> ``(path, None)``.

    A file that really is named ``x#12`` wins over the reference reading.
    """
    p = Path(path)
    name = p.name
    head, sep, tail = name.rpartition("#")
    if not sep or not tail.isdigit() or not head or p.exists():
        return p, None
    return p.with_name(head), int(tail)


def frame_ref(path: str | Path, frame: int | None) -> Path:
    """The reference of slice ``frame`` of ``path`` (``vol.nii.gz#12``); ``path`` itself when ``frame`` is None."""
    return Path(path) if frame is None else Path(f"{path}#{int(frame)}")


def frame_count(path: str | Path) -> int:
    """Number of slices of a source: 1 for 2-D images, the slice count of volumes, multi-frame files, series."""
    path = Path(path)
    _, frames, _ = _match(path)
    if frames is None:
        return 1
    try:
        return max(1, int(frames(path)))
    except UnreadableImageError:
        return 1


def supported_suffixes() -> set[str]:
    """Suffixes that discovery picks up (raster images plus what registered readers add)."""
    return set(IMAGE_SUFFIXES) | set(_EXTRA_SUFFIXES)


_EXTRA_SUFFIXES: set[str] = set()


def register_suffixes(*suffixes: str) -> None:
    """Make discovery pick up files with these suffixes (lower-case, with the dot, e.g. ``.dcm``)."""
    _EXTRA_SUFFIXES.update(s.lower() for s in suffixes)


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise UnreadableImageError(path, f"cannot open ({exc.strerror or exc})") from None
    if not head:
        return "empty file"
    try:
        head.decode("utf-8")
        text = all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64])
    except UnicodeDecodeError:
        text = False
    return "not an image (looks like text)" if text else "not a recognised image format"


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric 2-D/3-D array to ``uint8``: 8-bit data untouched, wider data min-max stretched."""
    if arr.dtype == np.uint8:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf, then 0 below
        return _to_uint8(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    a = arr.astype(np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _pil_to_rgb(img: Image.Image, keep_grey: bool = False) -> np.ndarray:
    mode = img.mode
    if keep_grey and mode == "L":
        return np.asarray(img)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite onto black: MRI backgrounds are black, a white matte would create a fake frame.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = to_uint8(np.asarray(img))
        return grey if keep_grey else np.repeat(grey[..., None], 3, axis=2)
    if mode == "RGB":
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))


def _draft(img: Image.Image, w: int, h: int, side: int) -> None:
    """Have a JPEG decoded at ``1/f`` size (DCT scaling), ``f`` the power of two (at most 8) that
    :func:`braintumor.preprocess.reduction_factor` gives: PIL picks exactly ``f`` for the size asked."""
    from ..preprocess import reduction_factor

    f = min(8, reduction_factor(h, w, side))
    if f > 1:
        img.draft(img.mode, (w // f, h // f))


class _NotRaster(Exception):
    """PIL does not recognise the file (the fast path then asks the registered readers)."""


def _read_raster(path: Path, keep_grey: bool = False, describe: dict | None = None,
                 unidentified: type[Exception] | None = None, reduce_to: int = 0) -> np.ndarray:
    lim = _limits.current_limits()
    try:
        with warnings.catch_warnings():
            # PIL's own guard warns above 89 Mpixel and refuses above 179 Mpixel; ours is checked right below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                _limits.check_pixels(path, w, h, lim)
                if reduce_to > 0 and img.format == "JPEG":
                    _draft(img, w, h, reduce_to)
                img.load()
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if describe is not None:
                    describe.update(format=img.format, mode=img.mode)
                arr = _pil_to_rgb(img, keep_grey)
    except UnreadableImageError:
        raise
    except UnidentifiedImageError:
        if unidentified is not None:
            raise unidentified from None
        raise UnreadableImageError(path, _sniff(path)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # PIL refuses > 179 Mpixel itself
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than PIL accepts"
        raise ImageTooLargeError(path, f"image too large: {size} (limit {lim.max_pixels:,} pixels)", lim.max_pixels,
                                 "pixels") from None
    except OSError as exc:
        msg = str(exc)
        reason = "truncated or corrupt image data" if "truncated" in msg.lower() or "broken" in msg else msg
        raise UnreadableImageError(path, reason or "corrupt image") from None
    except (ValueError, SyntaxError, IndexError, EOFError, TypeError, KeyError, struct.error, ZeroDivisionError,
            OverflowError, RecursionError) as exc:
        raise UnreadableImageError(path, f"corrupt image ({type(exc).__name__}: {_first_line(exc)})") from None
    except MemoryError:
        raise UnreadableImageError(path, "image data too large for memory") from None
    return np.ascontiguousarray(arr)


def _exists(path: Path) -> bool:
    """``path.exists()``, or :class:`UnreadableImageError` for a name no file can have (a NUL byte, too long)."""
    try:
        return path.exists()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UnreadableImageError(path, f"invalid file name ({reason})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return (text.splitlines()[0] if text.strip() else type(exc).__name__)[:200]


def read_image(path: str | Path, frame: int | None = None, *, limits: Limits | None = None,
               keep_grey: bool = False, describe: dict | None = None, reduce_to: int = 0) -> np.ndarray:
    """Read one file (or one slice of a volume) as an ``(H, W, 3)`` ``uint8`` RGB array.

    Args:
        path: an image file, a volume (NIfTI, multi-frame DICOM), a folder holding one DICOM series, or a
            slice reference ``"vol.nii.gz#12"``.
        frame: the slice of a multi-slice source (default: the reference's, else the middle slice).
        limits: the size caps for this call (default: those in force, see :mod:`braintumor.data.limits`);
            checked from the header before anything is decoded or decompressed.
        keep_grey: return a single-channel source (an 8-bit greyscale raster, a DICOM or NIfTI slice) as an
            ``(H, W)`` array instead of three equal channels. The :class:`~braintumor.preprocess.Preprocessor` and
            the input check's image statistics give exactly the same results for both shapes, for less work
            (:func:`braintumor.data.cache.load_images` reads this way).
        describe: a dict that receives the decoder's ``format`` and ``mode``.
        reduce_to: decode a JPEG at ``1/2``, ``1/4`` or ``1/8`` size (DCT scaling, a fraction of the work) when
            both its sides stay at least this many pixels: the reduction a
            :class:`~braintumor.preprocess.Preprocessor` with ``reduce_first`` applies first anyway (it then
            reduces no further). Other formats are read whole. ``0`` (the default): always whole.

    Raises:
        UnreadableImageError: the file is missing, not an image, truncated, too small or too large, or the frame
            is out of range. :class:`~braintumor.errors.ImageTooLargeError` (a subclass) for a file over a cap.

    Example:
        >>> from braintumor import read_image
        >>> read_image("data/brain_mri_yes_no/yes/Y1.jpg").shape     # doctest: +SKIP
        (218, 180, 3)
        >>> read_image("scans/t1.nii.gz#80").dtype                    # doctest: +SKIP
        dtype('uint8')
    """
    if limits is not None:
        with use_limits(limits):
            return read_image(path, frame, keep_grey=keep_grey, describe=describe, reduce_to=reduce_to)
    path = Path(path)
    if frame is None and path.suffix.lower() in IMAGE_SUFFIXES and _is_regular_file(path):
        # The common case first: a raster file that PIL recognises (one stat, no look for the DICOM magic).
        # A file PIL does not recognise goes the long way below (DICOM under a raster name, text, garbage).
        try:
            return _checked(path, _read_raster(path, keep_grey, describe, unidentified=_NotRaster,
                                               reduce_to=reduce_to), keep_grey)
        except _NotRaster:
            pass
    if frame is None and not _exists(path):
        path, frame = split_ref(path)
    if not _exists(path):
        raise UnreadableImageError(path, "no such file")
    reader, frames, name = _match(path)
    if reader is not None and frames is not None:
        arr = reader(path, frame)
    elif path.is_dir():
        raise UnreadableImageError(path, "a folder, not an image (nor a single DICOM series)")
    else:
        if frame not in (None, 0):
            raise UnreadableImageError(path, f"frame {frame} out of range (a 2-D image has 1 frame)")
        arr = reader(path) if reader is not None else _read_raster(path, keep_grey, describe, reduce_to=reduce_to)
    if describe is not None and "format" not in describe:
        describe.update(format=name, mode=None)
    return _checked(path, arr, keep_grey)


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _checked(path: Path, arr: np.ndarray, keep_grey: bool) -> np.ndarray:
    if arr.ndim == 2 and not keep_grey:
        arr = np.repeat(arr[..., None], 3, axis=2)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise UnreadableImageError(path, f"image too small ({w}x{h} pixels)")
    return arr


def image_format(path: str | Path) -> str | None:
    """The format PIL detects from the file's bytes (``"JPEG"``, ``"PNG"``...), else the name of the registered
    reader that claims the file (``"DICOM"``, ``"NIfTI"``), or ``None``. Slice references name their volume's."""
    path = Path(path)
    if not path.exists():
        path = split_ref(path)[0]
    name = _match(path)[2]
    if name is not None:
        return name
    try:
        with Image.open(path) as img:
            return img.format
    except Exception:  # noqa: BLE001 - any failure means "not a raster image"
        return None
