"""Lesion masks beside images: find the mask of an image, read it, and send it through the image's geometry.

A mask folder mirrors the image folder: ``<masks>/<class>/<name>`` or flat ``<masks>/<name>``, matched by file
name; the mask may use another image format (``1841.jpg`` -> ``1841.png``). Pixels brighter than half-scale are
lesion. Used by ``braintumor train --masks`` (tumour-map supervision) and ``braintumor explain --masks``
(localisation scores).

Example:
    >>> find_mask("data/images/glioma/1841.jpg", "data/masks")        # doctest: +SKIP
    PosixPath('data/masks/glioma/1841.png')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, UnreadableImageError
from .read import IMAGE_SUFFIXES, read_image

#: extensions tried, in order, when the mask does not share the image's file name
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


def find_mask(image_path: str | Path, masks_dir: str | Path) -> Path | None:
    """The mask of ``image_path`` in ``masks_dir`` (``<class>/<name>``, then ``<name>``; same stem, any image
    extension), or ``None``."""
    p, d = Path(str(image_path).split("#")[0]), Path(masks_dir)
    for folder in (d / p.parent.name, d):
        cand = folder / p.name
        if cand.is_file():
            return cand
        for suffix in MASK_SUFFIXES:
            cand = folder / (p.stem + suffix)
            if cand.is_file():
                return cand
    return None


def load_mask(path: str | Path) -> np.ndarray:
    """A mask image -> ``bool`` ``(H, W)`` (pixels brighter than half-scale are lesion)."""
    return read_image(path).mean(axis=2) > 127


def prepare_mask(preprocessor, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Send ``mask`` through the geometry :meth:`Preprocessor.prepare` applies to ``image`` (nearest resize).

    Raises:
        DataError: the mask's size differs from the image's.
    """
    from ..preprocess import pad_to_square

    image = np.asarray(image)
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.mean(axis=2) > 127 if mask.dtype == np.uint8 else mask.any(axis=2)
    if mask.shape != image.shape[:2]:
        raise DataError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
    top, left, bottom, right = preprocessor.crop_box(image)
    m = pad_to_square(mask[top:bottom, left:right].astype(np.uint8) * 255)
    s = preprocessor.img_size
    if m.shape[0] != s:
        m = np.asarray(Image.fromarray(m).resize((s, s), Image.NEAREST))
    return m > 127


def mask_paths(paths: Sequence[str | Path], masks_dir: str | Path) -> list[Path | None]:
    """The mask of each image (``None`` where there is none).

    Raises:
        DataError: ``masks_dir`` is not a folder, or no image has a mask in it.
    """
    d = Path(masks_dir)
    if not d.is_dir():
        raise DataError(f"{d}: the mask folder does not exist")
    found = [find_mask(p, d) for p in paths]
    if paths and not any(f is not None for f in found):
        names = ", ".join(Path(str(p)).name for p in list(paths)[:3])
        raise DataError(f"{d}: no mask matches any image (looked for <class>/<name> and <name>, any of "
                        f"{', '.join(sorted(IMAGE_SUFFIXES)[:4])}..., e.g. for {names})")
    return found


@dataclass
class PreparedMasks:
    """Training masks at the prepared-image geometry.

    Attributes:
        masks: ``uint8`` ``(N, S, S)`` in {0, 1} (zeros where ``has_mask`` is false).
        has_mask: ``bool`` ``(N,)``: this image trains the tumour map.
        problems: ``(mask file, reason)`` of masks left out (wrong size, empty for a tumour image, unreadable).
        n_masked: images with a lesion mask; ``n_negative``: images of a no-tumour class (an empty target).
    """

    masks: np.ndarray
    has_mask: np.ndarray
    problems: list[tuple[Path, str]] = field(default_factory=list)
    n_masked: int = 0
    n_negative: int = 0

    def summary(self) -> dict:
        n = len(self.has_mask)
        return {"masked": self.n_masked, "negative": self.n_negative,
                "without": int(n - self.has_mask.sum()), "problems": len(self.problems)}


def negative_classes(classes: Sequence[str]) -> list[str]:
    """The classes named like "no tumour" (``notumor``, ``no``, ``normal``...): their images' masks are empty."""
    from .discover import NEGATIVE_NAMES

    return [c for c in classes if c.lower() in NEGATIVE_NAMES]


def prepare_masks(paths: Sequence[str | Path], labels: Sequence[int], classes: Sequence[str],
                  masks_dir: str | Path, preprocessor) -> PreparedMasks:
    """Masks of ``paths`` (images as training reads them) at the geometry of ``preprocessor``.

    Images of a negative class (:func:`negative_classes`) get an empty mask without looking for a file; other
    images without a mask file train the classifier only. A mask whose size differs from its image's, an empty
    mask of a tumour image, or an unreadable mask is left out and listed in ``problems`` (never an error: the
    run goes on, and says how many).
    """
    neg = {classes.index(c) for c in negative_classes(classes)}
    s = preprocessor.img_size
    found = mask_paths([p for p, y in zip(paths, labels, strict=True) if y not in neg], masks_dir) if any(
        y not in neg for y in labels) else []
    it = iter(found)
    masks = np.zeros((len(paths), s, s), np.uint8)
    has = np.zeros(len(paths), bool)
    out = PreparedMasks(masks, has)
    for i, (p, y) in enumerate(zip(paths, labels, strict=True)):
        if y in neg:
            has[i] = True
            out.n_negative += 1
            continue
        mpath = next(it)
        if mpath is None:
            continue
        try:
            raw = read_image(p)
            mask = load_mask(mpath)
            if not mask.any():
                out.problems.append((mpath, "empty mask for an image of a tumour class"))
                continue
            masks[i] = prepare_mask(preprocessor, raw, mask)
        except DataError as exc:
            out.problems.append((mpath, str(exc)))
            continue
        except UnreadableImageError as exc:
            out.problems.append((mpath, exc.reason))
            continue
        has[i] = True
        out.n_masked += 1
    return out
