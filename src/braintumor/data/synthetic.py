"""Synthetic brain-MRI phantoms with a known lesion mask, for tests, demos and explanation metrics.

A phantom is a head-like axial slice: a bright skull ring, textured brain tissue, dark ventricles and noise,
with random shape, contrast and position. Tumour phantoms add a lesion of random size, position, shape and
contrast; its mask is returned (and written by :func:`write_phantoms`).

Example:
    >>> import numpy as np
    >>> from braintumor.data.synthetic import make_phantom
    >>> img, mask = make_phantom(np.random.default_rng(0), size=64, tumour=True)
    >>> img.shape, img.dtype, bool(mask.any())
    ((64, 64), dtype('uint8'), True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

TUMOUR_CLASS = "yes"
NORMAL_CLASS = "no"
MASK_DIR = "_masks"


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return n / (n.std() + 1e-8)


def _ellipse_radius(yy, xx, cy, cx, ay, ax, theta):
    c, s = np.cos(theta), np.sin(theta)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / ax
    v = (-dx * s + dy * c) / ay
    return np.sqrt(u * u + v * v), np.arctan2(v, u)


def make_phantom(rng: np.random.Generator, size: int = 128, tumour: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """One greyscale phantom ``(size, size)`` ``uint8`` and its lesion mask (``None`` without a tumour)."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = s / 2 + rng.uniform(-0.06, 0.06) * s
    cx = s / 2 + rng.uniform(-0.06, 0.06) * s
    ay = rng.uniform(0.36, 0.44) * s
    ax = rng.uniform(0.30, 0.38) * s
    theta = rng.uniform(-0.3, 0.3)
    r, ang = _ellipse_radius(yy, xx, cy, cx, ay, ax, theta)
    # A slightly irregular outline.
    r = r * (1 + 0.03 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.02 * np.sin(5 * ang + rng.uniform(0, 6.3)))

    img = np.zeros((size, size), np.float32)
    brain = r < 0.92
    skull = (r >= 0.95) & (r < 1.05)
    tissue = rng.uniform(90, 140)
    texture = 14 * _smooth_noise(rng, size, max(1.0, s / 40)) + 8 * _smooth_noise(rng, size, max(1.0, s / 12))
    # Cortex brighter than white matter near the edge, like a T1 slice.
    img[brain] = (tissue + texture + 25 * np.clip((r - 0.6) / 0.32, 0, 1))[brain]
    img[skull] = rng.uniform(190, 250)
    # Ventricles: two dark, roughly symmetric blobs around the midline.
    for side in (-1, 1):
        vr, _ = _ellipse_radius(yy, xx, cy - rng.uniform(0.0, 0.08) * ay,
                                cx + side * rng.uniform(0.10, 0.16) * ax,
                                rng.uniform(0.16, 0.26) * ay, rng.uniform(0.05, 0.09) * ax,
                                theta + side * rng.uniform(0.1, 0.4))
        img[vr < 1] = rng.uniform(25, 50)

    mask = None
    if tumour:
        # Somewhere inside the brain, away from the skull.
        for _ in range(100):
            rr, aa = rng.uniform(0.0, 0.6), rng.uniform(0, 2 * np.pi)
            ly = cy + rr * ay * np.sin(aa)
            lx = cx + rr * ax * np.cos(aa)
            if brain[int(np.clip(ly, 0, size - 1)), int(np.clip(lx, 0, size - 1))]:
                break
        rad = rng.uniform(0.07, 0.15) * s
        lr, la = _ellipse_radius(yy, xx, ly, lx, rad * rng.uniform(0.7, 1.2), rad * rng.uniform(0.7, 1.2),
                                 rng.uniform(0, np.pi))
        lr = lr * (1 + 0.15 * np.sin(3 * la + rng.uniform(0, 6.3)) + 0.1 * np.sin(2 * la + rng.uniform(0, 6.3)))
        mask = (lr < 1.0) & brain
        contrast = rng.uniform(55, 100) * (1 if rng.random() < 0.75 else -1)
        profile = np.clip(1.15 - lr, 0, 1) ** 0.5  # soft edge, solid core
        lesion = contrast * profile + 10 * _smooth_noise(rng, size, max(1.0, s / 60)) * (lr < 1)
        img = np.where(mask, img + lesion, img)
        # A darker oedema rim for bright lesions.
        if contrast > 0:
            rim = (lr >= 1.0) & (lr < 1.3) & brain
            img[rim] -= rng.uniform(10, 25)

    img = ndimage.gaussian_filter(img, rng.uniform(0.4, 0.9))
    img += rng.uniform(2, 7) * rng.standard_normal(img.shape)
    img *= rng.uniform(0.85, 1.15)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_phantoms(out: str | Path, n: int = 200, size: int = 128, seed: int = 0,
                   tumour_fraction: float = 0.5, progress=None, normal_gain: float = 1.0) -> dict[str, int]:
    """Write ``n`` phantoms as PNG into ``out/yes`` and ``out/no``, and tumour masks into ``out/_masks/yes``.

    Returns the number of images per class. ``progress`` is an optional callable called once per image.
    ``normal_gain`` != 1 plants a *source cue*: the no-tumour images' intensities are multiplied by it, so that
    brightness alone tells the classes apart in this folder (like a public set whose normal scans come from
    another scanner). Tests use it to check that cross-source evaluation exposes such a shortcut.

    Example:
        >>> from braintumor import write_phantoms
        >>> write_phantoms("data/phantoms", n=10, size=64, seed=0)   # doctest: +SKIP
        {'no': 5, 'yes': 5}
    """
    from PIL import Image

    out = Path(out)
    rng = np.random.default_rng(seed)
    n_tumour = int(round(n * tumour_fraction))
    labels = np.array([1] * n_tumour + [0] * (n - n_tumour))
    rng.shuffle(labels)
    for d in (out / TUMOUR_CLASS, out / NORMAL_CLASS, out / MASK_DIR / TUMOUR_CLASS):
        d.mkdir(parents=True, exist_ok=True)
    for i, lab in enumerate(labels):
        img, mask = make_phantom(rng, size, bool(lab))
        if not lab and normal_gain != 1.0:
            img = np.clip(img.astype(np.float32) * normal_gain, 0, 255).astype(np.uint8)
        name = f"phantom_{i:05d}.png"
        cls = TUMOUR_CLASS if lab else NORMAL_CLASS
        Image.fromarray(img).save(out / cls / name)
        if mask is not None:
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / MASK_DIR / TUMOUR_CLASS / name)
        if progress is not None:
            progress()
    return {NORMAL_CLASS: int((labels == 0).sum()), TUMOUR_CLASS: int((labels == 1).sum())}


def mask_path(image_path: str | Path) -> Path:
    """Where :func:`write_phantoms` put the mask of ``image_path`` (``<root>/_masks/<class>/<name>``)."""
    p = Path(image_path)
    return p.parent.parent / MASK_DIR / p.parent.name / p.name
