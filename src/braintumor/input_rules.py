"""Stage 1 of the input check: cheap statistics of a decoded image and the rules every brain-MRI slice passes.

No model is involved: a photograph, a document, a colour capture, a blank or a noise image fails one of the rules
in microseconds (see :mod:`braintumor.ood` for the whole check). This module depends on nothing else of the
package but its errors, so that readers of images (:mod:`braintumor.data.cache`) and of run files
(:mod:`braintumor.schema`) can use it.

Example:
    >>> import numpy as np
    >>> from braintumor.input_rules import InputRules, image_stats
    >>> stats = image_stats(np.full((64, 640), 90, np.uint8))    # a flat grey strip
    >>> stats.width, stats.contrast, InputRules().reasons(stats)
    (640, 0.0, ['aspect ratio 10.0:1 (a slice is roughly square)', 'no contrast (a blank image)'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import RunError


@dataclass(frozen=True)
class ImageStats:
    """Cheap statistics of a decoded image (computed on a copy subsampled to about 256 px).

    Attributes:
        height, width: the image's size in pixels.
        colour: mean absolute difference between the colour channels (0 for a greyscale image; JPEG chroma noise
            of a grey scan stays below ~2).
        contrast: 1st to 99th percentile range of the grey levels (``0-255`` scale).
        dark_border: share of the frame's outer 5% ring that is dark (below 20% of the 99th percentile).
        foreground: share of the image above the same level.
    """

    height: int
    width: int
    colour: float
    contrast: float
    dark_border: float
    foreground: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def image_stats(img: np.ndarray, side: int = 256) -> ImageStats:
    """:class:`ImageStats` of an ``(H, W)`` or ``(H, W, C)`` image (any dtype; scaled to ``0-255`` first).

    Works on a copy subsampled to about ``side`` pixels, in integers (a histogram gives the percentiles): well
    under a millisecond for a 512-pixel slice.
    """
    a = np.asarray(img)
    h, w = a.shape[:2]
    step = max(1, int(round(max(h, w) / side)))
    a = a[::step, ::step]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        f = a.astype(np.float32)
        lo, hi = float(np.min(f)), float(np.max(f))
        if hi > 255 or lo < 0:
            f = (f - lo) * np.float32(255.0 / max(hi - lo, 1e-6))
        a = np.clip(np.round(f), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] >= 3:
        r, g, b = (a[..., i].astype(np.int16) for i in range(3))
        colour = float((np.abs(r - g) + np.abs(g - b) + np.abs(r - b)).mean() / 3.0)
        grey = ((r + g + b) // 3).astype(np.uint8)
    else:
        colour = 0.0
        grey = a if a.ndim == 2 else a[..., 0]
    cdf = np.cumsum(np.bincount(grey.ravel(), minlength=256))
    n = int(cdf[-1])
    p1 = int(np.searchsorted(cdf, 0.01 * n))
    p99 = int(np.searchsorted(cdf, 0.99 * n))
    level = 0.2 * p99
    dark = grey <= level
    gh, gw = grey.shape
    ry, rx = max(1, int(round(0.05 * gh))), max(1, int(round(0.05 * gw)))
    ring = np.ones_like(dark)
    ring[ry:gh - ry, rx:gw - rx] = False
    return ImageStats(int(h), int(w), colour, float(p99 - p1), float(dark[ring].mean()), float(1.0 - dark.mean()))


@dataclass
class InputRules:
    """Rule-based checks on a decoded image, before any model: what a brain-MRI slice always is.

    Args:
        max_colour: largest :attr:`ImageStats.colour` (mean channel difference, ``0-255``).
        max_aspect: largest ratio of the longer to the shorter side.
        min_side: smallest side in pixels.
        min_contrast: smallest 1st-99th percentile grey range.
        min_dark_border: smallest share of dark pixels on the frame's border (the background around the head).
        min_foreground, max_foreground: share of the frame above the background level.

    Example:
        >>> import numpy as np
        >>> from braintumor.ood import InputRules, image_stats
        >>> head = np.zeros((256, 256), np.uint8)
        >>> yy, xx = np.mgrid[:256, :256]
        >>> head[(yy - 128) ** 2 / 100 ** 2 + (xx - 128) ** 2 / 80 ** 2 < 1] = 120
        >>> head[100:140, 110:150] = 220
        >>> InputRules().reasons(image_stats(head))
        []
        >>> InputRules().reasons(image_stats(np.full((256, 256), 128, np.uint8)))
        ['no contrast (a blank image)']
    """

    max_colour: float = 12.0
    max_aspect: float = 2.5
    min_side: int = 32
    min_contrast: float = 30.0
    min_dark_border: float = 0.15
    min_foreground: float = 0.05
    max_foreground: float = 0.97

    def reasons(self, s: ImageStats) -> list[str]:
        """Why ``s`` is not a brain-MRI slice (empty when every rule passes)."""
        out = []
        if s.colour > self.max_colour:
            out.append("colour image (brain MRI is greyscale)")
        if max(s.height, s.width) > self.max_aspect * max(1, min(s.height, s.width)):
            out.append(f"aspect ratio {max(s.height, s.width) / max(1, min(s.height, s.width)):.1f}:1 "
                       f"(a slice is roughly square)")
        if min(s.height, s.width) < self.min_side:
            out.append(f"too small ({s.width}x{s.height} px)")
        if s.contrast < self.min_contrast:
            out.append("no contrast (a blank image)")
        elif s.dark_border < self.min_dark_border:
            out.append("no dark background around the subject")
        elif not self.min_foreground <= s.foreground <= self.max_foreground:
            out.append("no head-sized foreground")
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> InputRules:
        d = d or {}
        kw = {}
        for f in fields(cls):
            if f.name in d:
                try:
                    kw[f.name] = type(f.default)(d[f.name])
                except (TypeError, ValueError):
                    raise RunError(f"input_check.rules.{f.name} is not a number: {d[f.name]!r}") from None
        return cls(**kw)
