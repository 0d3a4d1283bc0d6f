"""NIfTI input (``.nii``, ``.nii.gz``): volumes as stacks of axial ``uint8`` slices.

* 3-D volumes are reoriented to the closest canonical (RAS+) orientation with ``nibabel.as_closest_canonical``
  (axes permuted and flipped, never resampled), so slice ``k`` is the ``k``-th axial slice from the feet up
  whatever the scanner's storage order or an oblique affine. A slice is shown in the radiological convention:
  anterior at the top, the patient's right on the image's left (like DICOM axial images).
* 4-D files (time series, diffusion, multi-echo) use their first volume; 5-D and higher are refused.
* 2-D files (and 3-D files with one slice) are a single image.
* Intensities: scaling from the header (``scl_slope``/``scl_inter``) is applied; a volume whose values are whole
  numbers within 0-255 is kept as it is, anything else is windowed per volume from its minimum to its 99.5th
  percentile (MRI has no absolute units; the percentile ignores a few very bright voxels), identically for every
  slice of the volume.

Which slices become images is the slice selection (``middle``/``all``/``K``, see :mod:`braintumor.data.slices`).

**Size caps** (:mod:`braintumor.data.limits`) are checked from the header before any voxel is read: the voxels of
the (first) volume, the pixels of one slice, and for ``.nii.gz`` the bytes to decompress up to the end of the data
(``vox_offset`` + the volume's bytes). The gzip stream is read through a reader that stops at the decompressed-byte
cap whatever the header says, so neither a header claiming a huge volume nor padding in front of the data can
make a small file expand without bound. Decoded volumes are cached (:data:`CACHE_VOLUMES` volumes and at most
:data:`CACHE_BYTES` bytes; :func:`drop_cached` forgets one, :func:`clear_cache` all).

Example:
    >>> from braintumor.data.nifti import nifti_frames, read_nifti
    >>> nifti_frames("BraTS_001_t1ce.nii.gz")                 # doctest: +SKIP
    155
    >>> read_nifti("BraTS_001_t1ce.nii.gz", frame=80).shape   # doctest: +SKIP
    (240, 240)
"""

from __future__ import annotations

import gzip
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import UnreadableImageError
from . import limits as _limits
from .read import register_reader, register_suffixes

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Upper percentile of the per-volume intensity window.
UPPER_PERCENTILE = 99.5
_INSTALL = "pip install 'braintumor[medical]'"
#: Decoded volumes kept in memory (reading every slice of a .nii.gz must not decompress it once per slice).
CACHE_VOLUMES = 4
#: Bytes of decoded (``uint8``) volumes kept in memory at most; a larger volume is not cached.
CACHE_BYTES = 512 << 20


def is_nifti_file(path: str | Path) -> bool:
    """A ``.nii``/``.nii.gz`` file (by name), or an uncompressed NIfTI-1/2 file by its header magic."""
    p = Path(path)
    if not p.is_file():
        return False
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return True
    if p.suffix:
        return False
    try:
        with open(p, "rb") as fh:
            head = fh.read(348)
    except OSError:
        return False
    return (len(head) == 348 and head[344:348] in (b"n+1\0", b"ni1\0")) or head[4:8] == b"n+2\0"


def _nibabel():
    try:
        import nibabel
    except ImportError:
        return None
    return nibabel


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return (text.splitlines()[0] if text.strip() else type(exc).__name__)[:200]


def _header(path: Path, head: bytes):
    """The image class and header parsed from the first bytes of the (decompressed) file."""
    import nibabel as nib

    if len(head) < 348:
        raise UnreadableImageError(path, f"truncated or corrupt NIfTI file (a header of {len(head)} bytes)")
    sizes = {struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]}
    klass = nib.Nifti1Image if 348 in sizes else nib.Nifti2Image if 540 in sizes else None
    if klass is None:
        raise UnreadableImageError(path, "truncated or corrupt NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    size = 348 if klass is nib.Nifti1Image else 540
    if len(head) < size:
        raise UnreadableImageError(path, f"truncated or corrupt NIfTI file (a header of {len(head)} bytes)")
    return klass, klass.header_class(head[:size], check=True)


def _check_header(path: Path, header, compressed: bool, lim) -> tuple[int, ...]:
    """The data shape, after checking it against the caps; nothing of the data has been read."""
    shape = tuple(int(s) for s in header.get_data_shape())
    if any(s < 0 for s in shape):
        raise UnreadableImageError(path, f"NIfTI header with negative dimensions {shape}")
    if len(shape) > 4 and any(s > 1 for s in shape[4:]):
        raise UnreadableImageError(path, f"{len(shape)}-D NIfTI {shape} not supported (3-D or 4-D only)")
    spatial = (shape + (1, 1, 1))[:3]
    _limits.check_voxels(path, spatial, lim)
    axis = 2
    if len(shape) >= 3:
        try:
            axis = _axial_axis(header)
        except Exception:  # noqa: BLE001 - a degenerate affine: the stored third axis
            axis = 2
    rows_cols = [spatial[i] for i in range(3) if i != axis]
    _limits.check_pixels(path, rows_cols[0], rows_cols[1], lim, kind="slice")
    if compressed:
        offset = int(header.get_data_offset())
        nbytes = int(np.prod(spatial, dtype=np.int64)) * header.get_data_dtype().itemsize
        _limits.check_decompressed(path, offset + nbytes, lim,
                                   f"{offset + nbytes:,} bytes to the end of the first volume's data")
    return shape


def _open(path: Path):
    """``(img, shape, file)``: the image with its data proxy on the open ``file`` (close it when done)."""
    nib = _nibabel()
    if nib is None:
        raise UnreadableImageError(path, f"NIfTI file, but nibabel is not installed ({_INSTALL})")
    lim = _limits.current_limits()
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UnreadableImageError(path, f"cannot open ({exc.strerror or exc})") from None
    stream = fh
    try:
        compressed = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        if compressed:
            stream = _limits.BoundedReader(gzip.GzipFile(fileobj=fh, mode="rb"), path, lim)
        klass, header = _header(path, stream.read(540))
        shape = _check_header(path, header, compressed, lim)
        # As nibabel's from_file_map, without reading the header extensions (not needed here; a crafted file can
        # make nibabel read them up to the end of a gzip bomb or loop over millions of them).
        img = klass(klass.ImageArrayProxy(stream, header.copy(), mmap=False), None, header)
        img._affine = header.get_best_affine()
    except UnreadableImageError:
        stream.close()
        fh.close()
        raise
    except MemoryError:
        stream.close()
        fh.close()
        raise UnreadableImageError(path, "NIfTI header too large for memory") from None
    except Exception as exc:  # noqa: BLE001 - nibabel, gzip and zlib raise many types for damaged files
        stream.close()
        fh.close()
        raise UnreadableImageError(path, f"truncated or corrupt NIfTI file ({_first_line(exc)})") from None
    return img, shape, (stream, fh)


@contextmanager
def _opened(path: Path) -> Iterator[tuple]:
    img, shape, files = _open(path)
    try:
        yield img, shape
    finally:
        for f in files:
            f.close()


def _load(path: Path):
    """``(img, shape)`` from the header only (the caps checked; the data cannot be read from ``img``)."""
    with _opened(path) as (img, shape):
        return img, shape


def _axial_axis(img) -> int:
    """Which stored axis becomes the canonical third (inferior -> superior) axis (of an image or a header)."""
    import nibabel as nib

    affine = img.affine if hasattr(img, "affine") else img.get_best_affine()
    ornt = nib.io_orientation(affine)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0]) if (ornt[:, 0] == 2).any() else 2


def nifti_frames(path: str | Path) -> int:
    """Number of axial slices (header only; 1 for 2-D images)."""
    path = Path(path)
    img, shape = _load(path)
    if len(shape) < 3:
        return 1
    try:
        return shape[_axial_axis(img)]
    except Exception:  # noqa: BLE001 - a degenerate affine (NaN, zeros): the stored third axis
        return shape[2]


_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple, threading.Lock] = {}


def window_volume(data: np.ndarray) -> np.ndarray:
    """A volume's intensities -> ``uint8`` (see the module docstring)."""
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf, then 0 below
        return _window_volume(data)


def _window_volume(data: np.ndarray) -> np.ndarray:
    a = np.asarray(data)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 255 and np.all(a == np.round(a)):
        return a.astype(np.uint8)
    hi = float(np.percentile(a, UPPER_PERCENTILE))
    if hi <= lo:
        hi = float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint(np.clip((a - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)


def _cache_key(path: Path) -> tuple:
    try:
        st = path.stat()
        return (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except (OSError, ValueError):
        raise UnreadableImageError(path, "no such file") from None


def drop_cached(path: str | Path) -> None:
    """Forget the cached volume of ``path`` (a service calls it when a request's temporary file goes away)."""
    name = str(Path(path).resolve())
    with _LOCK:
        for key in [k for k in _CACHE if k[0] == name]:
            del _CACHE[key]


def clear_cache() -> None:
    """Forget every cached volume."""
    with _LOCK:
        _CACHE.clear()


def cached_bytes() -> int:
    """Bytes held by the volume cache now."""
    with _LOCK:
        return sum(v.nbytes for v in _CACHE.values())


def load_volume(path: str | Path) -> np.ndarray:
    """The whole volume as canonical ``uint8`` axial slices ``(n_slices, H, W)`` (cached, thread-safe).

    At most :data:`CACHE_VOLUMES` volumes and :data:`CACHE_BYTES` bytes stay cached (least recently used first
    out). The caps of :mod:`braintumor.data.limits` in force apply, also to a cached volume.

    Raises:
        UnreadableImageError: unreadable file or unsupported dimensions; ``ImageTooLargeError`` over a cap.
    """
    path = Path(path)
    key = _cache_key(path)
    lim = _limits.current_limits()
    with _LOCK:
        vol = _CACHE.get(key)
        if vol is not None:
            _CACHE.move_to_end(key)
        else:
            lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    if vol is None:
        with lock:  # one thread decodes, the others wait for its result
            with _LOCK:
                vol = _CACHE.get(key)
            if vol is None:
                try:
                    vol = _decode_volume(path)
                finally:
                    with _LOCK:
                        _KEY_LOCKS.pop(key, None)
                _remember(key, vol)
    # A volume cached under looser caps (another caller's) is still refused under tighter ones.
    n, h, w = vol.shape
    _limits.check_voxels(path, (w, h, n), lim)
    _limits.check_pixels(path, w, h, lim, kind="slice")
    return vol


def _remember(key: tuple, vol: np.ndarray) -> None:
    if vol.nbytes > CACHE_BYTES or CACHE_VOLUMES < 1:
        return
    with _LOCK:
        _CACHE[key] = vol
        total = sum(v.nbytes for v in _CACHE.values())
        while _CACHE and (len(_CACHE) > CACHE_VOLUMES or total > CACHE_BYTES):
            total -= _CACHE.popitem(last=False)[1].nbytes


def _decode_volume(path: Path) -> np.ndarray:
    with _opened(path) as (img, shape):
        return _decode_image(path, img, shape)


def _decode_image(path: Path, img, shape) -> np.ndarray:
    import nibabel as nib

    try:
        if len(shape) > 3:
            # Keep the first volume of a 4-D series; the spatial affine stays valid.
            data = np.asanyarray(img.dataobj[..., 0] if len(shape) == 4 else img.dataobj[..., 0, 0])
            img = nib.Nifti1Image(data, img.affine)
        if len(shape) >= 3:
            img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except UnreadableImageError:
        raise
    except MemoryError:
        raise UnreadableImageError(path, "NIfTI data too large for memory") from None
    except Exception as exc:  # noqa: BLE001 - truncated .nii.gz, bad data types...
        raise UnreadableImageError(path, f"truncated or corrupt NIfTI data ({_first_line(exc)})") from None
    if np.iscomplexobj(data) or data.dtype.names:
        raise UnreadableImageError(path, f"NIfTI data type {data.dtype} (complex or RGB) not supported")
    if data.ndim < 3:
        data = data.reshape(data.shape + (1,) * (3 - data.ndim))
    data = data.reshape(data.shape[:3])
    u8 = window_volume(data)
    # (x: R, y: A, z: S) -> slices (z, rows: anterior at the top, cols: patient right on the left).
    return np.ascontiguousarray(np.transpose(u8[::-1, ::-1, :], (2, 1, 0)))


def read_nifti(path: str | Path, frame: int | None = None) -> np.ndarray:
    """Axial slice ``frame`` (default: the middle one) of a NIfTI volume as ``(H, W)`` ``uint8``.

    Raises:
        UnreadableImageError: unreadable file, unsupported dimensions, or frame out of range.
    """
    path = Path(path)
    vol = load_volume(path)
    n = vol.shape[0]
    if frame is None:
        frame = n // 2
    if not 0 <= frame < n:
        raise UnreadableImageError(path, f"slice {frame} out of range ({n} slice{'s' if n != 1 else ''})")
    return vol[frame]


register_suffixes(*NIFTI_SUFFIXES)
register_reader(is_nifti_file, read_nifti, frames=nifti_frames, name="NIfTI")
