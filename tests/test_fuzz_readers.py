"""Property-based fuzzing of the readers (issue 19): random bytes, truncations, bit flips, header mutations and
splices of small valid PNG, JPEG, DICOM (plain, deflated, multi-frame, RLE) and NIfTI (.nii, .nii.gz) files.

Whatever the bytes, :func:`read_image` returns an ``(H, W, 3)`` ``uint8`` array or raises
:class:`UnreadableImageError` with a one-line printable message; :func:`frame_count` returns a positive int.
Nothing else may come out: no other exception type, no traceback.

Examples per format: ``BT_FUZZ_EXAMPLES`` (default 2000, the CI profile), derandomized so CI is reproducible
(``BT_FUZZ_RANDOM=1`` draws new examples each run).
Decoding runs under small caps (:func:`use_limits`) so that a mutated header claiming a large image is refused
or fails fast, and every example stays in milliseconds.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import itertools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from braintumor.data.limits import use_limits
from braintumor.data.read import frame_count, read_image
from braintumor.errors import UnreadableImageError

N = int(os.environ.get("BT_FUZZ_EXAMPLES", "2000"))
#: ``BT_FUZZ_RANDOM=1`` explores new examples on every run (to hunt for crashes locally); CI is derandomized.
RANDOM = os.environ.get("BT_FUZZ_RANDOM") == "1"
FUZZ = settings(max_examples=N, deadline=None, derandomize=not RANDOM, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
#: Small caps: a mutated header claiming a big image is refused, or fails fast on the missing data.
CAPS = dict(max_pixels=1_000_000, max_voxels=4_000_000, max_decompressed_bytes=16 << 20)
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]

_counter = itertools.count()
HAVE_PYDICOM = importlib.util.find_spec("pydicom") is not None
HAVE_NIBABEL = importlib.util.find_spec("nibabel") is not None
# pydicom and nibabel warn about the damaged headers this file is made of: expected, and not what is tested.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _grad(h=24, w=32) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 7 % 256, y * 9 % 256, (x + y) * 5 % 256], axis=2).astype(np.uint8)


# --------------------------------------------------------------------------------------------- seed files


def _png_seeds() -> list[bytes]:
    out = []
    for img in (Image.fromarray(_grad()), Image.fromarray(_grad()[..., 0]),
                Image.fromarray(_grad()[..., 0].astype(np.uint16) * 200), Image.fromarray(_grad()).convert("P"),
                Image.fromarray(np.dstack([_grad(), _grad()[..., :1]]))):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _jpeg_seeds() -> list[bytes]:
    out = []
    for kw in ({}, {"progressive": True}, {"quality": 30, "subsampling": 2}):
        buf = io.BytesIO()
        Image.fromarray(_grad()).save(buf, format="JPEG", **kw)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(_grad()[..., 0]).save(buf, format="JPEG")
    out.append(buf.getvalue())
    return out


def _dicom_bytes(arr: np.ndarray, *, syntax: str = "explicit", window: bool = True) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        MRImageStorage,
        RLELossless,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    meta.TransferSyntaxUID = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian,
                              "deflated": DeflatedExplicitVRLittleEndian, "rle": ExplicitVRLittleEndian}[syntax]
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = "1.2.3.4.5.6.8"
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = arr.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    if window:
        ds.RescaleSlope, ds.RescaleIntercept = 2, -10
        ds.WindowCenter, ds.WindowWidth = 300, 400
    ds.PixelData = arr.tobytes()
    if syntax == "rle":
        ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_seeds() -> list[tuple[str, bytes]]:
    """``(kind, bytes)``; ``deflated`` seeds are mutated inflated, then deflated again (see :func:`_finish`)."""
    img = (_grad()[..., 0].astype(np.uint16) * 3)
    return [("plain", _dicom_bytes(img)), ("plain", _dicom_bytes(img, syntax="implicit", window=False)),
            ("plain", _dicom_bytes(np.stack([img, img // 2, img // 3]))), ("plain", _dicom_bytes(img, syntax="rle")),
            ("plain", _dicom_bytes(img.astype(np.uint8), window=False)),
            ("deflated", _split_deflated(_dicom_bytes(img, syntax="deflated")))]


def _split_deflated(data: bytes) -> bytes:
    """A deflated DICOM file with its dataset inflated (kept uncompressed until :func:`_finish`)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    fh = io.BytesIO(data)
    read_preamble(fh, False)
    _read_file_meta_info(fh)
    start = fh.tell()
    return struct.pack("<I", start) + data[:start] + zlib.decompress(data[start:], -zlib.MAX_WBITS)


def _nifti_seeds() -> list[bytes]:
    if not HAVE_NIBABEL:
        return [b"\0"]
    import nibabel as nib

    out = []
    vol = (np.arange(16 * 20 * 6).reshape(16, 20, 6) % 300).astype(np.int16)
    for data, affine in ((vol, np.diag([1.0, 1.0, 2.0, 1.0])), (vol.astype(np.uint8), np.eye(4)),
                         (np.stack([vol, vol], axis=3).astype(np.float32), np.diag([-1.0, 1.0, 1.0, 1.0])),
                         (vol[:, :, 0].astype(np.float64), np.eye(4))):
        out.append(nib.Nifti1Image(data, affine).to_bytes())
    out.append(nib.Nifti2Image(vol, np.eye(4)).to_bytes())
    return out


# --------------------------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """One seed with random mutations: bit flips, header bytes/ints, truncation, splices; or random bytes."""
    kind = draw(st.sampled_from(["flip", "header", "int", "truncate", "splice", "random", "flip", "header"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=1024))
    data = bytearray(draw(st.sampled_from(seeds)))
    n = len(data)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, n))])
    if kind == "splice":
        at = draw(st.integers(0, n))
        cut = draw(st.integers(0, 64))
        return bytes(data[:at] + draw(st.binary(max_size=64)) + data[at + cut:])
    for _ in range(draw(st.integers(1, 6))):
        if kind == "flip":
            pos = draw(st.integers(0, n - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "header":  # headers are where sizes, types and offsets live
            data[draw(st.integers(0, min(n, 600) - 1))] = draw(st.integers(0, 255))
        else:  # a 2- or 4-byte field set to an edge value, either byte order
            width = draw(st.sampled_from([2, 4]))
            pos = draw(st.integers(0, max(0, min(n, 600) - width)))
            value = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * width)) - 1)
            data[pos:pos + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
    return bytes(data)


def _finish(kind: str, data: bytes, compress: bool) -> bytes:
    """Deflated DICOM seeds are deflated again after the mutation; NIfTI is gzipped when ``compress``."""
    if kind == "deflated" and len(data) >= 4:
        start = struct.unpack("<I", data[:4])[0]
        head, body = data[4:4 + start], data[4 + start:]
        co = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
        return head + co.compress(body) + co.flush()
    return gzip.compress(data, 1) if compress else data


# ----------------------------------------------------------------------------------------------- property


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_reader(folder: Path, data: bytes, suffix: str) -> None:
    """The property: an image or UnreadableImageError (one printable line), never anything else."""
    from braintumor.data import nifti

    path = folder / f"f{next(_counter)}{suffix}"  # a new name each time: no cache can answer for an old file
    path.write_bytes(data)
    try:
        with use_limits(**CAPS):
            assert frame_count(path) >= 1
            try:
                img = read_image(path)
            except UnreadableImageError as exc:
                msg = str(exc)
                assert "\n" not in msg and msg.encode("utf-8") and exc.reason, msg
                return
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 8 and img.shape[0] * img.shape[1] <= CAPS["max_pixels"]
    finally:
        path.unlink()
        nifti.clear_cache()


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so that mutated chunk contents (IHDR sizes, palette, zlib data) reach the
    decoder instead of stopping at the checksum."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        out += data[pos:end] + struct.pack(">I", zlib.crc32(data[pos + 4:end]) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(out + data[pos:])


@FUZZ
@given(data=mutated(_png_seeds()), fix_crc=st.booleans(), suffix=st.sampled_from([".png", ".jpg", ""]))
def test_png_fuzz(fuzz_dir, data, fix_crc, suffix):
    check_reader(fuzz_dir, _fix_png_crcs(data) if fix_crc else data, suffix)


@FUZZ
@given(data=mutated(_jpeg_seeds()), suffix=st.sampled_from([".jpg", ".png"]))
def test_jpeg_fuzz(fuzz_dir, data, suffix):
    check_reader(fuzz_dir, data, suffix)


_DICOM = _dicom_seeds() if HAVE_PYDICOM else [("plain", b"\0")]


@pytest.mark.skipif(not HAVE_PYDICOM, reason="pydicom not installed")
@FUZZ
@given(seed=st.integers(0, len(_DICOM) - 1), data=st.data(), suffix=st.sampled_from([".dcm", ""]))
def test_dicom_fuzz(fuzz_dir, seed, data, suffix):
    kind, raw = _DICOM[seed]
    body = data.draw(mutated([raw]))
    check_reader(fuzz_dir, _finish(kind, body, False), suffix)


@pytest.mark.skipif(not HAVE_NIBABEL, reason="nibabel not installed")
@FUZZ
@given(data=mutated(_nifti_seeds()), gz=st.booleans())
def test_nifti_fuzz(fuzz_dir, data, gz):
    check_reader(fuzz_dir, _finish("nifti", data, gz), ".nii.gz" if gz else ".nii")
