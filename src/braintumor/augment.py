"""Training-time augmentation with MONAI transforms: flip, small rotation, zoom, shift, intensity.

Applied per image on ``[0, 1]`` float tensors before normalisation. For greyscale inputs (all channels equal)
only one channel is transformed and then repeated, which is three times cheaper.

Example:
    >>> import torch
    >>> from braintumor.augment import Augmenter
    >>> aug = Augmenter(seed=0)
    >>> aug(torch.rand(4, 3, 64, 64)).shape
    torch.Size([4, 3, 64, 64])
"""

from __future__ import annotations

import math

import torch
from monai.data import set_track_meta
from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandFlip, RandScaleIntensity


class Augmenter:
    """Random flip (left-right), rotation (+/- ``rotate_deg``), zoom, shift, brightness and contrast."""

    def __init__(self, seed: int = 0, rotate_deg: float = 10.0, zoom: float = 0.1, shift: float = 0.025,
                 brightness: float = 0.1, contrast: tuple[float, float] = (0.85, 1.15)):
        self.params = dict(rotate_deg=rotate_deg, zoom=zoom, shift=shift, brightness=brightness,
                           contrast=contrast)
        self._shift = shift
        self.transform = Compose([
            RandFlip(prob=0.5, spatial_axis=1),
            RandAffine(prob=0.9, rotate_range=(math.radians(rotate_deg),), scale_range=(zoom, zoom),
                       translate_range=(0, 0), padding_mode="zeros", mode="bilinear"),
            RandScaleIntensity(factors=brightness, prob=0.5),
            RandAdjustContrast(prob=0.5, gamma=contrast),
        ])
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed % (2**32))
        self._gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        set_track_meta(False)
        grey = x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
        src = x[:, :1] if grey else x
        out = torch.stack([torch.as_tensor(self.transform(img)) for img in src]).clamp_(0, 1)
        if self._shift > 0:
            out = self._translate(out)
        return out.expand(-1, 3, -1, -1).contiguous() if grey else out

    def _translate(self, x: torch.Tensor) -> torch.Tensor:
        """Integer-pixel shift per image, zero padded (cheaper than a second resampling)."""
        n, _, h, w = x.shape
        out = torch.zeros_like(x)
        m = max(1, int(round(self._shift * h)))
        shifts = torch.randint(-m, m + 1, (n, 2), generator=self._gen)
        for i, (dy, dx) in enumerate(shifts.tolist()):
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            out[i, :, yd, xd] = x[i, :, ys, xs]
        return out
