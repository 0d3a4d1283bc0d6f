"""braintumor.data.limits (issue 19): pixel, voxel and decompressed-byte caps for every reader, checked from the
header before decoding; the bombs of the issue (a 9000x9000 DICOM, plain and deflated, and a 512 MiB gzip NIfTI)
refused in well under a second; caps from the environment, per process and per call (thread-safe); the NIfTI
cache bounded by bytes; file names that are not UTF-8."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from braintumor.data import limits as lim
from braintumor.data.limits import (
    BoundedReader,
    Limits,
    current_limits,
    inflate,
    limits_from_env,
    set_process_limits,
    use_limits,
)
from braintumor.data.read import frame_count, read_image
from braintumor.errors import ImageTooLargeError, UnreadableImageError, UsageError

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, MRImageStorage  # noqa: E402

from braintumor.data import nifti  # noqa: E402

SERVICE = Limits(max_pixels=40_000_000, max_decompressed_bytes=256 << 20)  # what a service would set
ZEROS_MIB = gzip.compress(bytes(1 << 20), 1)  # one gzip member: 1 MiB of zeros in about 1 KiB


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (lim.PIXELS_ENV, lim.VOXELS_ENV, lim.DECOMPRESSED_ENV):
        monkeypatch.delenv(name, raising=False)
    set_process_limits(None)
    yield
    set_process_limits(None)
    nifti.clear_cache()


def _grad(h=40, w=48, dtype=np.uint16):
    return (np.arange(h * w).reshape(h, w) % 997).astype(dtype)


def write_dicom(path, rows, cols, *, deflated=False, frames=None, pixels=None, extra=None):
    """A minimal MR image; ``pixels=None`` writes zeros of the size the header claims."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes() if pixels is not None else bytes(rows * cols * 2 * (frames or 1))
    if extra is not None:
        extra(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def sparse_dicom(path, rows, cols):
    """A full-size uncompressed DICOM whose pixel data is a hole in a sparse file: no time, no disk used."""
    write_dicom(path, rows, cols, pixels=np.zeros(1, np.uint16))  # the pixel data element is last: 2 bytes
    nbytes = rows * cols * 2
    with open(path, "r+b") as fh:
        fh.seek(-6, os.SEEK_END)
        fh.write(struct.pack("<I", nbytes))
        fh.truncate(fh.tell() + nbytes)
    return path


def gzip_nifti(path, shape, *, mib=512, offset=352, dtype=np.uint8):
    """A .nii.gz whose header says ``shape``/``offset``, followed by ``mib`` MiB of zeros (a few hundred KiB)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_data_offset(offset)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(hdr.binaryblock + b"\0\0\0\0", 1))
        for _ in range(mib):
            fh.write(ZEROS_MIB)
    return path


def refused(path, what, limits=None, frame=None) -> tuple[ImageTooLargeError, float]:
    t = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as exc:
        read_image(path, frame, limits=limits)
    took = time.perf_counter() - t
    err = exc.value
    assert err.what == what and isinstance(err, UnreadableImageError) and "too large" in err.reason
    assert f"{err.limit:,}" in err.reason and "\n" not in str(err)
    return err, took


# ------------------------------------------------------------------------------------------------ the bombs


def test_9000x9000_dicom_plain_and_deflated_refused_from_the_header_in_under_a_second(tmp_path):
    plain = sparse_dicom(tmp_path / "scan.dcm", 9000, 9000)
    assert plain.stat().st_size > 9000 * 9000 * 2
    # The deflated one is tiny on disk and 162 MB inflated: refused after inflating its first 64 KiB only.
    deflated = write_dicom(tmp_path / "deflated.dcm", 9000, 9000, deflated=True)
    assert deflated.stat().st_size < 1_000_000
    for path in (plain, deflated):
        err, took = refused(path, "pixels", SERVICE)
        assert took < 1.0, (path.name, took)
        assert err.limit == 40_000_000
        assert err.reason == "image too large: 9000x9000 pixels (limit 40,000,000 pixels)"
        assert str(err) == f"{path}: image too large: 9000x9000 pixels (limit 40,000,000 pixels)"
        _, took = refused(path, "pixels")  # the CLI default (64 Mpixel) refuses it too
        assert took < 1.0
        path.unlink()
    # The same construction under the cap reads (the refusal above is the size, not the construction).
    assert read_image(sparse_dicom(tmp_path / "small.dcm", 90, 90)).shape == (90, 90, 3)


def test_512_mib_gzip_nifti_bombs_refused_in_under_a_second(tmp_path):
    # 1. the header claims a 512 Mvoxel volume (the bomb: 25-41 s per request before).
    huge = gzip_nifti(tmp_path / "huge.nii.gz", (1024, 1024, 512))
    assert huge.stat().st_size < 4_000_000
    for limits in (None, SERVICE):
        err, took = refused(huge, "voxels", limits)
        assert took < 1.0 and "1024x1024x512 voxels" in err.reason
    # 2. a small volume placed after 512 MiB of padding (vox_offset): refused before decompressing anything.
    padded = gzip_nifti(tmp_path / "offset.nii.gz", (64, 64, 64), offset=512 << 20)
    err, took = refused(padded, "decompressed bytes", SERVICE)
    assert took < 1.0 and err.limit == 256 << 20
    # 3. a small volume followed by 512 MiB of zeros it never uses: read at once, the padding is never inflated.
    tail = gzip_nifti(tmp_path / "tail.nii.gz", (64, 64, 64))
    t = time.perf_counter()
    assert read_image(tail, limits=SERVICE).shape == (64, 64, 3)
    assert time.perf_counter() - t < 1.0
    assert frame_count(huge) == 1 and frame_count(tail) == 64  # discovery does not fall over either


def test_nifti_stream_is_bounded_whatever_the_header_says(tmp_path):
    # BoundedReader: reading or seeking past the cap raises instead of inflating further.
    raw = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(bytes(3000))))
    reader = BoundedReader(raw, "v.nii.gz", Limits(max_decompressed_bytes=1000))
    assert len(reader.read(1000)) == 1000
    with pytest.raises(ImageTooLargeError) as exc:
        reader.read(1)
    assert exc.value.what == "decompressed bytes" and exc.value.limit == 1000
    with pytest.raises(ImageTooLargeError):
        reader.seek(5000)
    with pytest.raises(ImageTooLargeError):
        BoundedReader(gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(bytes(3000)))), "v",
                      Limits(max_decompressed_bytes=1000)).read()
    # A float64 volume of 2 MB under a 1 MiB cap: refused from the header.
    vol = np.random.default_rng(0).random((64, 64, 64))
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "f64.nii.gz")
    err, _ = refused(tmp_path / "f64.nii.gz", "decompressed bytes", Limits(max_decompressed_bytes=1 << 20))
    assert "bytes to the end of the first volume's data" in err.reason
    assert read_image(tmp_path / "f64.nii.gz").shape == (64, 64, 3)  # fine under the default cap


def test_deflated_dicom_reads_like_plain_and_its_inflation_is_bounded(tmp_path):
    a = _grad()
    plain = write_dicom(tmp_path / "plain.dcm", *a.shape, pixels=a)
    deflated = write_dicom(tmp_path / "deflated.dcm", *a.shape, pixels=a, deflated=True)
    assert np.array_equal(read_image(plain), read_image(deflated))
    frames = np.stack([a, a // 2, a // 3])
    multi = write_dicom(tmp_path / "multi.dcm", *a.shape, pixels=frames, frames=3, deflated=True)
    assert frame_count(multi) == 3
    assert np.array_equal(read_image(multi, 2), read_image(write_dicom(tmp_path / "p2.dcm", *a.shape,
                                                                       pixels=frames[2])))
    # Small dims, but 300 MiB of zeros in a private element after the pixels: refused when inflation passes the cap.
    bomb = write_dicom(tmp_path / "bomb.dcm", *a.shape, pixels=a, deflated=True,
                       extra=lambda ds: ds.add_new(0x7FE11010, "OB", bytes(300 << 20)))
    assert bomb.stat().st_size < 2_000_000
    err, took = refused(bomb, "decompressed bytes", Limits(max_decompressed_bytes=64 << 20))
    assert took < 1.0 and err.limit == 64 << 20
    # Truncated deflate data: a one-line corrupt-file error, not zlib's.
    data = deflated.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 200])
    with pytest.raises(UnreadableImageError) as exc:
        read_image(tmp_path / "cut.dcm")
    assert "truncated or corrupt" in exc.value.reason and not isinstance(exc.value, ImageTooLargeError)


def test_inflate_stops_at_the_cap_and_shows_the_header_first():
    packed = zlib.compress(bytes(5 << 20))[2:-4]  # raw deflate, 5 MiB of zeros
    assert len(inflate(packed, "x")) == 5 << 20
    seen = []
    with pytest.raises(ImageTooLargeError):
        inflate(packed, "x", limits=Limits(max_decompressed_bytes=1 << 20), on_prefix=lambda b: seen.append(len(b)))
    assert seen == [1 << 16]  # the header check saw the first 64 KiB before anything more was inflated
    with pytest.raises(EOFError):
        inflate(packed[:100], "x")


def test_voxel_cap_on_multiframe_dicom_and_nifti_and_pixel_cap_on_rasters(tmp_path):
    multi = write_dicom(tmp_path / "multi.dcm", 40, 48, frames=10)
    err, _ = refused(multi, "voxels", Limits(max_voxels=40 * 48 * 9))
    assert "48x40x10 voxels" in err.reason
    assert read_image(multi, limits=Limits(max_voxels=40 * 48 * 10)).shape == (40, 48, 3)
    nib.save(nib.Nifti1Image(np.zeros((30, 40, 20), np.uint8), np.eye(4)), tmp_path / "v.nii")
    refused(tmp_path / "v.nii", "voxels", Limits(max_voxels=23_999))
    err, _ = refused(tmp_path / "v.nii", "pixels", Limits(max_pixels=1199))  # one axial slice is 30x40
    assert "slice too large: 30x40 pixels" in err.reason
    assert read_image(tmp_path / "v.nii", limits=Limits(max_pixels=1200, max_voxels=24_000)).shape == (40, 30, 3)
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(tmp_path / "a.png")
    err, _ = refused(tmp_path / "a.png", "pixels", Limits(max_pixels=11_999))
    assert err.reason == "image too large: 120x100 pixels (limit 11,999 pixels)"


def test_raster_over_the_cap_is_refused_before_its_pixels_are_decoded(tmp_path):
    # A PNG header claiming 30000x30000 with a few bytes of data: the size alone decides, at once.
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "big.png").write_bytes(png)
    err, took = refused(tmp_path / "big.png", "pixels")
    assert took < 0.5 and err.reason == "image too large: 900,000,000 pixels (limit 64,000,000 pixels)"
    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)  # under PIL's own guard: ours names the size
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "big.png").write_bytes(png)
    err, took = refused(tmp_path / "big.png", "pixels")
    assert took < 0.5 and err.reason == "image too large: 9000x9000 pixels (limit 64,000,000 pixels)"


# ------------------------------------------------------------------------------------------- configuration


def test_caps_from_the_environment_and_malformed_values(tmp_path, monkeypatch):
    assert current_limits() == Limits() == Limits(64_000_000, 256_000_000, 1 << 30)
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv(lim.PIXELS_ENV, "10000")
    err, _ = refused(tmp_path / "a.png", "pixels")
    assert err.limit == 10_000
    monkeypatch.setenv(lim.PIXELS_ENV, "12_000")
    assert read_image(tmp_path / "a.png").shape == (100, 120, 3)
    monkeypatch.setenv(lim.DECOMPRESSED_ENV, "0.5")
    monkeypatch.setenv(lim.VOXELS_ENV, "1e6")
    assert current_limits() == Limits(12_000, 1_000_000, 1 << 19)
    for name, value in ((lim.PIXELS_ENV, "lots"), (lim.PIXELS_ENV, "-5"), (lim.PIXELS_ENV, "0"),
                        (lim.VOXELS_ENV, "1.5"), (lim.DECOMPRESSED_ENV, "nan"), (lim.DECOMPRESSED_ENV, "1e300")):
        monkeypatch.setenv(name, value)
        with pytest.raises(UsageError) as exc:
            read_image(tmp_path / "a.png")
        assert name in str(exc.value) and value in str(exc.value) and "\n" not in str(exc.value)
        monkeypatch.delenv(name)
    for bad in (0, -1, 1.5, "100", None, True, float("inf"), 1 << 60):
        with pytest.raises(UsageError, match="max_pixels must be a whole number from 1 to"):
            Limits(max_pixels=bad)
    assert limits_from_env({lim.DECOMPRESSED_ENV: "256"}).max_decompressed_bytes == 256 << 20


def test_per_call_per_process_and_per_thread_caps(tmp_path, monkeypatch):
    monkeypatch.setenv(lim.PIXELS_ENV, "5000000")
    assert current_limits().max_pixels == 5_000_000
    set_process_limits(Limits(max_pixels=4_000_000))  # above the environment
    assert current_limits().max_pixels == 4_000_000
    with use_limits(max_pixels=3_000_000):  # above the process
        assert current_limits().max_pixels == 3_000_000
        with use_limits(Limits(max_voxels=7)):
            assert current_limits() == Limits(max_voxels=7)
        assert current_limits().max_pixels == 3_000_000
    assert current_limits().max_pixels == 4_000_000
    assert Limits(max_pixels=10).tighter(SERVICE) == Limits(10, 256_000_000, 256 << 20)
    # Threads: each call's caps are its own (the service decodes in a thread pool).
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "a.png")
    results, barrier = {}, threading.Barrier(8)

    def work(i):
        cap = 9_999 if i % 2 else 10_000
        barrier.wait()
        for _ in range(20):
            try:
                read_image(tmp_path / "a.png", limits=Limits(max_pixels=cap))
                results.setdefault(i, set()).add("ok")
            except ImageTooLargeError as exc:
                results.setdefault(i, set()).add(exc.limit)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == ({9_999} if i % 2 else {"ok"}) for i in range(8)), results
    assert current_limits().max_pixels == 4_000_000


def test_error_type_attributes_and_pickling():
    err = ImageTooLargeError("scan.dcm", "image too large: 9000x9000 pixels (limit 40,000,000 pixels)",
                             40_000_000, "pixels")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.limit, back.what, back.path) == (ImageTooLargeError, str(err), 40_000_000,
                                                                          "pixels", err.path)


# ------------------------------------------------------------------------------------------------- cache


def test_nifti_cache_is_bounded_by_bytes_and_can_forget(tmp_path, monkeypatch):
    monkeypatch.setattr(nifti, "CACHE_BYTES", 50_000)
    monkeypatch.setattr(nifti, "CACHE_VOLUMES", 10)
    nifti.clear_cache()
    for i in range(4):  # 20 KB each once decoded
        nib.save(nib.Nifti1Image(np.full((20, 40, 25), i, np.uint8), np.eye(4)), tmp_path / f"v{i}.nii.gz")
        read_image(tmp_path / f"v{i}.nii.gz")
        assert nifti.cached_bytes() <= 50_000
    assert nifti.cached_bytes() == 40_000  # the two most recent
    nifti.drop_cached(tmp_path / "v3.nii.gz")
    assert nifti.cached_bytes() == 20_000
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.uint8), np.eye(4)), tmp_path / "big.nii.gz")
    read_image(tmp_path / "big.nii.gz")  # 64 KB: larger than the cache, not kept
    assert nifti.cached_bytes() == 20_000
    # A volume cached under loose caps is still refused under tight ones.
    read_image(tmp_path / "v2.nii.gz")
    refused(tmp_path / "v2.nii.gz", "voxels", Limits(max_voxels=100))
    nifti.clear_cache()
    assert nifti.cached_bytes() == 0


# -------------------------------------------------------------------------------------- names and messages


@pytest.mark.parametrize("suffix", [".png", ".dcm", ".nii.gz"])
def test_file_names_that_are_not_utf8(tmp_path, suffix):
    name = os.fsdecode(b"scan\xff" + suffix.encode())
    path = tmp_path / name
    a = _grad(32, 40, np.uint8)
    if suffix == ".png":
        Image.fromarray(a).save(path, format="PNG")
    elif suffix == ".dcm":
        write_dicom(path, *a.shape, pixels=a.astype(np.uint16))
    else:
        nib.save(nib.Nifti1Image(np.stack([a.T] * 3, axis=2), np.eye(4)), str(path))
    assert path.exists() and os.fsencode(path).endswith(b"scan\xff" + suffix.encode())
    assert read_image(path).shape[2] == 3
    assert read_image(str(path)).dtype == np.uint8
    # Broken, too large and missing files under such a name: printable one-line messages, exact .path.
    path.write_bytes(b"\x00" * 50 if suffix != ".png" else b"\x89PNG\r\n\x1a\n broken")
    missing = tmp_path / os.fsdecode(b"gone\xfe\n.png")
    for p in (path, missing):
        with pytest.raises(UnreadableImageError) as exc:
            read_image(p)
        msg = str(exc.value)
        msg.encode("utf-8")  # printable: no lone surrogates
        assert ("scan\\xff" in msg) if p == path else ("gone\\xfe\\x0a.png: no such file" in msg), msg
        assert "\n" not in msg and exc.value.path == p
    for bad in ("a\0b.png", "x" * 5000 + ".png"):
        with pytest.raises(UnreadableImageError, match="invalid file name|no such file"):
            read_image(tmp_path / bad)
