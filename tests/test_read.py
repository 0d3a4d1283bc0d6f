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


def test_keep_grey_gives_the_same_prepared_pixels_and_statistics(tmp_path):
    """``load_images`` reads grey sources as (H, W) (no channel copies): the prepared image and the input check's
    statistics must be exactly those of the (H, W, 3) read, whatever the crop detection and size."""
    from braintumor.data.cache import load_images
    from braintumor.input_rules import image_stats
    from braintumor.preprocess import Preprocessor

    rng = np.random.default_rng(3)
    paths = []
    for k, (h, w) in enumerate([(512, 512), (300, 420), (97, 61), (700, 500)]):
        yy, xx = np.mgrid[:h, :w]
        head = ((yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.35 * w) ** 2 < 1) * 110.0
        img = np.clip(head + rng.normal(0, 25, (h, w)) * (head > 0) + rng.normal(0, 3, (h, w)), 0, 255)
        grey = img.astype(np.uint8)
        for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
            p = tmp_path / f"g{k}.{suffix}"
            Image.fromarray(grey).save(p, format=fmt)          # mode L: read as (H, W) with keep_grey
            paths.append(p)
        p = tmp_path / f"deep{k}.png"
        Image.fromarray(grey.astype(np.uint16) * 40 + 7).save(p)   # 16-bit grey
        paths.append(p)
    assert read_image(paths[0], keep_grey=True).ndim == 2
    assert read_image(paths[2], keep_grey=True).ndim == 2
    for side in (0, 256, 64):
        for size in (224, 64):
            pre = Preprocessor(img_size=size, crop_detect_side=side)
            loaded = load_images(paths, pre, stats=True)
            assert loaded.kept == list(range(len(paths)))
            for i, p in enumerate(paths):
                rgb = read_image(p)
                assert rgb.ndim == 3
                assert np.array_equal(loaded.images[i], pre.prepare(rgb)), (p.name, side, size)
                assert loaded.stats[i] == image_stats(rgb), p.name
    # the decoded images themselves on request (what layercam-tta prepares again), not kept otherwise
    kept = load_images(paths + [tmp_path / "missing.png"], Preprocessor(img_size=64), originals=True)
    assert len(kept.originals) == len(paths) and loaded.originals is None
    assert all(np.array_equal(o, read_image(p, keep_grey=True)) for o, p in zip(kept.originals, paths, strict=True))


def test_reduce_to_decodes_a_jpeg_at_the_size_the_preprocessor_reduces_it_to(tmp_path):
    """``reduce_to``: a large JPEG decoded at 1/2, 1/4 or 1/8 size (DCT scaling): the size and, to a grey level or
    two, the pixels of the block averages :class:`Preprocessor` ``reduce_first`` takes of the whole decode, so
    ``load_images`` prepares nearly the same pixels either way; PNGs and small JPEGs are read whole."""
    from braintumor.data.cache import load_images
    from braintumor.preprocess import Preprocessor, box_reduce, reduction_factor

    yy, xx = np.mgrid[:900, :700]
    smooth = (120 + 60 * np.sin(yy / 37.0) * np.cos(xx / 23.0)).astype(np.uint8)
    rgb = np.stack([smooth, smooth, np.roll(smooth, 5, axis=1)], axis=2)
    cases = {"grey.jpg": smooth, "rgb.jpg": rgb, "grey.png": smooth, "small.jpg": smooth[:300, :250]}
    for name, arr in cases.items():
        Image.fromarray(arr).save(tmp_path / name, quality=95)
    for name in cases:
        p = tmp_path / name
        whole = read_image(p, keep_grey=True)
        for side in (224, 100, 64):
            f = reduction_factor(*whole.shape[:2], side)
            got = read_image(p, keep_grey=True, reduce_to=side)
            if name.endswith(".png") or f == 1:
                assert np.array_equal(got, whole), (name, side)
                continue
            want = box_reduce(whole, min(f, 8))  # JPEG scales by 8 at most; the preprocessor does the rest
            assert got.shape == want.shape, (name, side, got.shape, want.shape)
            assert np.abs(got.astype(int) - want).mean() < 2.0, (name, side)
    pre = Preprocessor(img_size=100, reduce_first=True)
    paths = sorted(tmp_path.iterdir())
    loaded = load_images(paths, pre)
    for i, p in enumerate(paths):
        assert np.array_equal(loaded.images[i], pre.prepare(read_image(p, reduce_to=100))), p.name
        assert np.abs(loaded.images[i].astype(int) - pre.prepare(read_image(p))).mean() < 2.0, p.name
