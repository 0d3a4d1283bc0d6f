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

Example:
    >>> from braintumor.data.nifti import nifti_frames, read_nifti
    >>> nifti_frames("BraTS_001_t1ce.nii.gz")                 # doctest: +SKIP
    155
    >>> read_nifti("BraTS_001_t1ce.nii.gz", frame=80).shape   # doctest: +SKIP
    (240, 240)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import UnreadableImageError
from .read import register_reader, register_suffixes

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Upper percentile of the per-volume intensity window.
UPPER_PERCENTILE = 99.5
_INSTALL = "pip install 'braintumor[medical]'"
#: Decoded volumes kept in memory (reading every slice of a .nii.gz must not decompress it once per slice).
CACHE_VOLUMES = 4


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


def _load(path: Path):
    nib = _nibabel()
    if nib is None:
        raise UnreadableImageError(path, f"NIfTI file, but nibabel is not installed ({_INSTALL})")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged headers
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImageError(path, f"truncated or corrupt NIfTI file ({msg})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 4 and any(s > 1 for s in shape[4:]):
        raise UnreadableImageError(path, f"{len(shape)}-D NIfTI {shape} not supported (3-D or 4-D only)")
    return img, shape


def _axial_axis(img) -> int:
    """Which stored axis becomes the canonical third (inferior -> superior) axis."""
    import nibabel as nib

    ornt = nib.io_orientation(img.affine)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0]) if (ornt[:, 0] == 2).any() else 2


def nifti_frames(path: str | Path) -> int:
    """Number of axial slices (header only; 1 for 2-D images)."""
    path = Path(path)
    img, shape = _load(path)
    if len(shape) < 3:
        return 1
    return shape[_axial_axis(img)] if len(shape) >= 3 else 1


_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple, threading.Lock] = {}


def window_volume(data: np.ndarray) -> np.ndarray:
    """A volume's intensities -> ``uint8`` (see the module docstring)."""
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


def load_volume(path: str | Path) -> np.ndarray:
    """The whole volume as canonical ``uint8`` axial slices ``(n_slices, H, W)`` (cached, thread-safe).

    Raises:
        UnreadableImageError: unreadable file or unsupported dimensions.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise UnreadableImageError(path, "no such file") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one thread decodes, the others wait for its result
        with _LOCK:
            if key in _CACHE:
                return _CACHE[key]
        vol = _decode_volume(path)
        with _LOCK:
            _CACHE[key] = vol
            while len(_CACHE) > CACHE_VOLUMES:
                _CACHE.popitem(last=False)
            _KEY_LOCKS.pop(key, None)
    return vol


def _decode_volume(path: Path) -> np.ndarray:
    import nibabel as nib

    img, shape = _load(path)
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
    except Exception as exc:  # noqa: BLE001 - truncated .nii.gz, bad data types...
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImageError(path, f"truncated or corrupt NIfTI data ({msg})") from None
    if np.iscomplexobj(data) or data.dtype.names:
        raise UnreadableImageError(path, f"NIfTI data type {data.dtype} (complex or RGB) not supported")
    if data.ndim == 2:
        data = data[:, :, None]
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
