"""Training-time augmentation with MONAI transforms: flip, small rotation, zoom, shift, intensity.

Applied per image on ``[0, 1]`` float tensors before normalisation. For greyscale inputs (all channels equal)
only one channel is transformed and then repeated, which is three times cheaper.

``mri=True`` adds MRI-specific augmentation, a lever against learning the data *source* (scanner, sequence,
export format) instead of the lesion. Each transform fires independently with its own probability:

| transform | prob | strength |
|---|---|---|
| orientation | 0.3 | rotation by 90, 180 or 270 degrees, transpose or anti-transpose (square images) |
| contrast inversion | 0.2 | crude T1/T2 swap: the head (largest bright region, opened, holes filled) inverted |
| histogram shift | 0.3 | ``RandHistogramShift``, 5-10 control points |
| strong gamma | 0.3 | ``RandAdjustContrast``, gamma 0.5-2.0 |
| bias field | 0.3 | ``RandBiasField``, degree 3, coefficients +/- 0.2 |
| lower resolution | 0.25 | ``RandSimulateLowResolution``, area-downsampled by 1.5-3, bilinear back up |
| Gibbs ringing | 0.2 | ``RandGibbsNoise``, alpha 0.3-0.65 |
| k-space spike | 0.1 | ``RandKSpaceSpikeNoise`` (``RandSpike``), one spike, stripes of amplitude 0.02-0.06 |
| JPEG re-encoding | 0.3 | quality 30-90 (Pillow), after all other transforms |

They run before the usual transforms (JPEG last, after them), draw from their own random streams (seeded by
:meth:`Augmenter.reseed` together with the usual ones) and leave the usual transforms' random draws unchanged:
``mri=False`` gives exactly what it gave before the MRI transforms existed. Bias field, inversion, histogram
shift and gamma keep a zero background at zero; Gibbs ringing, spikes and JPEG may leave a faint residue there.

Example:
    >>> import torch
    >>> from braintumor.augment import Augmenter
    >>> aug = Augmenter(seed=0)
    >>> aug(torch.rand(4, 3, 64, 64)).shape
    torch.Size([4, 3, 64, 64])
    >>> mri = Augmenter(seed=0, mri=True)
    >>> x = torch.rand(4, 1, 64, 64).expand(-1, 3, -1, -1)   # greyscale: three equal channels
    >>> y = mri(x)
    >>> y.shape, bool(torch.equal(y[:, 0], y[:, 2])), 0 <= float(y.min()) <= float(y.max()) <= 1
    (torch.Size([4, 3, 64, 64]), True, True)
    >>> mri.reseed(3); a = mri(x); mri.reseed(3); bool(torch.equal(a, mri(x)))   # reproducible
    True
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
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
    RandKSpaceSpikeNoise,
    RandomizableTransform,
    RandScaleIntensity,
    RandSimulateLowResolution,
)


class RandOrientation(RandomizableTransform):
    """Random 90-degree rotation (90/180/270) or (anti-)transpose of a ``(C, H, W)`` image, mimicking other slice
    layouts (coronal/sagittal exports, rotated viewers). Non-square images only get the 180-degree rotation, so the
    shape never changes.

    Example:
        >>> import torch
        >>> t = RandOrientation(prob=1.0); _ = t.set_random_state(0)
        >>> t(torch.arange(4.0).reshape(1, 2, 2)).shape
        torch.Size([1, 2, 2])
    """

    OPS = ("rot90", "rot180", "rot270", "transpose", "antitranspose")

    def __init__(self, prob: float = 0.3) -> None:
        RandomizableTransform.__init__(self, prob)
        self._op = "rot180"

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._op = self.OPS[self.R.randint(len(self.OPS))]

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        op = self._op if img.shape[-2] == img.shape[-1] else "rot180"
        if op == "transpose":
            return img.transpose(-2, -1)
        if op == "antitranspose":
            return torch.rot90(img, 2, (-2, -1)).transpose(-2, -1)
        return torch.rot90(img, {"rot90": 1, "rot180": 2, "rot270": 3}[op], (-2, -1))


class RandContrastInversion(RandomizableTransform):
    """Crude T1/T2 swap: intensities inside the head are inverted (``lo + hi - x``, so the head keeps its range
    ``[lo, hi]``), the background is left as it is.

    The head is found by :func:`head_mask` (holes are filled: dark ventricles and CSF inside the head become
    bright, as in T2). Works on the channel mean, applies to all channels.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 8, 8); x[:, 2:6, 2:6] = torch.tensor([0.2, 0.4, 0.6, 0.8])
        >>> t = RandContrastInversion(prob=1.0); _ = t.set_random_state(0)
        >>> y = t(x); [round(float(v), 2) for v in (y[0, 2, 2], y[0, 2, 5], y[0, 0, 0])]   # head flipped, bg kept
        [0.8, 0.2, 0.0]
    """

    def __init__(self, prob: float = 0.2, threshold: float = 0.1) -> None:
        RandomizableTransform.__init__(self, prob)
        self.threshold = threshold

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(None)
        if not self._do_transform:
            return img
        mask = head_mask(img, self.threshold)
        if not mask.any():
            return img
        inside = img[:, mask]
        lo, hi = inside.min(), inside.max()
        return torch.where(mask, (lo + hi - img).clamp(lo, hi), img)


class RandSpike(RandKSpaceSpikeNoise):
    """``RandKSpaceSpikeNoise`` with one spike whose stripes have an amplitude in ``amplitude`` (in the image's
    intensity units, whatever the image size), instead of MONAI's default of a log-intensity relative to the mean
    log-spectrum, which needs an extra FFT per image even when no spike is drawn and can be far from mild.

    Example:
        >>> import torch
        >>> t = RandSpike(prob=1.0, amplitude=(0.05, 0.05)); _ = t.set_random_state(0)
        >>> y = t(torch.zeros(1, 32, 32)); round(float(y.abs().max()), 2)
        0.05
    """

    def __init__(self, prob: float = 0.1, amplitude: tuple[float, float] = (0.02, 0.06)) -> None:
        super().__init__(prob=prob, intensity_range=None, channel_wise=False)
        self.amplitude = amplitude

    def _make_sequence(self, x: torch.Tensor) -> tuple[tuple[float, float], ...]:
        n = math.log(math.prod(x.shape[1:]))  # an unnormalised FFT: a spike of |k| = a * N gives stripes of a
        return ((n + math.log(self.amplitude[0]), n + math.log(self.amplitude[1])),) * x.shape[0]


class RandJpeg(RandomizableTransform):
    """Re-encode a ``(C, H, W)`` ``[0, 1]`` image as JPEG (``uint8``, Pillow) at a random quality, erasing
    export-format cues (PNG vs. JPEG, compression level). One channel is encoded as greyscale, three as RGB.

    Example:
        >>> import torch
        >>> t = RandJpeg(prob=1.0, quality=(30, 30)); _ = t.set_random_state(0)
        >>> y = t(torch.rand(1, 32, 32)); y.shape, y.dtype
        (torch.Size([1, 32, 32]), torch.float32)
    """

    def __init__(self, prob: float = 0.3, quality: tuple[int, int] = (30, 90)) -> None:
        RandomizableTransform.__init__(self, prob)
        self.quality = quality
        self._quality = quality[1]

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._quality = int(self.R.randint(self.quality[0], self.quality[1] + 1))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        from PIL import Image

        if randomize:
            self.randomize()
        if not self._do_transform or img.shape[0] not in (1, 3):
            return img
        arr = (img.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        pil = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=self._quality)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("L" if arr.shape[0] == 1 else "RGB"))
        dec = dec[None] if dec.ndim == 2 else dec.transpose(2, 0, 1)
        return torch.from_numpy(np.array(dec)).to(img.dtype).div_(255).to(img.device)


def head_mask(img: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``(H, W)`` bool mask of the head in a ``(C, H, W)`` image.

    The channel mean above ``bg + threshold * (max - bg)``, where ``bg`` is the median of the image's outer
    border (some exports have a grey, not black, background), opened (which cuts thin lines such as an image
    frame or burnt-in text off the head), its largest connected region, holes filled.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 32, 32); x[:, 8:24, 8:24] = 0.8; x[:, 14:18, 14:18] = 0.0
        >>> x[:, 1, :] = 0.5; x[:, :, 1] = 0.5; x[:, 1:9, 12] = 0.5   # a thin frame, joined to the head
        >>> m = head_mask(x); int(m.sum()), bool(m[15, 15]), bool(m[1, 20])
        (256, True, False)
    """
    from scipy import ndimage

    lum = img.float().mean(0)
    top = float(lum.max())
    if top <= 0:
        return torch.zeros(lum.shape, dtype=torch.bool, device=img.device)
    h, w = lum.shape
    b = max(1, min(h, w) // 32)
    border = torch.cat([lum[:b].flatten(), lum[-b:].flatten(), lum[:, :b].flatten(), lum[:, -b:].flatten()])
    bg = min(float(border.median()), top)
    raw = (lum > bg + threshold * (top - bg)).cpu().numpy()
    opened = ndimage.binary_opening(raw, structure=np.ones((3, 3), bool), iterations=1 + min(raw.shape) // 150)
    mask = opened if opened.any() else raw
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(sizes.argmax())
    mask = ndimage.binary_fill_holes(mask)
    return torch.from_numpy(mask).to(img.device)


def _renormalise(img: torch.Tensor) -> torch.Tensor:
    """Back into ``[0, 1]`` after the MRI transforms: negatives clipped, an overshoot above 1 scaled down (not
    clipped, so that a bright bias field does not saturate the image)."""
    img = torch.as_tensor(img, dtype=torch.float32).clamp(min=0)
    top = float(img.max())
    return img / top if top > 1 else img


class Augmenter:
    """Random flip (left-right), rotation (+/- ``rotate_deg``), zoom, shift, brightness and contrast; with ``mri``
    also the MRI-specific transforms listed in the module docstring."""

    def __init__(self, seed: int = 0, rotate_deg: float = 10.0, zoom: float = 0.1, shift: float = 0.025,
                 brightness: float = 0.1, contrast: tuple[float, float] = (0.85, 1.15), mri: bool = False):
        self.params = dict(rotate_deg=rotate_deg, zoom=zoom, shift=shift, brightness=brightness,
                           contrast=contrast)
        self._shift = shift
        self.mri = mri
        self.transform = Compose([
            RandFlip(prob=0.5, spatial_axis=1),
            RandAffine(prob=0.9, rotate_range=(math.radians(rotate_deg),), scale_range=(zoom, zoom),
                       translate_range=(0, 0), padding_mode="zeros", mode="bilinear"),
            RandScaleIntensity(factors=brightness, prob=0.5),
            RandAdjustContrast(prob=0.5, gamma=contrast),
        ])
        if mri:
            self.params["mri"] = True
            # Before the usual transforms, per image: layout, tissue contrast, coil, acquisition.
            self.mri_transform = Compose([
                RandOrientation(prob=0.3),
                RandContrastInversion(prob=0.2, threshold=0.1),
                RandHistogramShift(num_control_points=(5, 10), prob=0.3),
                RandAdjustContrast(prob=0.3, gamma=(0.5, 2.0)),
                RandBiasField(degree=3, coeff_range=(-0.2, 0.2), prob=0.3),
                RandSimulateLowResolution(prob=0.25, downsample_mode="area", upsample_mode="bilinear",
                                          zoom_range=(1 / 3, 1 / 1.5)),
                RandGibbsNoise(prob=0.2, alpha=(0.3, 0.65)),
                RandSpike(prob=0.1, amplitude=(0.02, 0.06)),
                _renormalise,
            ])
            # After everything else: the export step.
            self.jpeg = RandJpeg(prob=0.3, quality=(30, 90))
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed % (2**32))
        self._gen = torch.Generator().manual_seed(seed)
        if self.mri:
            # Separate streams, so that the usual transforms draw exactly as with mri=False.
            pre, post = np.random.SeedSequence([seed % (2**32), 0x4D5249]).generate_state(2)
            self.mri_transform.set_random_state(seed=int(pre))
            self.jpeg.set_random_state(seed=int(post))

    def __call__(self, x: torch.Tensor, masks: torch.Tensor | None = None):
        """Augment a batch ``(N, C, S, S)`` in ``[0, 1]``; with ``masks`` ``(N, S, S)`` also move the masks with
        the same geometry (flip, orientation, rotation, zoom, shift; nearest neighbour) and return both."""
        if masks is not None:
            return self._with_masks(x, masks)
        set_track_meta(False)
        grey = x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
        src = x[:, :1] if grey else x
        if self.mri:
            out = torch.stack([torch.as_tensor(self.transform(self.mri_transform(img))) for img in src])
            out = out.to(x.dtype).clamp_(0, 1)
        else:
            out = torch.stack([torch.as_tensor(self.transform(img)) for img in src]).clamp_(0, 1)
        if self._shift > 0:
            out = self._translate(out)
        if self.mri:
            out = torch.stack([self.jpeg(img) for img in out]).to(x.dtype).clamp_(0, 1)
        return out.expand(-1, 3, -1, -1).contiguous() if grey else out

    def _with_masks(self, x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same draws as without masks; each geometric transform is replayed on the mask (``randomize=False``)."""
        set_track_meta(False)
        grey = x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
        src = x[:, :1] if grey else x
        geometric = (RandFlip, RandAffine, RandOrientation)
        imgs, outs = [], []
        for img, mask in zip(src, masks.to(x.dtype)[:, None], strict=True):
            steps = (list(self.mri_transform.transforms) if self.mri else []) + list(self.transform.transforms)
            for t in steps:
                if isinstance(t, geometric):
                    img = torch.as_tensor(t(img))
                    kw = {"mode": "nearest"} if isinstance(t, RandAffine) else {}
                    mask = torch.as_tensor(t(mask, randomize=False, **kw))
                else:
                    img = torch.as_tensor(t(img))
                if t is _renormalise:
                    img = img.to(x.dtype).clamp_(0, 1)
            imgs.append(img)
            outs.append(mask)
        out = torch.stack(imgs).to(x.dtype).clamp_(0, 1)
        m = torch.stack(outs).to(x.dtype)
        if self._shift > 0:
            out, m = self._translate(out, m)
        if self.mri:
            out = torch.stack([self.jpeg(img) for img in out]).to(x.dtype).clamp_(0, 1)
        out = out.expand(-1, 3, -1, -1).contiguous() if grey else out
        return out, (m[:, 0] > 0.5).to(masks.dtype)

    def _translate(self, x: torch.Tensor, masks: torch.Tensor | None = None):
        """Integer-pixel shift per image, zero padded (cheaper than a second resampling); ``masks`` alike."""
        n, _, h, w = x.shape
        out = torch.zeros_like(x)
        mout = torch.zeros_like(masks) if masks is not None else None
        m = max(1, int(round(self._shift * h)))
        shifts = torch.randint(-m, m + 1, (n, 2), generator=self._gen)
        for i, (dy, dx) in enumerate(shifts.tolist()):
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            out[i, :, yd, xd] = x[i, :, ys, xs]
            if mout is not None:
                mout[i, :, yd, xd] = masks[i, :, ys, xs]
        return out if masks is None else (out, mout)
