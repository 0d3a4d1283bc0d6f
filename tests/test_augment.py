"""Augmentation: the default transforms are unchanged, the MRI-specific ones do what they claim, all reproducibly."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import set_track_meta
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandBiasField,
    RandFlip,
    RandGibbsNoise,
    RandHistogramShift,
    RandScaleIntensity,
    RandSimulateLowResolution,
)

import braintumor.augment
from braintumor.augment import (
    Augmenter,
    RandContrastInversion,
    RandJpeg,
    RandOrientation,
    RandSpike,
    head_mask,
)


class _OriginalAugmenter:
    """A frozen copy of ``Augmenter`` as it was before the MRI transforms were added (the default must match it
    bit for bit: training results are compared across versions)."""

    def __init__(self, seed=0, rotate_deg=10.0, zoom=0.1, shift=0.025, brightness=0.1, contrast=(0.85, 1.15)):
        self._shift = shift
        self.transform = Compose([
            RandFlip(prob=0.5, spatial_axis=1),
            RandAffine(prob=0.9, rotate_range=(math.radians(rotate_deg),), scale_range=(zoom, zoom),
                       translate_range=(0, 0), padding_mode="zeros", mode="bilinear"),
            RandScaleIntensity(factors=brightness, prob=0.5),
            RandAdjustContrast(prob=0.5, gamma=contrast),
        ])
        self.reseed(seed)

    def reseed(self, seed):
        self.transform.set_random_state(seed=seed % (2**32))
        self._gen = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        set_track_meta(False)
        grey = x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
        src = x[:, :1] if grey else x
        out = torch.stack([torch.as_tensor(self.transform(img)) for img in src]).clamp_(0, 1)
        if self._shift > 0:
            n, _, h, w = out.shape
            shifted = torch.zeros_like(out)
            m = max(1, int(round(self._shift * h)))
            shifts = torch.randint(-m, m + 1, (n, 2), generator=self._gen)
            for i, (dy, dx) in enumerate(shifts.tolist()):
                ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
                xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
                shifted[i, :, yd, xd] = out[i, :, ys, xs]
            out = shifted
        return out.expand(-1, 3, -1, -1).contiguous() if grey else out


def _checksum_inputs():
    g = torch.Generator().manual_seed(1234)
    grey = torch.rand(6, 1, 48, 48, generator=g).expand(-1, 3, -1, -1).contiguous()
    colour = torch.rand(4, 3, 40, 40, generator=g)
    return grey, colour


def head(size: int = 96, seed: int = 0) -> torch.Tensor:
    """A ``(1, size, size)`` head-like image: a textured ellipse in ``[0.3, 0.9]`` with a dark (0.05) ventricle
    and a bright rim, on an exactly zero background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = torch.sqrt((yy / 0.8) ** 2 + (xx / 0.65) ** 2)
    tex = torch.nn.functional.avg_pool2d(torch.rand(1, 1, size, size, generator=g), 5, 1, 2)[0, 0]
    img = torch.where(r < 1, 0.3 + 0.5 * (tex - tex.min()) / (tex.max() - tex.min()), torch.zeros(()))
    img = torch.where((r >= 0.9) & (r < 1), torch.full((), 0.9), img)
    img = torch.where(torch.sqrt((yy / 0.2) ** 2 + ((xx - 0.15) / 0.08) ** 2) < 1, torch.full((), 0.05), img)
    return img.clamp(0, 1)[None]


def outside(size: int = 96, margin: float = 1.15) -> torch.Tensor:
    """``(size, size)`` mask of the background of :func:`head`, ``margin`` times the head's radius away."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.sqrt((yy / 0.8) ** 2 + (xx / 0.65) ** 2) > margin


def inside(size: int = 96) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.sqrt((yy / 0.8) ** 2 + (xx / 0.65) ** 2) < 1


def heads(n: int = 8, size: int = 96) -> torch.Tensor:
    """``(n, 3, size, size)`` greyscale batch."""
    return torch.stack([head(size, seed=i) for i in range(n)]).expand(-1, 3, -1, -1).contiguous()


def high_freq_energy(img: torch.Tensor, frac: float = 0.25) -> float:
    """Spectral energy beyond ``frac`` of the sampling frequency (the mean removed)."""
    k = torch.fft.fftshift(torch.fft.fft2(img - img.mean()))
    h, w = img.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    return float((k.abs() ** 2)[..., torch.sqrt((yy / h) ** 2 + (xx / w) ** 2) > frac].sum())


def fired(transform, seed: int = 0):
    """``transform`` with probability 1, seeded."""
    transform.prob = 1.0
    transform.set_random_state(seed)
    set_track_meta(False)
    return transform


# ----------------------------------------------------------------------------------------------- default: unchanged


def test_default_transform_list_is_unchanged():
    aug = Augmenter(seed=0)
    assert [type(t) for t in aug.transform.transforms] == [RandFlip, RandAffine, RandScaleIntensity,
                                                           RandAdjustContrast]
    assert [t.prob for t in aug.transform.transforms] == [0.5, 0.9, 0.5, 0.5]
    assert aug.params == dict(rotate_deg=10.0, zoom=0.1, shift=0.025, brightness=0.1, contrast=(0.85, 1.15))
    assert aug.mri is False and not hasattr(aug, "mri_transform")


def test_default_matches_checksums_recorded_before_the_mri_transforms():
    """Sums and pixels recorded with the implementation before ``mri`` existed (same seeds, same inputs)."""
    grey, colour = _checksum_inputs()
    aug = Augmenter(seed=7)
    a, b = aug(grey), aug(colour)
    aug.reseed(11)
    c = aug(grey)
    recorded = [(19205.278077807707, [0.8770419359207153, 0.6858031749725342, 0.0728122889995575]),
                (8986.238908706931, [0.6899793744087219, 0.5218899250030518, 0.5559723973274231]),
                (18643.20538717907, [0.8765341639518738, 0.6023837327957153, 0.32791778445243835])]
    for out, (total, pixels) in zip((a, b, c), recorded, strict=True):
        assert float(out.double().sum()) == pytest.approx(total, abs=1e-2)
        assert out[0, 0, 10, 10:13].tolist() == pytest.approx(pixels, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 7, 123_456_789])
def test_default_is_bit_identical_to_the_original(seed):
    grey, colour = _checksum_inputs()
    new, old = Augmenter(seed=seed), _OriginalAugmenter(seed=seed)
    for x in (grey, colour, grey):
        assert torch.equal(new(x), old(x))
    new.reseed(seed + 1), old.reseed(seed + 1)
    assert torch.equal(new(grey), old(grey))


def test_mri_transforms_do_not_shift_the_usual_random_stream():
    """With every MRI transform switched off, ``mri=True`` gives exactly the ``mri=False`` output: the MRI
    transforms draw from their own streams."""
    grey, colour = _checksum_inputs()
    aug = Augmenter(seed=5, mri=True)
    for t in [*aug.mri_transform.transforms, aug.jpeg]:
        if hasattr(t, "prob"):
            t.prob = 0.0
    ref = Augmenter(seed=5)
    for x in (grey, colour):
        assert torch.equal(aug(x), ref(x))


# -------------------------------------------------------------------------------------- reproducibility, invariants


@pytest.mark.parametrize("mri", [False, True])
def test_reproducible_under_reseed(mri):
    x = heads(8, 64)
    aug = Augmenter(seed=3, mri=mri)
    first = aug(x)
    second = aug(x)
    assert not torch.equal(first, second)  # the stream moves on
    aug.reseed(3)
    assert torch.equal(aug(x), first)
    assert torch.equal(aug(x), second)
    assert torch.equal(Augmenter(seed=3, mri=mri)(x), first)
    aug.reseed(4)
    assert not torch.equal(aug(x), first)


@pytest.mark.filterwarnings("ignore:The image's intensity is a single value")  # MONAI, on the blank images
@pytest.mark.parametrize("mri", [False, True])
@pytest.mark.parametrize("shape", [(16, 3, 64, 64), (6, 3, 48, 80)])
def test_shape_range_dtype_and_greyscale_are_kept(mri, shape):
    n, _, h, w = shape
    grey = torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(0)).expand(-1, 3, -1, -1)
    grey = grey * (torch.rand(n, 1, 1, 1) > 0.3)  # a few blank images as well
    colour = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    aug = Augmenter(seed=0, mri=mri)
    for seed in range(3):
        aug.reseed(seed)
        for x in (grey, colour):
            y = aug(x)
            assert y.shape == x.shape and y.dtype == x.dtype
            assert float(y.min()) >= 0 and float(y.max()) <= 1 and bool(torch.isfinite(y).all())
        y = aug(grey)
        assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


def test_mri_augmentation_changes_more_than_the_default():
    x = heads(48, 48)
    plain, mri = Augmenter(seed=0)(x), Augmenter(seed=0, mri=True)(x)
    changed = [not torch.equal(p, m) for p, m in zip(plain, mri, strict=True)]
    assert sum(changed) / len(changed) > 0.8  # about 93 % of images get at least one MRI transform


def test_mri_probabilities_and_strengths_are_as_documented():
    aug = Augmenter(seed=0, mri=True)
    ts = {type(t).__name__: t for t in aug.mri_transform.transforms if hasattr(t, "prob")}
    assert {name: t.prob for name, t in ts.items()} == {
        "RandOrientation": 0.3, "RandContrastInversion": 0.2, "RandHistogramShift": 0.3, "RandAdjustContrast": 0.3,
        "RandBiasField": 0.3, "RandSimulateLowResolution": 0.25, "RandGibbsNoise": 0.2, "RandSpike": 0.1}
    assert aug.jpeg.prob == 0.3 and aug.jpeg.quality == (30, 90)
    assert ts["RandAdjustContrast"].gamma == (0.5, 2.0)
    assert ts["RandHistogramShift"].num_control_points == (5, 10)
    assert ts["RandBiasField"].coeff_range == (-0.2, 0.2) and ts["RandBiasField"].degree == 3
    assert ts["RandSimulateLowResolution"].zoom_range == pytest.approx((1 / 3, 1 / 1.5))
    assert ts["RandGibbsNoise"].alpha == (0.3, 0.65)
    assert ts["RandSpike"].amplitude == (0.02, 0.06)
    assert ts["RandContrastInversion"].threshold == 0.1
    rows = {"RandOrientation": "orientation", "RandContrastInversion": "contrast inversion",
            "RandHistogramShift": "histogram shift", "RandAdjustContrast": "strong gamma",
            "RandBiasField": "bias field", "RandSimulateLowResolution": "lower resolution",
            "RandGibbsNoise": "Gibbs ringing", "RandSpike": "k-space spike"}
    for name, t in [*ts.items(), ("RandJpeg", aug.jpeg)]:
        row = rows.get(name, "JPEG re-encoding")
        assert f"| {row} | {t.prob} |" in braintumor.augment.__doc__, name  # the docstring's table agrees


# ------------------------------------------------------------------------------------ the MRI transforms one by one


def test_contrast_inversion_flips_the_head_and_keeps_the_background():
    x = head(96)
    y = fired(RandContrastInversion())(x)
    inner, bg = inside(96), head(96)[0] == 0
    lo, hi = float(x[0][inner].min()), float(x[0][inner].max())
    assert torch.allclose(y[0][inner], lo + hi - x[0][inner], atol=1e-6)  # the head's intensities flipped
    assert float(y[0][bg].abs().max()) == 0.0  # background stays black
    a, b = x[0][inner] - x[0][inner].mean(), y[0][inner] - y[0][inner].mean()
    assert float((a * b).sum() / (a.norm() * b.norm())) < -0.99  # perfectly anti-correlated
    assert float(y[0][inner].mean()) == pytest.approx(lo + hi - float(x[0][inner].mean()), abs=1e-5)
    # the dark ventricle becomes (nearly) the brightest part, the bright rim the darkest
    assert float(y[0, 48, 58]) > 0.85 and float(x[0, 48, 18]) == pytest.approx(0.9) and float(y[0, 48, 18]) < 0.2


def test_contrast_inversion_ignores_a_grey_background_and_an_image_frame():
    x = head(96)
    x = torch.where(x == 0, torch.full((), 0.15), x)  # grey, not black, background
    x[:, 1, :] = x[:, -2, :] = x[:, :, 1] = x[:, :, -2] = 1.0  # a thin white frame
    x[:, 1:10, 48] = 1.0  # joined to the head by a thin line
    y = fired(RandContrastInversion())(x)
    assert float((y - x)[0][outside(96, 1.1)].abs().max()) == 0.0
    assert float((y - x)[0][inside(96)].abs().mean()) > 0.1


def test_head_mask_fills_holes_and_drops_specks():
    x = head(96)
    x[:, 3, 3] = 0.9  # a bright speck in the background
    x[:, 2:12, 84:94] = 0.9  # and a bright patch: kept by the opening, but not the largest region
    m = head_mask(x)
    assert float(x[0, 48, 58]) < 0.1 * float(x.max()) and bool(m[48, 58])  # the dark ventricle is in the head
    assert not bool(m[3, 3]) and not m[2:12, 84:94].any()
    assert int((m ^ inside(96)).sum()) < 0.03 * int(inside(96).sum())
    assert not head_mask(torch.zeros(1, 16, 16)).any()


def test_orientation_gives_a_rotation_or_transpose_and_keeps_non_square_shapes():
    x = torch.arange(25.0).reshape(1, 5, 5)
    ops = {"rot90": torch.rot90(x, 1, (1, 2)), "rot180": torch.rot90(x, 2, (1, 2)),
           "rot270": torch.rot90(x, 3, (1, 2)), "transpose": x.transpose(1, 2),
           "antitranspose": torch.rot90(x, 2, (1, 2)).transpose(1, 2)}
    t = fired(RandOrientation())
    seen = set()
    for _ in range(60):
        y = t(x)
        match = [name for name, ref in ops.items() if torch.equal(y, ref)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(ops)
    rect = torch.arange(12.0).reshape(1, 3, 4)
    for _ in range(10):
        assert torch.equal(t(rect), torch.rot90(rect, 2, (1, 2)))


@pytest.mark.parametrize("transform", [RandHistogramShift(num_control_points=(5, 10)),
                                       RandAdjustContrast(gamma=(0.5, 2.0)),
                                       RandBiasField(degree=3, coeff_range=(-0.2, 0.2))],
                         ids=["histogram-shift", "gamma", "bias-field"])
def test_intensity_transforms_change_the_head_and_keep_a_black_background(transform):
    x = head(96)
    bg = x[0] == 0
    changed = 0
    for seed in range(5):
        y = fired(transform, seed)(x)
        assert float(y[0][bg].abs().max()) == 0.0
        changed += float((y - x).abs().max()) > 0.02
    assert changed >= 4


@pytest.mark.parametrize("transform", [RandHistogramShift(num_control_points=(5, 10)),
                                       RandAdjustContrast(gamma=(0.5, 2.0))], ids=["histogram-shift", "gamma"])
def test_global_intensity_maps_are_monotone(transform):
    x = head(64)
    y = fired(transform, 1)(x)
    order = torch.argsort(x.flatten())
    assert bool((torch.diff(y.flatten()[order]) >= -1e-6).all())


def test_bias_field_is_smooth_and_spatially_varying():
    x = head(96)
    y = fired(RandBiasField(degree=3, coeff_range=(-0.2, 0.2)), 2)(x)
    ratio = (y / x.clamp(min=1e-6))[0][inside(96)]
    assert float(ratio.std()) > 0.02  # not a plain scaling
    assert 0.2 < float(ratio.min()) and float(ratio.max()) < 5


def test_low_resolution_removes_high_frequencies():
    x = head(128)
    t = fired(RandSimulateLowResolution(downsample_mode="area", upsample_mode="bilinear",
                                        zoom_range=(1 / 3, 1 / 1.5)))
    for _ in range(3):
        y = t(x)
        assert y.shape == x.shape
        assert high_freq_energy(y) < 0.5 * high_freq_energy(x)
        assert float(y[0][outside(128, 1.15)].abs().max()) < 1e-6  # far from the head it stays black


def test_gibbs_ringing_truncates_k_space_and_rings():
    x = head(96)
    y = fired(RandGibbsNoise(alpha=(0.3, 0.65)))(x)
    assert high_freq_energy(y, 0.4) < 0.05 * high_freq_energy(x, 0.4)
    assert float((y - x).abs().max()) > 0.05
    assert float(y.min()) < -1e-3  # undershoot at the edges: ringing (clipped later by the augmenter)


def test_spike_adds_one_mild_stripe_pattern():
    x = head(96)
    t = fired(RandSpike(amplitude=(0.02, 0.06)))
    for _ in range(5):
        diff = t(x) - x
        assert 0.01 < float(diff.abs().max()) < 0.15
        power = torch.fft.fft2(diff[0]).abs().flatten() ** 2
        top = torch.topk(power, 2).values.sum()
        assert float(top / power.sum()) > 0.6  # (nearly) a single frequency: a stripe pattern
    blank = t(torch.zeros(1, 64, 64))
    assert 0.02 - 1e-4 <= float(blank.abs().max()) <= 0.06 + 1e-4


def test_jpeg_at_low_quality_changes_pixels_more_than_at_high_quality():
    x = torch.stack([head(96, seed=s)[0] for s in range(1)])  # (1, H, W)
    x = (x + 0.05 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    low = fired(RandJpeg(quality=(30, 30)))(x)
    high = fired(RandJpeg(quality=(90, 90)))(x)
    assert low.shape == x.shape and low.dtype == x.dtype
    assert torch.equal(low * 255, (low * 255).round())  # went through uint8
    err_low, err_high = float((low - x).abs().mean()), float((high - x).abs().mean())
    assert err_low > 0.005 and err_low > 1.5 * err_high
    rgb = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert fired(RandJpeg(quality=(30, 30)))(rgb).shape == rgb.shape


def test_jpeg_quality_is_drawn_in_range():
    t = fired(RandJpeg(quality=(30, 90)))
    qualities = set()
    for _ in range(200):
        t.randomize()
        qualities.add(t._quality)
    assert min(qualities) >= 30 and max(qualities) <= 90 and len(qualities) > 30


def test_mri_pipeline_without_ringing_spikes_and_geometry_keeps_the_background_black():
    aug = Augmenter(seed=0, mri=True)
    for t in aug.mri_transform.transforms:
        if isinstance(t, (RandGibbsNoise, RandSpike, RandOrientation)):
            t.prob = 0.0
        elif hasattr(t, "prob"):
            t.prob = 1.0
    set_track_meta(False)
    far = outside(96, 1.2)
    for seed in range(4):
        aug.reseed(seed)
        y = aug.mri_transform(head(96, seed=seed))
        assert float(y[0][far].abs().max()) < 1e-6
        assert 0 <= float(y.min()) and float(y.max()) <= 1
