"""DICOM input: single images, multi-frame files and folders holding one series, as ``uint8`` images.

Files are recognised by content (``DICM`` at byte 128) as well as by the ``.dcm``/``.dicom`` suffix; files without
a suffix (or with a numeric one, as in UID names like ``1.2.840.113619.2.5``) are sniffed during discovery.
Pixel values go through, in order:

1. the modality LUT: Rescale Slope/Intercept or a Modality LUT Sequence (also from enhanced multi-frame
   functional groups);
2. the VOI LUT: a VOI LUT Sequence, else Window Center/Width (with its VOI LUT Function), else the full range
   (8-bit-range data is kept as it is, wider data is min-max stretched);
3. MONOCHROME1 inversion (so bright always means high signal). RGB and YBR data come out as RGB, palette
   colour through its LUT.

**Window override.** ``read_dicom(path, window=...)`` or the environment variable ``BRAINTUMOR_DICOM_WINDOW``
(read at every call, so it applies to training, evaluation, prediction, explanation and serving alike; use the
same value for all of them) replace step 2: ``"auto"`` (default, as above), ``"minmax"`` (ignore the file's
window and stretch each slice's full range) or ``"CENTER,WIDTH"`` (e.g. ``"40,80"``, a linear window in the
modality units).

**Series.** A folder whose DICOM image files are all single-frame slices of one series (same Series Instance UID,
at least two) is read as one volume: slices ordered by Image Position (Patient) along the slice normal, else by
Instance Number, else by file name. ``read_image(folder, frame=k)`` reads its ``k``-th slice.

Compressed transfer syntaxes are decoded where a pydicom pixel-data handler is installed (Pillow covers JPEG
baseline and JPEG 2000, pydicom itself RLE); otherwise the error names the handler to install. Files without pixel
data (structured reports, DICOMDIR...) raise :class:`UnreadableImageError` saying so, and are skipped by training.

**Size caps** (:mod:`braintumor.data.limits`) are checked from the header before any pixel is decoded:
``Rows x Columns`` against the pixel cap, ``Rows x Columns x NumberOfFrames`` against the voxel cap. A file with
the Deflated Explicit VR Little Endian transfer syntax is inflated here, never past the decompressed-byte cap
(pydicom alone would inflate it whole, whatever its size), then read like any other.

Example:
    >>> from braintumor.data.dicom import read_dicom
    >>> img = read_dicom("scan.dcm", window="40,80")     # doctest: +SKIP
    >>> img.shape, img.dtype                              # doctest: +SKIP
    ((512, 512), dtype('uint8'))
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..errors import ImageTooLargeError, UnreadableImageError, UsageError
from . import limits as _limits
from .read import register_reader, register_sniffer, register_suffixes, to_uint8

#: Suffixes always treated as DICOM (compared lower-case).
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Environment variable overriding the VOI window (see the module docstring).
WINDOW_ENV = "BRAINTUMOR_DICOM_WINDOW"
_INSTALL = "pip install 'braintumor[medical]'"


# ------------------------------------------------------------------------------------------------- detection


def has_dicom_magic(path: str | Path) -> bool:
    """True when the file has the DICOM Part 10 preamble: ``b"DICM"`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    """A DICOM file by suffix (``.dcm``, ``.dicom``) or by content."""
    p = Path(path)
    if not p.is_file():
        return False
    return p.suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(p)


def _sniff(path: Path) -> bool:
    """Discovery hook: suffix-less (or numeric-suffix, UID-named) files with the DICOM magic; not DICOMDIR."""
    suffix = path.suffix
    if suffix and not suffix[1:].isdigit():
        return False
    return path.name.upper() != "DICOMDIR" and has_dicom_magic(path)


# ---------------------------------------------------------------------------------------------------- window


def adopt_window(trained: str | None, where: str = "") -> str | None:
    """Read DICOM inputs with the VOI window a run was trained with (its ``metadata.json`` ``dicom_window``).

    When ``BRAINTUMOR_DICOM_WINDOW`` is unset, it is set to the run's choice, so prediction prepares DICOM pixels
    exactly as training did. When it is set to something else, nothing changes and a one-line warning is returned
    (the caller shows it). ``None``/``"auto"`` runs with an unset variable need nothing.

    Example:
        >>> from braintumor.data.dicom import adopt_window
        >>> adopt_window("auto") is None
        True
    """
    if not trained:
        return None
    trained = str(trained).strip()
    current = os.environ.get(WINDOW_ENV, "").strip()
    try:
        same = parse_window(current or "auto") == parse_window(trained)
    except UsageError:
        same = False
    if same:
        return None
    if not current:
        os.environ[WINDOW_ENV] = trained
        return None
    return (f"{where}trained with DICOM window '{trained}', but {WINDOW_ENV}='{current}': DICOM inputs are "
            f"prepared differently from training")


def parse_window(value: str | tuple[float, float] | None = None) -> str | tuple[float, float]:
    """The VOI choice: ``"auto"``, ``"minmax"`` or ``(center, width)``; ``None`` reads ``BRAINTUMOR_DICOM_WINDOW``.

    Raises:
        UsageError: a malformed value.
    """
    if value is None:
        value = os.environ.get(WINDOW_ENV, "").strip() or "auto"
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise UsageError(f"a DICOM window is (center, width), got {value!r}")
        center, width = float(value[0]), float(value[1])
    else:
        text = str(value).strip().lower()
        if text in ("auto", "minmax"):
            return text
        parts = text.replace(" ", "").split(",")
        try:
            center, width = (float(x) for x in parts)
        except ValueError:
            raise UsageError(f"DICOM window must be auto, minmax or CENTER,WIDTH (e.g. 40,80), got '{value}'"
                             ) from None
    if width < 1:
        raise UsageError(f"DICOM window width must be at least 1, got {width:g}")
    return center, width


def apply_window(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window ``arr`` to ``uint8`` following DICOM PS3.3 C.11.2.1.2 (``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID``)."""
    x = arr.astype(np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = ((x - center) / width + 0.5) * 255.0
    elif width <= 1:
        y = np.where(x <= center - 0.5, 0.0, 255.0)
    else:
        y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ reading


def _pydicom():
    try:
        import pydicom
    except ImportError:
        return None
    return pydicom


_DEFLATED = "1.2.840.10008.1.2.1.99"


def _read_deflated(path: Path, force: bool, stop_before_pixels: bool):
    """The dataset of a Deflated Explicit VR Little Endian file, inflated under the decompressed-byte cap; ``None``
    when the file has another transfer syntax (the usual case, told from its first 4 KB)."""
    with open(path, "rb") as fh:
        if _DEFLATED.encode() not in fh.read(4096):
            return None
        fh.seek(0)
        from pydicom.filebase import DicomBytesIO
        from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble

        preamble = read_preamble(fh, force)
        meta = _read_file_meta_info(fh)
        if str(meta.get("TransferSyntaxUID", "")).strip("\0 ") != _DEFLATED:
            return None
        data = _limits.inflate(fh, path, on_prefix=lambda head: _check_prefix(path, head))
    from pydicom.dataset import FileDataset

    dataset = read_dataset(DicomBytesIO(data), False, True, stop_when=_at_pixel_data if stop_before_pixels else None)
    ds = FileDataset(str(path), dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


def _check_prefix(path: Path, head: bytes) -> None:
    """The size caps checked on the first inflated bytes of a deflated dataset, before inflating the rest."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _at_pixel_data, read_dataset

    try:
        ds = read_dataset(DicomBytesIO(head), False, True, stop_when=_at_pixel_data)
        ok = "Rows" in ds and "Columns" in ds
    except Exception:  # noqa: BLE001 - a header longer than the prefix, or damaged: checked after inflating
        return
    if ok:
        _check_size(path, ds)


def _inflated(ds) -> bool:
    meta = getattr(ds, "file_meta", None)
    return meta is not None and str(meta.get("TransferSyntaxUID", "")).strip("\0 ") == _DEFLATED


def _read_header(path: Path, *, stop_before_pixels: bool = False):
    """The dataset with the pixel data deferred (or skipped), or :class:`UnreadableImageError`."""
    pydicom = _pydicom()
    if pydicom is None:
        raise UnreadableImageError(path, f"DICOM file, but pydicom is not installed ({_INSTALL})")
    force = not has_dicom_magic(path)
    try:
        ds = _read_deflated(path, force, stop_before_pixels)
        if ds is None:
            ds = pydicom.dcmread(path, defer_size=None if stop_before_pixels else "4 KB",
                                 stop_before_pixels=stop_before_pixels, force=force)
        if stop_before_pixels:  # nothing deferred: convert every tag now, so a damaged one fails here, not later
            for _ in ds.iterall():
                pass
        return ds
    except ImageTooLargeError:
        raise
    except pydicom.errors.InvalidDicomError as exc:
        raise UnreadableImageError(path, f"not a valid DICOM file ({_line(exc)})") from None
    except MemoryError:
        raise UnreadableImageError(path, "DICOM header too large for memory") from None
    except Exception as exc:  # noqa: BLE001 - pydicom and zlib raise many types for damaged files
        raise UnreadableImageError(path, f"truncated or corrupt DICOM file ({type(exc).__name__}: {_line(exc)})"
                                   ) from None


def _short(value, n: int = 64) -> str:
    """A tag value as a short one-line text for a message."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= n else text[:n] + "..."


def _line(exc: BaseException) -> str:
    """The first line of an exception's message, shortened (pydicom's can be long)."""
    text = str(exc)
    return (text.splitlines()[0] if text.strip() else type(exc).__name__)[:200]


def _n_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except Exception:  # noqa: BLE001 - a damaged tag (wrong VR, not a number): read as one frame
        return 1


def dicom_frames(path: str | Path) -> int:
    """Number of frames of a DICOM file (header only)."""
    return _n_frames(_read_header(Path(path), stop_before_pixels=True))


def _int_tag(ds, name: str, default=None):
    value = ds.get(name, default)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else default
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _check_size(path: Path, ds) -> None:
    """Rows x Columns against the pixel cap, Rows x Columns x NumberOfFrames against the voxel cap."""
    rows, cols = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
    if not rows or not cols or rows < 0 or cols < 0:
        raise UnreadableImageError(path, f"DICOM pixel data with Rows x Columns {rows}x{cols}")
    lim = _limits.current_limits()
    _limits.check_pixels(path, cols, rows, lim)
    _limits.check_voxels(path, (cols, rows, _n_frames(ds)), lim)


def _check_pixels(path: Path, ds) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = ds.get("SOPClassUID")
        kind = getattr(kind, "name", None) or (str(kind) if kind else "unknown SOP class")
        raise UnreadableImageError(path, f"DICOM file without pixel data ({kind}); not an image")
    if "Rows" not in ds or "Columns" not in ds:
        raise UnreadableImageError(path, "DICOM pixel data without Rows/Columns")
    _check_size(path, ds)
    samples, bits = _int_tag(ds, "SamplesPerPixel", 1), _int_tag(ds, "BitsAllocated", 8)
    if samples not in (1, 3, 4):
        raise UnreadableImageError(path, f"DICOM Samples per Pixel {samples} (1, 3 or 4 allowed)")
    if bits not in (1, 8, 16, 32, 64):
        raise UnreadableImageError(path, f"DICOM Bits Allocated {bits} (1, 8, 16, 32 or 64 allowed)")
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    try:
        compressed = ts is not None and ts.is_compressed
    except (ValueError, TypeError, AttributeError):  # pydicom: "UID is not a transfer syntax"
        raise UnreadableImageError(path, f"DICOM transfer syntax '{_short(ts)}' is not a known one") from None
    if not compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnreadableImageError(path, f"DICOM transfer syntax '{ts.name}' ({ts}) is not supported") from None
    if not decoder.is_available:
        deps = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        raise UnreadableImageError(path, f"compressed DICOM ({ts.name}) but no pixel data handler is installed "
                                         f"for it: install one of: {deps}")


def _functional(ds, index: int, sequence: str, attr: str):
    """``attr`` from the per-frame, then shared functional groups (enhanced multi-frame), else ``None``."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is None or len(seq) <= i:
            continue
        inner = seq[i].get(sequence)
        if inner and attr in inner[0]:
            return inner[0].get(attr)
    return None


def _modality(arr: np.ndarray, ds, index: int) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return apply_modality_lut(arr, ds)
    slope = _functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
    if slope is None and intercept is None:
        return arr
    return arr * float(slope if slope is not None else 1.0) + float(intercept or 0.0)


def _first(value) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _voi(arr: np.ndarray, ds, index: int, window) -> np.ndarray:
    if isinstance(window, tuple):
        return apply_window(arr, *window)
    if window == "auto":
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            from pydicom.pixels import apply_voi

            out = apply_voi(arr, ds, index=0)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2] or 16)
            return np.rint(np.clip(out.astype(np.float64) * 255.0 / (2 ** bits - 1), 0, 255)).astype(np.uint8)
        center = _first(ds.get("WindowCenter"))
        width = _first(ds.get("WindowWidth"))
        function = ds.get("VOILUTFunction", "LINEAR")
        if center is None or width is None:
            center = _first(_functional(ds, index, "FrameVOILUTSequence", "WindowCenter"))
            width = _first(_functional(ds, index, "FrameVOILUTSequence", "WindowWidth"))
            function = _functional(ds, index, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR"
        if center is not None and width is not None and width >= 1:
            return apply_window(arr, center, width, str(function))
        a = np.asarray(arr)
        if a.size and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 255 and np.all(a == np.round(a)):
            return a.astype(np.uint8)  # already 8-bit range: keep the values
    return to_uint8(np.asarray(arr, np.float32))


def _decode(path: Path, ds, index: int | None):
    from pydicom.pixels import pixel_array

    try:
        if index is not None and has_dicom_magic(path) and not _inflated(ds):
            return pixel_array(str(path), index=index)
        arr = pixel_array(ds) if index is None else pixel_array(ds, index=index)
        return arr
    except UnreadableImageError:
        raise
    except MemoryError:
        raise UnreadableImageError(path, "DICOM pixel data too large for memory") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged pixel data
        msg = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__).split(" - ")[0]
        raise UnreadableImageError(path, f"truncated or corrupt DICOM pixel data ({msg})") from None


def read_dicom(path: str | Path, frame: int | None = None, window=None) -> np.ndarray:
    """One DICOM frame as ``uint8``: ``(H, W)`` greyscale or ``(H, W, 3)`` colour.

    Args:
        path: a DICOM file.
        frame: the frame of a multi-frame file (default: the middle one; ignored for single-frame files when 0).
        window: VOI override, see :func:`parse_window` (default: ``BRAINTUMOR_DICOM_WINDOW`` or ``"auto"``).

    Raises:
        UnreadableImageError: not DICOM, truncated, no pixel data, a missing decoder, or frame out of range.
    """
    path = Path(path)
    window = parse_window(window)
    ds = _read_header(path)
    try:
        return _read_frame(path, ds, frame, window)
    except UnreadableImageError:
        raise
    except MemoryError:
        raise UnreadableImageError(path, "DICOM data too large for memory") from None
    except Exception as exc:  # noqa: BLE001 - pydicom converts tags lazily: a damaged tag fails where it is used
        raise UnreadableImageError(path, f"corrupt DICOM tags ({type(exc).__name__}: {_line(exc)})") from None


def _read_frame(path: Path, ds, frame: int | None, window) -> np.ndarray:
    _check_pixels(path, ds)
    n = _n_frames(ds)
    if frame is None:
        frame = n // 2
    if not 0 <= frame < n:
        raise UnreadableImageError(path, f"frame {frame} out of range ({n} frame{'s' if n != 1 else ''})")
    arr = _decode(path, ds, frame if n > 1 else None)
    if n > 1 and arr.ndim >= 3 and arr.shape[0] == n and int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = arr[frame]  # a decoder that returned every frame
    return _to_display(path, arr, ds, frame, window)


def _to_display(path: Path, arr: np.ndarray, ds, frame: int, window) -> np.ndarray:
    """Palette, modality LUT, VOI LUT and MONOCHROME1 inversion: decoded pixels -> ``uint8``."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return np.ascontiguousarray(to_uint8(np.asarray(arr[..., :3])))
    if arr.ndim != 2:
        raise UnreadableImageError(path, f"unexpected DICOM pixel array shape {arr.shape}")
    out = _voi(_modality(arr, ds, frame), ds, frame, window)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------------------- series

_SERIES_CACHE: dict[tuple, list[Path] | None] = {}
_SERIES_LOCK = threading.Lock()


def _slice_key(ds, name: str):
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    position = None
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        position = float(np.dot(np.asarray(ipp, float), normal))
    number = ds.get("InstanceNumber")
    return position, (int(number) if number not in (None, "") else None), name


def _scan_series(folder: Path) -> list[Path] | None:
    if _pydicom() is None:
        return None
    members, uids, shapes, keys = [], set(), set(), []
    for f in sorted(folder.iterdir()):
        if f.name.startswith((".", "_")) or not f.is_file():
            continue
        if not (f.suffix.lower() in DICOM_SUFFIXES or _sniff(f)):
            continue
        try:
            ds = _read_header(f, stop_before_pixels=True)
        except UnreadableImageError:
            continue
        if "Rows" not in ds or _n_frames(ds) != 1:
            if "Rows" in ds:
                return None  # a multi-frame file among them: files are read one by one
            continue  # no image (report, DICOMDIR...): not a slice
        try:
            uid, shape = str(ds.get("SeriesInstanceUID", "")), (int(ds.Rows), int(ds.Columns))
            key = _slice_key(ds, f.name)
        except Exception:  # noqa: BLE001 - damaged tags (wrong types): not a slice of a series
            continue
        members.append(f)
        uids.add(uid)
        shapes.add(shape)
        keys.append(key)
    if len(members) < 2 or len(uids) != 1 or "" in uids or len(shapes) != 1:
        return None
    if all(k[0] is not None for k in keys):
        order = sorted(range(len(members)), key=lambda i: (keys[i][0], keys[i][2]))
    elif all(k[1] is not None for k in keys):
        order = sorted(range(len(members)), key=lambda i: (keys[i][1], keys[i][2]))
    else:
        order = list(range(len(members)))
    return [members[i] for i in order]


def series_files(folder: str | Path) -> list[Path] | None:
    """The slice files of the one DICOM series in ``folder`` in slice order, or ``None`` when it holds none.

    Cached per folder (invalidated when the folder changes).
    """
    folder = Path(folder)
    try:
        st = folder.stat()
    except OSError:
        return None
    key = (str(folder.resolve()), st.st_mtime_ns, st.st_ino)
    with _SERIES_LOCK:
        if key in _SERIES_CACHE:
            return _SERIES_CACHE[key]
    files = _scan_series(folder)
    with _SERIES_LOCK:
        if len(_SERIES_CACHE) > 256:
            _SERIES_CACHE.clear()
        _SERIES_CACHE[key] = files
    return files


def is_series_dir(path: str | Path) -> bool:
    """True for a folder read as one DICOM series (see :func:`series_files`)."""
    p = Path(path)
    return p.is_dir() and series_files(p) is not None


def series_frames(folder: str | Path) -> int:
    return len(series_files(folder) or ())


def read_series(folder: str | Path, frame: int | None = None, window=None) -> np.ndarray:
    """Slice ``frame`` (default: the middle one) of the DICOM series in ``folder``.

    Raises:
        UnreadableImageError: not a single-series folder, frame out of range, or the slice is unreadable.
    """
    folder = Path(folder)
    files = series_files(folder)
    if not files:
        raise UnreadableImageError(folder, "not a folder holding one DICOM series")
    if frame is None:
        frame = len(files) // 2
    if not 0 <= frame < len(files):
        raise UnreadableImageError(folder, f"slice {frame} out of range ({len(files)} slices)")
    return read_dicom(files[frame], None, window)


def _read_dicom_frame(path: Path, frame: int | None) -> np.ndarray:
    return read_dicom(path, frame)


def _read_series_frame(path: Path, frame: int | None) -> np.ndarray:
    return read_series(path, frame)


register_suffixes(*DICOM_SUFFIXES)
register_sniffer(_sniff)
register_reader(is_dicom_file, _read_dicom_frame, frames=dicom_frames, name="DICOM")
register_reader(is_series_dir, _read_series_frame, frames=series_frames, name="DICOM series")
