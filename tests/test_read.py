"""braintumor.data.read: formats decided by content, every mode to uint8 RGB, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from braintumor.data.read import image_format, read_image
from braintumor.errors import UnreadableImageError


def _grey(h=40, w=30):
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def test_png_named_jpg_is_read_as_png(tmp_path):
    p = tmp_path / "scan.jpg"
    Image.fromarray(_grey()).save(p, format="PNG")
    assert image_format(p) == "PNG"
    arr = read_image(p)
    assert arr.shape == (40, 30, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], _grey())


def test_uppercase_jpeg_and_greyscale(tmp_path):
    p = tmp_path / "SCAN.JPG"
    Image.fromarray(_grey()).save(p, format="JPEG", quality=95)
    arr = read_image(p)
    assert arr.shape == (40, 30, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1])


def test_16bit_png_is_stretched_to_8bit(tmp_path):
    p = tmp_path / "deep.png"
    data = (np.linspace(1000, 4000, 40 * 30).reshape(40, 30)).astype(np.uint16)
    Image.fromarray(data).save(p)
    arr = read_image(p)
    assert arr.dtype == np.uint8
    assert arr.min() == 0 and arr.max() == 255
    # Monotone mapping: ordering of intensities is kept.
    assert arr[0, 0, 0] < arr[-1, -1, 0]


def test_rgba_composited_on_black(tmp_path):
    p = tmp_path / "alpha.png"
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:10, :, 3] = 255  # top half opaque, bottom transparent
    Image.fromarray(rgba, "RGBA").save(p)
    arr = read_image(p)
    assert arr.shape == (20, 20, 3)
    assert arr[:10].min() == 200 and arr[10:].max() == 0


def test_palette_image(tmp_path):
    p = tmp_path / "pal.png"
    Image.fromarray(_grey()).convert("P").save(p)
    assert read_image(p).shape == (40, 30, 3)


def test_truncated_jpeg_is_an_error(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), np.uint8)).save(good, quality=90)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnreadableImageError) as ei:
        read_image(bad)
    assert ei.value.path == bad and "truncated" in ei.value.reason


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n")
    with pytest.raises(UnreadableImageError, match="text"):
        read_image(p)


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="empty"):
        read_image(p)
    with pytest.raises(UnreadableImageError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_tiny_image_rejected(tmp_path):
    p = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(p)
    with pytest.raises(UnreadableImageError, match="too small"):
        read_image(p)
