"""The one preprocessing object: crop, resize, normalise. Saved into every run, reused at inference.

Training, evaluation, prediction, explanation and serving all call the same :class:`Preprocessor`, built
from the run's ``metadata.json``, so a model never sees inputs prepared differently from its training data.

Two stages:

* :meth:`Preprocessor.prepare`: any ``(H, W, 3)`` ``uint8`` image -> ``(S, S, 3)`` ``uint8`` (optional power-of-two
  reduction of large images, brain crop, greyscale, pad to square, resize). Done once per image and cached.
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

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

if TYPE_CHECKING:  # torch is imported where a tensor is made: the audit and the readers never load it
    import torch


def brain_bbox(grey: np.ndarray, threshold: int = 30, blur: float = 2.0, margin: float = 0.02
               ) -> tuple[int, int, int, int] | None:
    """Bounding box ``(top, left, bottom, right)`` of the largest bright connected region, with a margin.

    The usual "crop brain contour" recipe: blur, threshold, keep the largest component. Returns ``None`` when
    nothing is above the threshold. Components are labelled inside the bounding box of the foreground only and
    counted with ``bincount``: the same box as labelling the whole image, for less work.

    Example:
        >>> import numpy as np
        >>> from braintumor.preprocess import brain_bbox
        >>> grey = np.zeros((100, 100), np.uint8)
        >>> grey[20:60, 30:90] = 200
        >>> brain_bbox(grey, blur=0)
        (18, 28, 62, 92)
    """
    g = ndimage.gaussian_filter(grey.astype(np.float32, copy=False), blur) if blur > 0 else grey
    fg = g > threshold
    rows = np.flatnonzero(fg.any(axis=1))
    if not len(rows):
        return None
    cols = np.flatnonzero(fg.any(axis=0))
    top, left, bottom, right = int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
    lab, n = ndimage.label(fg[top:bottom, left:right])
    if n > 1:
        # Largest component (the first of equal ones, in raster order, as before); its tight box.
        k = int(np.argmax(np.bincount(lab.ravel(), minlength=n + 1)[1:])) + 1
        rs, cs = ndimage.find_objects(lab, max_label=k)[k - 1]
        top, left, bottom, right = top + rs.start, left + cs.start, top + rs.stop, left + cs.stop
    h, w = grey.shape
    my, mx = int(round(margin * h)), int(round(margin * w))
    return (max(0, top - my), max(0, left - mx), min(h, bottom + my), min(w, right + mx))


#: ``round(s / 3)`` for ``s = r + g + b`` of ``uint8`` channels: exactly ``np.round(img.astype(np.float32)
#: .mean(axis=2))`` (a third is never a half), as a lookup table.
_GREY_U8 = ((np.arange(3 * 255 + 1) + 1) // 3).astype(np.uint8)


def _channel_sum(img: np.ndarray) -> np.ndarray:
    """``r + g + b`` of an ``(H, W, 3)`` ``uint8`` image as ``uint16`` (exact, three cheap passes)."""
    s = img[..., 0].astype(np.uint16)
    s += img[..., 1]
    s += img[..., 2]
    return s


def _grey_f32(channel_sum: np.ndarray) -> np.ndarray:
    """``float32(mean of the channels)``, bit-identical to ``img.mean(axis=2).astype(np.float32)``."""
    g = channel_sum.astype(np.float32)
    g /= np.float32(3)
    return g


def _detect_step(h: int, w: int, side: int) -> int:
    """Subsampling step for crop detection: 1 (full resolution) unless the image exceeds ``1.5 * side``."""
    if side <= 0 or max(h, w) <= 1.5 * side:
        return 1
    return int(round(max(h, w) / side))


def reduction_factor(h: int, w: int, side: int) -> int:
    """The largest power of two ``f`` with ``ceil(h / f) >= side`` and ``ceil(w / f) >= side``
    (``1`` for ``side <= 0``).

    Reducing by ``f`` keeps both sides at least ``side``, and the rule is idempotent: a reduced image is never
    reduced again, so an image decoded at reduced size (JPEG DCT scaling, see
    :func:`braintumor.data.read.read_image`'s ``reduce_to``) and the same image reduced after decoding end at
    the same size.

    Example:
        >>> from braintumor.preprocess import reduction_factor
        >>> reduction_factor(512, 512, 224), reduction_factor(446, 600, 224), reduction_factor(3000, 3000, 224)
        (2, 1, 8)
    """
    if side <= 0:
        return 1
    m, f = min(h, w), 1
    while -(-m // (2 * f)) >= side:
        f *= 2
    return f


def box_reduce(img: np.ndarray, f: int) -> np.ndarray:
    """``img`` reduced ``f`` times along both axes by averaging ``f x f`` blocks (partial blocks at the right and
    bottom edges average the pixels they have): PIL's ``Image.reduce`` for ``uint8`` images, the same in numpy
    for any other dtype. The output has ``ceil(h / f)`` rows and ``ceil(w / f)`` columns."""
    if f <= 1:
        return img
    if img.dtype == np.uint8 and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).reduce(f))
    h, w = img.shape[:2]
    hh, ww = -(-h // f), -(-w // f)
    pad = ((0, hh * f - h), (0, ww * f - w)) + ((0, 0),) * (img.ndim - 2)
    total = np.pad(img.astype(np.float64), pad).reshape(hh, f, ww, f, *img.shape[2:]).sum(axis=(1, 3))
    count = np.pad(np.ones((h, w)), pad[:2]).reshape(hh, f, ww, f).sum(axis=(1, 3))
    out = total / count.reshape(hh, ww, *([1] * (img.ndim - 2)))
    if np.issubdtype(img.dtype, np.integer):
        return np.round(out).astype(img.dtype)
    return out.astype(img.dtype)


#: Intensity standardisation choices (:attr:`Preprocessor.intensity`).
INTENSITY_MODES = ("none", "percentile")
#: ``intensity="percentile"``: these percentiles of the head's pixels (grey level above
#: :data:`FOREGROUND_LEVEL`) map to 0 and 255.
INTENSITY_PERCENTILES = (0.5, 99.5)
FOREGROUND_LEVEL = 10


def standardise_intensity(img: np.ndarray) -> np.ndarray:
    """Stretch a ``uint8`` image so that the head's 0.5th and 99.5th intensity percentiles become 0 and 255.

    MRI intensities have no absolute unit: the same tissue is grey in one scan and bright in the next, depending
    on scanner, sequence and export. Mapping each image's own intensity range (of the head: pixels above a
    low background level) onto the full ``uint8`` range removes that difference, the way MRI pipelines
    standardise intensities before a model sees them (MONAI's ``ScaleIntensityRangePercentiles`` does the same on
    float arrays; here the percentiles ignore the background and the map is a lookup table on the cached
    ``uint8`` image). The background stays black. An image with almost no
    foreground, or a flat one, is returned unchanged. Colour images are mapped with the percentiles of their
    channel mean, the same map on every channel.

    Example:
        >>> import numpy as np
        >>> from braintumor.preprocess import standardise_intensity
        >>> img = np.zeros((64, 64), np.uint8)
        >>> img[16:48, 16:48] = np.linspace(40, 120, 32).astype(np.uint8)   # a dim, low-contrast head
        >>> out = standardise_intensity(img)
        >>> int(out[0, 0]), int(out[16:48, 16:48].min()), int(out[16:48, 16:48].max())
        (0, 0, 255)
    """
    grey = img if img.ndim == 2 else _GREY_U8[_channel_sum(img)]
    fg = grey[grey > FOREGROUND_LEVEL]
    if fg.size < 64:
        return img
    lo, hi = np.percentile(fg, INTENSITY_PERCENTILES)
    if hi - lo < 1:
        return img
    levels = (np.arange(256, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    lut = np.clip(np.round(levels), 0, 255).astype(np.uint8)
    return lut[img]


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
        crop_detect_side: find the crop box on a copy subsampled to about this side (``0``: at full resolution).
            The box is the same brain to within a few pixels and costs a fraction of the work on large scans (the
            blur of a 1920-px image alone takes longer than the network). New runs use 256; runs saved without
            the field read as ``0``, so they prepare exactly the pixels they were trained on.
        intensity: ``"percentile"`` stretches each prepared image's head intensities to the full range
            (:func:`standardise_intensity`); ``"none"`` (the default, ``TrainConfig.intensity``) keeps them. Runs
            saved without the field read as ``"none"``.
        reduce_first: first reduce an image at least twice the input size by the largest power of two that keeps
            both its sides at least ``img_size`` (:func:`reduction_factor`, block averages: :func:`box_reduce`);
            :func:`~braintumor.data.cache.load_images` has JPEGs decoded at that size directly (DCT scaling, within
            a grey level or two of the block averages), which is most of what makes large JPEGs cheap to read. The
            crop box (:meth:`crop_box`) is still given in the input's pixels. New runs set it
            (``TrainConfig.reduce_first``); runs saved without the field read as ``False`` and prepare exactly the
            pixels they were trained on.

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
    crop_detect_side: int = 0
    intensity: str = "none"
    reduce_first: bool = False

    def __post_init__(self):
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {', '.join(INTENSITY_MODES)}, got '{self.intensity}'")
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
        return self.prepare_with_box(img, crop_only=True)[1]

    @property
    def decode_side(self) -> int:
        """The ``reduce_to`` for :func:`~braintumor.data.read.read_image`: the side a JPEG may be decoded down to
        so that it reads as :meth:`prepare` would first reduce it (``img_size`` with :attr:`reduce_first`; ``0``:
        decode whole)."""
        return self.img_size if self.reduce_first else 0

    def reduction(self, img: np.ndarray) -> int:
        """The power-of-two factor :meth:`prepare` first reduces ``img`` by (``1`` unless :attr:`reduce_first`)."""
        return reduction_factor(img.shape[0], img.shape[1], self.img_size) if self.reduce_first else 1

    def _crop_box(self, img: np.ndarray, channel_sum: np.ndarray | None) -> tuple[int, int, int, int]:
        h, w = img.shape[:2]
        if self.crop_brain:
            f = _detect_step(h, w, self.crop_detect_side)
            if channel_sum is not None:
                grey = _grey_f32(channel_sum[::f, ::f] if f > 1 else channel_sum)
            else:
                grey = img.mean(axis=2) if img.ndim == 3 else img
                grey = grey[::f, ::f] if f > 1 else grey
            if f > 1:
                box = brain_bbox(grey, self.crop_threshold, blur=2.0 / f)
                if box is not None:  # back to full-resolution pixels (the margin covers the step)
                    box = (box[0] * f, box[1] * f, min(h, box[2] * f), min(w, box[3] * f))
            else:
                box = brain_bbox(grey, self.crop_threshold)
            if box is not None and (box[2] - box[0]) >= 8 and (box[3] - box[1]) >= 8:
                return box
        return (0, 0, h, w)

    def prepare(self, img: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` ``uint8`` -> ``(S, S, 3)`` ``uint8``: (reduce,) crop, greyscale, pad to square, resize,
        intensity.

        A greyscale ``(H, W)`` array is accepted too (as if its three channels were equal). The greyscale path
        works on one channel (integer channel sum, one-channel resize): bit-identical to averaging and resizing
        three channels, three times less work.
        """
        return self.prepare_with_box(img)[0]

    def prepare_with_box(self, img: np.ndarray, *, crop_only: bool = False
                         ) -> tuple[np.ndarray | None, tuple[int, int, int, int]]:
        """:meth:`prepare` and :meth:`crop_box` with one crop detection (``crop_only``: the box alone)."""
        h, w = img.shape[:2]
        f = self.reduction(img)
        if f > 1:
            img = box_reduce(img, f)
        fast = img.dtype == np.uint8 and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3))
        s = _channel_sum(img) if fast and img.ndim == 3 and (self.grayscale or self.crop_brain) else None
        top, left, bottom, right = box = self._crop_box(img, s)
        full = (0, 0, h, w) if f > 1 and box == (0, 0) + img.shape[:2] else \
            (top * f, left * f, min(h, bottom * f), min(w, right * f))
        if crop_only:
            return None, full
        if not fast:
            return self._prepare_generic(img[top:bottom, left:right]), full
        if not self.grayscale:
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            return self._standardise(self._square_resize(img[top:bottom, left:right])), full
        grey = img[top:bottom, left:right] if s is None else _GREY_U8[s[top:bottom, left:right]]
        grey = self._standardise(self._square_resize(grey))
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)), full

    def _standardise(self, img: np.ndarray) -> np.ndarray:
        return standardise_intensity(img) if self.intensity == "percentile" else img

    def _square_resize(self, img: np.ndarray) -> np.ndarray:
        img = pad_to_square(img)
        if img.shape[0] != self.img_size:
            img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((self.img_size, self.img_size),
                                                                               Image.BILINEAR))
        return np.ascontiguousarray(img)

    def _prepare_generic(self, img: np.ndarray) -> np.ndarray:
        """Any other input (not ``uint8``, or four channels), already cropped: the straightforward recipe."""
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if self.grayscale:
            g = np.round(img.astype(np.float32).mean(axis=2)).astype(np.uint8)
            img = np.repeat(g[..., None], 3, axis=2)
        img = self._square_resize(img)
        return self._standardise(img) if img.dtype == np.uint8 else img

    def normalise(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``uint8`` ``(N, S, S, 3)`` -> ``float32`` ``(N, 3, S, S)`` normalised tensor."""
        import torch

        if not isinstance(batch, torch.Tensor):
            batch = np.asarray(batch)
            if batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[3] == len(self.mean):
                # One conversion straight into NCHW float, then the tensor recipe below in place: bit-identical
                # to it, and about twice as fast as a per-value table lookup (whose uint8 indices numpy widens
                # to int64 copies first).
                n, h, w, c = batch.shape
                out = torch.empty((n, c, h, w), dtype=torch.float32)
                if batch.flags.writeable:
                    src = torch.from_numpy(batch)
                else:  # only read: torch's warning about a read-only array does not apply
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        src = torch.from_numpy(batch)
                out.copy_(src.permute(0, 3, 1, 2))
                mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
                std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
                return out.div_(255.0).sub_(mean).div_(std)
            if not batch.flags.writeable:
                batch = batch.copy()
        x = torch.as_tensor(batch)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return self.normalise_float(x)

    def normalise_array(self, batch: np.ndarray) -> np.ndarray:
        """:meth:`normalise` in NumPy: ``uint8`` ``(N, S, S, 3)`` -> C-contiguous ``float32`` ``(N, 3, S, S)``, the
        same values bit for bit, without importing torch (the onnxruntime path)."""
        batch = np.asarray(batch)
        n, h, w, c = batch.shape
        out = np.empty((n, c, h, w), dtype=np.float32)
        out[...] = batch.transpose(0, 3, 1, 2)
        out /= np.float32(255.0)
        out -= np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        out /= np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return out

    def normalise_float(self, x: torch.Tensor) -> torch.Tensor:
        """``float`` ``(N, 3, S, S)`` in ``[0, 1]`` -> normalised (used after augmentation)."""
        import torch

        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def transform(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Raw images -> model-ready tensor (prepare + normalise)."""
        return self.normalise(np.stack([self.prepare(im) for im in images]))
