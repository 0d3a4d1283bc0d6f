"""Lesion erasure: a tumour slice with its outlined lesion replaced by the mirrored tissue of the other hemisphere.

A model trained on several collections learns which collection an image came from when each collection holds one
class (figshare: T1 contrast-enhanced tumour slices only; Br35H: mostly T2/FLAIR normal slices). An image whose
lesion has been erased is the same slice, same scanner, same sequence, same export, *without* the tumour: as a
no-tumour training image it leaves the lesion as the only difference between the classes
(``braintumor train --masks DIR --erase-lesions``; :func:`erased_copies`).

The fill: the head's left-right symmetry axis is found (the head's horizontal extent, refined by the shift that
best matches the image to its mirror outside the lesion); each pixel of the lesion, widened by a margin, takes the
value of its mirror pixel, shifted by the difference of the two sides' mean intensities in a ring around the
lesion; pixels whose mirror lies in the lesion too or outside the head take a smooth fill from the surrounding
tissue; the edge is feathered. A lesion whose mirror mostly falls on itself (a midline tumour, e.g. pituitary) or
outside the head is not erased (``None``): a smooth blob is not normal tissue.

Example:
    >>> import numpy as np
    >>> from braintumor.data.synthetic import make_phantom
    >>> img, mask = make_phantom(np.random.default_rng(1), size=96, tumour=True)
    >>> out = erase_lesion(np.dstack([img] * 3), mask)
    >>> out is None or out.shape == (96, 96, 3)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: a lesion is erased only when at least this share of its (widened) pixels has a usable mirror pixel
MIN_MIRRORED = 0.7


def grey(img: np.ndarray) -> np.ndarray:
    """``float32`` grey levels of an ``(S, S)`` or ``(S, S, C)`` image (the mean of its channels)."""
    return img.astype(np.float32) if img.ndim == 2 else img.astype(np.float32).mean(axis=2)


def _head(g: np.ndarray) -> np.ndarray:
    import torch

    from ..augment import head_mask

    return head_mask(torch.from_numpy(g[None].astype(np.float32))).numpy()


def _mirror_axis(g: np.ndarray, head: np.ndarray, keep: np.ndarray) -> float:
    """The column ``2 * axis - c`` mirrors column ``c``: the head's horizontal mid-line, refined by the shift (up to
    1/16 of the width) whose mirror image best matches ``g`` on ``keep`` (the head minus the lesion)."""
    cols = np.flatnonzero(head.any(axis=0))
    mid2 = int(cols[0] + cols[-1])  # twice the axis
    w = g.shape[1]
    best, best_err = mid2, np.inf
    c = np.arange(w)
    for d in range(-max(1, w // 16), max(1, w // 16) + 1):
        src = mid2 + d - c
        ok = (src >= 0) & (src < w)
        if ok.sum() < w // 2:
            continue
        m = keep[:, ok] & keep[:, src[ok]]
        if m.sum() < 50:
            continue
        err = float(np.mean(np.abs(g[:, ok][m] - g[:, src[ok]][m])))
        if err < best_err:
            best, best_err = mid2 + d, err
    return best / 2.0


def erase_lesion(image: np.ndarray, mask: np.ndarray, margin: int | None = None) -> np.ndarray | None:
    """``image`` (``(S, S)`` or ``(S, S, C)`` ``uint8``) with the lesion ``mask`` (``(S, S)``, nonzero = lesion)
    replaced by mirrored tissue of the other hemisphere; ``None`` when it cannot be (no lesion, a lesion on the
    mid-line or whose mirror lies outside the head). ``margin``: pixels the lesion is widened by (default
    ``S // 40``, at least 2: the edge of an outline and some oedema)."""
    from scipy import ndimage

    img = np.asarray(image)
    lesion = np.asarray(mask) > 0
    if not lesion.any():
        return None
    g = grey(img)
    s = min(g.shape)
    r = margin if margin is not None else max(2, s // 40)
    head = _head(g) | lesion
    wide = ndimage.binary_dilation(lesion, iterations=r) & head
    axis2 = int(round(2 * _mirror_axis(g, head, head & ~ndimage.binary_dilation(lesion, iterations=2 * r))))
    rows, cols = np.nonzero(wide)
    src = axis2 - cols
    inside = (src >= 0) & (src < g.shape[1])
    src_c = np.clip(src, 0, g.shape[1] - 1)
    usable = inside & head[rows, src_c] & ~wide[rows, src_c]
    if usable.mean() < MIN_MIRRORED:
        return None
    ring = ndimage.binary_dilation(wide, iterations=r) & head & ~wide
    rr, rc = np.nonzero(ring)
    rsrc = axis2 - rc
    rok = (rsrc >= 0) & (rsrc < g.shape[1])
    rok[rok] &= head[rr[rok], rsrc[rok]] & ~wide[rr[rok], rsrc[rok]]

    chans = [img] if img.ndim == 2 else [img[..., k] for k in range(img.shape[2])]
    alpha = np.clip(ndimage.gaussian_filter(wide.astype(np.float32), sigma=max(1.0, r / 2)) * 2.0, 0, 1)
    alpha = np.maximum(alpha, lesion.astype(np.float32))
    hole = np.zeros_like(wide)  # widened-lesion pixels without a usable mirror: the same for every channel
    hole[rows[~usable], cols[~usable]] = True
    if hole.any():
        known = (head & ~hole).astype(np.float32)
        sigma = max(2.0, r)
        den = np.maximum(ndimage.gaussian_filter(known, sigma)[hole], 1e-3)
    out = []
    for ch in chans:
        f = ch.astype(np.float32)
        offset = float(f[rr[rok], rc[rok]].mean() - f[rr[rok], rsrc[rok]].mean()) if rok.any() else 0.0
        fill = f.copy()
        fill[rows[usable], cols[usable]] = f[rows[usable], src_c[usable]] + offset
        if hole.any():  # normalised convolution of the known tissue around the hole
            fill[hole] = ndimage.gaussian_filter(fill * known, sigma)[hole] / den
        out.append(np.clip(alpha * fill + (1 - alpha) * f, 0, 255).round().astype(np.uint8))
    return out[0] if img.ndim == 2 else np.stack(out, axis=2)


@dataclass
class ErasedCopies:
    """Erased copies of the masked tumour images of a training set (:func:`erased_copies`).

    Attributes:
        images: ``uint8`` ``(K, S, S, C)`` images with the lesion erased.
        index: ``(K,)`` the training image each copy was made from.
        skipped: how many masked images could not be erased (mid-line lesion, mirror outside the head).
    """

    images: np.ndarray
    index: np.ndarray
    skipped: int = 0

    def summary(self) -> dict:
        return {"erased": int(len(self.index)), "not_erased": int(self.skipped)}


def erased_copies(images: np.ndarray, masks: np.ndarray, which: Sequence[int]) -> ErasedCopies:
    """:func:`erase_lesion` on ``images[i]`` with ``masks[i]`` for each ``i`` in ``which``; those that cannot be
    erased are counted in ``skipped``."""
    made, index = [], []
    for i in which:
        e = erase_lesion(images[i], masks[i])
        if e is not None:
            made.append(e)
            index.append(int(i))
    shape = (0, *images.shape[1:])
    arr = np.stack(made) if made else np.zeros(shape, images.dtype)
    return ErasedCopies(arr, np.asarray(index, np.int64), len(which) - len(index))
