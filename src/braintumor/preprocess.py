"""The one preprocessing object: crop, resize, normalise. Saved into every run, reused at inference.

Training, evaluation, prediction, explanation and serving all call the same :class:`Preprocessor`, built
from the run's ``metadata.json``, so a model never sees inputs prepared differently from its training data.

Two stages:

* :meth:`Preprocessor.prepare`: any ``(H, W, 3)`` ``uint8`` image -> ``(S, S, 3)`` ``uint8`` (optional brain crop,
  greyscale, pad to square, resize). Done once per image and cached.
* :meth:`Preprocessor.normalise`: a ``uint8`` batch ``(N, S, S, 3)`` -> ``float32`` tensor ``(N, 3, S, S)`` with the
  backbone's mean/std.

Example:
    >>> import numpy as np
    >>> from braintumor.preprocess import Preprocessor
    >>> pre = Preprocessor(img_size=64)
    >>> x = pre.transform([np.zeros((100, 80, 3), np.uint8)])
    >>> tuple(x.shape)
    (1, 3, 64, 64)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy import ndimage


def brain_bbox(grey: np.ndarray, threshold: int = 30, blur: float = 2.0, margin: float = 0.02
               ) -> tuple[int, int, int, int] | None:
    """Bounding box ``(top, left, bottom, right)`` of the largest bright connected region, with a margin.

    The usual "crop brain contour" recipe: blur, threshold, keep the largest component. Returns ``None`` when
    nothing is above the threshold.
    """
    g = ndimage.gaussian_filter(grey.astype(np.float32), blur) if blur > 0 else grey
    fg = g > threshold
    if not fg.any():
        return None
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum_labels(fg, lab, index=np.arange(1, n + 1))
        fg = lab == (int(np.argmax(sizes)) + 1)
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    h, w = grey.shape
    my, mx = int(round(margin * h)), int(round(margin * w))
    return (max(0, rows[0] - my), max(0, cols[0] - mx), min(h, rows[-1] + 1 + my), min(w, cols[-1] + 1 + mx))


def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Centre ``img`` on a black square canvas (keeps the aspect ratio before resizing)."""
    h, w = img.shape[:2]
    s = max(h, w)
    if h == w:
        return img
    out = np.zeros((s, s) + img.shape[2:], img.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[top:top + h, left:left + w] = img
    return out


@dataclass
class Preprocessor:
    """Crop, resize and normalise images exactly as the model was trained.

    Args:
        img_size: side of the square model input.
        crop_brain: crop to the largest bright region (skull/brain) before resizing.
        grayscale: average colour channels (MRI is greyscale; removes colour-vs-grey source confounding).
        mean, std: per-channel normalisation on ``[0, 1]`` pixel values (the backbone's convention).
        crop_threshold: ``uint8`` threshold of the crop's foreground mask.

    Example:
        >>> import numpy as np
        >>> from braintumor import Preprocessor
        >>> pre = Preprocessor(img_size=64)
        >>> x = pre.prepare(np.zeros((100, 120, 3), np.uint8))
        >>> x.shape, pre.normalise(x[None]).shape
        ((64, 64, 3), torch.Size([1, 3, 64, 64]))
    """

    img_size: int = 224
    crop_brain: bool = True
    grayscale: bool = True
    mean: Sequence[float] = field(default=(0.5, 0.5, 0.5))
    std: Sequence[float] = field(default=(0.5, 0.5, 0.5))
    crop_threshold: int = 30

    def __post_init__(self):
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if self.img_size < 16:
            raise ValueError(f"img_size must be >= 16, got {self.img_size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def crop_box(self, img: np.ndarray) -> tuple[int, int, int, int]:
        """The crop :meth:`prepare` applies, in the input's pixel coordinates."""
        h, w = img.shape[:2]
        if self.crop_brain:
            box = brain_bbox(img.mean(axis=2) if img.ndim == 3 else img, self.crop_threshold)
            if box is not None and (box[2] - box[0]) >= 8 and (box[3] - box[1]) >= 8:
                return box
        return (0, 0, h, w)

    def prepare(self, img: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` ``uint8`` -> ``(S, S, 3)`` ``uint8``: crop, greyscale, pad to square, resize."""
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        top, left, bottom, right = self.crop_box(img)
        img = img[top:bottom, left:right]
        if self.grayscale:
            g = np.round(img.astype(np.float32).mean(axis=2)).astype(np.uint8)
            img = np.repeat(g[..., None], 3, axis=2)
        img = pad_to_square(img)
        if img.shape[0] != self.img_size:
            img = np.asarray(Image.fromarray(img).resize((self.img_size, self.img_size), Image.BILINEAR))
        return np.ascontiguousarray(img)

    def normalise(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8`` ``(N, S, S, 3)`` -> ``float32`` ``(N, 3, S, S)`` normalised tensor."""
        if not isinstance(batch, torch.Tensor):
            batch = np.asarray(batch)
            if not batch.flags.writeable:
                batch = batch.copy()
        x = torch.as_tensor(batch)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return self.normalise_float(x)

    def normalise_float(self, x: torch.Tensor) -> torch.Tensor:
        """``float`` ``(N, 3, S, S)`` in ``[0, 1]`` -> normalised (used after augmentation)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def transform(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Raw images -> model-ready tensor (prepare + normalise)."""
        return self.normalise(np.stack([self.prepare(im) for im in images]))
