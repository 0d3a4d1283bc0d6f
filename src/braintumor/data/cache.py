"""Decode, crop and resize each image once per run, keeping ``uint8`` arrays in memory.

Unreadable files are reported once (file + reason) and skipped, or fatal with ``strict=True``. Items may be paths,
slice references (``vol.nii.gz#12``), :class:`~braintumor.data.discover.ImageRecord` objects or ``(path, frame)``.

Example:
    >>> from braintumor.data.cache import load_images
    >>> from braintumor.preprocess import Preprocessor
    >>> batch = load_images(["a.png", "b.png"], Preprocessor(img_size=64))   # doctest: +SKIP
    >>> batch.images.shape, batch.skipped                                     # doctest: +SKIP
    ((2, 64, 64, 3), [])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UnreadableImageError
from ..preprocess import Preprocessor
from ..workers import available_cpus, imap_files
from .read import frame_ref, read_image, split_ref


@dataclass
class LoadedImages:
    """``images[i]`` is the prepared image of ``paths[kept[i]]``; ``skipped`` lists ``(path, reason)``; ``stats[i]``
    the :class:`~braintumor.ood.ImageStats` of the decoded image (with ``stats=True``); ``originals[i]`` the decoded
    image itself (with ``originals=True``)."""

    images: np.ndarray
    kept: list[int]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    stats: list | None = None
    originals: list | None = None


def _as_ref(item) -> Path:
    """A path, a slice reference, an ``ImageRecord`` or ``(path, frame)`` -> the reference to read."""
    if hasattr(item, "ref"):
        return Path(item.ref)
    if isinstance(item, tuple):
        path, frame = item
        return frame_ref(path, frame)
    return Path(item)


def _load_one(path: Path, pre: Preprocessor, stats: bool = False, original: bool = False):
    """``(prepared, stats or None, decoded image or None)``, or the :class:`UnreadableImageError`."""
    try:
        # (H, W) for grey sources: same prepared pixels and stats. A JPEG is decoded at the size the preprocessor
        # reduces it to first (when it does): the same size, within a grey level or two, for a fraction of the work.
        # Originals are kept whole (layercam-tta prepares them again at a larger side).
        img = read_image(path, keep_grey=True, reduce_to=0 if original else pre.decode_side)
        st = None
        if stats:
            from ..input_rules import image_stats

            st = image_stats(img)
        return pre.prepare(img), st, img if original else None
    except UnreadableImageError as exc:
        if exc.path == path:
            return exc
        # Name what was asked for (the slice reference), and the member file when a series slice failed.
        src = split_ref(path)[0]
        return UnreadableImageError(path, exc.reason if exc.path == src else f"{exc.path.name}: {exc.reason}")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "this file is unreadable"
        return UnreadableImageError(path, f"{type(exc).__name__}: {exc}")


def load_images(paths: Sequence, pre: Preprocessor, *, strict: bool = False,
                on_skip: Callable[[Path, str], None] | None = None,
                progress: Callable[[], None] | None = None, workers: int | None = None,
                stats: bool = False, originals: bool = False) -> LoadedImages:
    """Read and prepare every file (in threads where that pays: :func:`braintumor.workers.imap_files`).

    ``stats=True`` also keeps each decoded image's :class:`~braintumor.ood.ImageStats` (the input check's rules);
    ``originals=True`` keeps the decoded images themselves (what ``layercam-tta`` prepares again).

    Raises:
        UnreadableImageError: with ``strict=True``, at the first unreadable file.
    """
    paths = [_as_ref(p) for p in paths]
    out = np.empty((len(paths), pre.img_size, pre.img_size, 3), np.uint8)
    kept: list[int] = []
    skipped: list[tuple[Path, str]] = []
    found: list = []
    decoded: list = []
    for i, res in enumerate(imap_files(lambda p: _load_one(p, pre, stats, originals), paths,
                                       min(8, workers or available_cpus()))):
        if progress is not None:
            progress()
        if isinstance(res, UnreadableImageError):
            if strict:
                raise res
            skipped.append((res.path, res.reason))
            if on_skip is not None:
                on_skip(res.path, res.reason)
            continue
        prepared, st, img = res
        if stats:
            found.append(st)
        if originals:
            decoded.append(img)
        out[len(kept)] = prepared
        kept.append(i)
    return LoadedImages(out[: len(kept)], kept, skipped, found if stats else None,
                        decoded if originals else None)
