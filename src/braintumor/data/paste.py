"""Lesion pasting: an outlined lesion carried from a tumour slice into a normal slice of another collection.

The counterpart of :mod:`braintumor.data.erase`. When one collection holds most of the normal slices (Br35H's
T2/FLAIR axial slices in Nickparvar's set) and others most of the tumours (figshare's T1 contrast-enhanced slices),
a model can call every slice in the normal collection's style "no tumour", and does: on Navoneel's set, whose
tumours are mostly in that style, it misses a third of them. A normal slice with a lesion pasted into it is that
style *with* a tumour: as a tumour training image (with the pasted outline as its mask) it leaves the lesion as the
only difference between the classes (``braintumor train --masks DIR --paste-lesions``; :func:`pasted_copies`).

What is pasted is the lesion's difference from normal tissue: the donor minus its erased copy
(:func:`~braintumor.data.erase.erase_lesion`, so lesions that cannot be erased - on the mid-line, mirror outside
the head - are not pasted), scaled by the ratio of the two slices' tissue brightness at the site, added to the
normal slice at the same place (both are prepared the same way: brain-cropped, same size), or at its left-right
mirror when the lesion would leave the normal slice's head there. Its edge is the erasure's feathered edge.

Example:
    >>> import numpy as np
    >>> from braintumor.data.synthetic import make_phantom
    >>> rng = np.random.default_rng(3)
    >>> donor, mask = make_phantom(rng, size=96, tumour=True)
    >>> normal, _ = make_phantom(rng, size=96, tumour=False)
    >>> made = paste_lesion(donor, mask, normal)
    >>> made is None or (made[0].shape, made[1].shape) == ((96, 96), (96, 96))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .erase import _head, erase_lesion, grey

#: a lesion is pasted only where at least this share of its changed pixels lies inside the normal slice's head
MIN_INSIDE = 0.95
#: the tissue-brightness ratio between the two slices is clipped to this range
SCALE_RANGE = (0.5, 2.0)


@dataclass
class Lesion:
    """A lesion lifted from a tumour slice (:func:`lift_lesion`): what it adds to the normal tissue under it.

    Attributes:
        diff: ``float32``, the image's shape: the slice minus its erased copy (zero away from the lesion).
        changed: ``bool`` ``(S, S)``: where ``diff`` is not (about) zero.
        mask: ``bool`` ``(S, S)``: the outlined lesion.
        tissue: the erased copy's mean grey level over ``changed`` (the normal tissue's brightness there).
    """

    diff: np.ndarray
    changed: np.ndarray
    mask: np.ndarray
    tissue: float


def lift_lesion(donor: np.ndarray, mask: np.ndarray) -> Lesion | None:
    """The lesion ``mask`` of ``donor`` as a :class:`Lesion`; ``None`` when it cannot be erased
    (:func:`~braintumor.data.erase.erase_lesion`: no lesion, on the mid-line, mirror outside the head)."""
    don = np.asarray(donor)
    erased = erase_lesion(don, mask)
    if erased is None:
        return None
    diff = don.astype(np.float32) - erased.astype(np.float32)
    changed = np.abs(diff if diff.ndim == 2 else diff.mean(axis=2)) > 0.5
    if not changed.any():
        return None
    return Lesion(diff, changed, np.asarray(mask) > 0, float(grey(erased)[changed].mean()))


def brightened(lesion: Lesion) -> Lesion:
    """``lesion`` made bright throughout: its absolute difference from the tissue (a T1 contrast-enhanced lesion's
    dark core and oedema turn bright around its bright rim: a crude T2/FLAIR look)."""
    return Lesion(np.abs(lesion.diff), lesion.changed, lesion.mask, lesion.tissue)


def place_lesion(lesion: Lesion, recipient: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``recipient`` with ``lesion`` added at its place (or at its left-right mirror about the recipient's head
    when it would leave the head there), scaled by the ratio of the tissue brightness under it; and the placed
    lesion's mask. ``None`` when it leaves the head both ways."""
    rec = np.asarray(recipient)
    if rec.shape != lesion.diff.shape:
        raise ValueError(f"lesion {lesion.diff.shape} and recipient {rec.shape} differ in shape")
    g = grey(rec)
    head = _head(g)
    for flip in (False, True):
        if not flip:
            d, ch, les = lesion.diff, lesion.changed, lesion.mask
        else:
            ch = _mirror_plane(lesion.changed, head)
            if ch.sum() < lesion.changed.sum():  # part of it would fall outside the image
                continue
            les, d = _mirror_plane(lesion.mask, head), _mirror_plane(lesion.diff, head)
        if head[ch].mean() < MIN_INSIDE:
            continue
        k = float(np.clip(float(g[ch].mean()) / max(lesion.tissue, 1.0), *SCALE_RANGE))
        return np.clip(rec.astype(np.float32) + k * d, 0, 255).round().astype(np.uint8), les
    return None


def paste_lesion(donor: np.ndarray, mask: np.ndarray, recipient: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``recipient`` with the lesion ``mask`` of ``donor`` pasted in, and the pasted lesion's mask (``bool``);
    ``None`` when it cannot be (the lesion cannot be erased from the donor, or it would leave the recipient's head
    both where it is and mirrored). ``donor`` and ``recipient``: ``uint8`` images of one shape, ``(S, S)`` or
    ``(S, S, C)``; ``mask``: ``(S, S)``, nonzero = lesion."""
    if np.shape(donor) != np.shape(recipient):
        raise ValueError(f"donor {np.shape(donor)} and recipient {np.shape(recipient)} differ in shape")
    lesion = lift_lesion(donor, mask)
    return None if lesion is None else place_lesion(lesion, recipient)


def _mirror_plane(a: np.ndarray, head: np.ndarray) -> np.ndarray:
    """``a`` (``(S, S)`` or ``(S, S, C)``) mirrored left-right about the middle of ``head``'s horizontal extent
    (zeros shifted in)."""
    cols = np.flatnonzero(head.any(axis=0))
    axis2 = int(cols[0] + cols[-1]) if len(cols) else a.shape[1] - 1
    w = a.shape[1]
    src = axis2 - np.arange(w)
    ok = (src >= 0) & (src < w)
    out = np.zeros_like(a)
    out[:, ok] = a[:, src[ok]]
    return out


@dataclass
class PastedCopies:
    """Normal slices of a training set with a lesion of its masked tumour slices pasted in (:func:`pasted_copies`).

    Attributes:
        images: ``uint8`` ``(K, S, S, C)`` normal slices with a pasted lesion.
        masks: ``(K, S, S)`` the pasted lesions' masks (``uint8``, 0 / 1).
        donor: ``(K,)`` the tumour image each lesion came from.
        recipient: ``(K,)`` the normal image it went into.
        skipped: how many tumour images gave no lesion (it could not be erased, or it left every recipient's head).
        bright: how many of the lesions were pasted bright (:func:`brightened`).
    """

    images: np.ndarray
    masks: np.ndarray
    donor: np.ndarray
    recipient: np.ndarray
    skipped: int = 0
    bright: int = 0

    def summary(self) -> dict:
        out = {"pasted": int(len(self.donor)), "not_pasted": int(self.skipped)}
        return out | ({"bright": int(self.bright)} if self.bright else {})


def pasted_copies(images: np.ndarray, masks: np.ndarray, donors: Sequence[int], recipients: Sequence[int],
                  seed: int = 0, tries: int = 3, per_recipient: int = 0, bright: float = 0.0) -> PastedCopies:
    """For each ``i`` in ``donors``, ``images[i]``'s lesion (``masks[i]``) pasted into a normal image drawn from
    ``recipients`` (a seeded shuffle, each used about equally often; up to ``tries`` recipients per donor).

    ``per_recipient`` > 0 caps how many lesions one normal image receives: the donors are then visited in a seeded
    random order (the lesions kept are a sample of every class, not the first donors) until every recipient is
    full; the donors left over count as skipped. With few normal images and many lesions, an uncapped run makes
    each normal image's look mostly a tumour look; a cap of 1 pairs each normal image with at most one copy of
    itself with a lesion. ``bright``: the share of lesions pasted :func:`brightened` (each donor drawn with that
    probability from a seeded stream of its own, so the pairing does not change).
    """
    rec = np.asarray(recipients, np.int64)
    made, mk, don_i, rec_i = [], [], [], []
    rng = np.random.default_rng(seed)
    reps = -(-len(donors) * tries // len(rec)) + 1 if len(rec) else 0  # enough for every try of every donor
    order = np.concatenate([rng.permutation(rec) for _ in range(reps)]) if reps else rec
    visit = rng.permutation(np.asarray(donors, np.int64)) if per_recipient > 0 else donors
    coin = np.random.default_rng([seed, 1]).random(len(donors)) < bright  # its own stream: the pairing stays
    made_bright = 0
    received: dict[int, int] = {}
    full, pos = 0, 0
    for n_visit, i in enumerate(visit if len(rec) else ()):  # no normal image: nothing to paste into
        if per_recipient > 0 and full == len(rec):
            break  # every normal image has its lesions
        lesion = lift_lesion(images[i], masks[i])
        if lesion is None:  # no recipient helps
            continue
        if coin[n_visit]:
            lesion = brightened(lesion)
        for _ in range(tries):
            while per_recipient > 0 and received.get(int(order[pos % len(order)]), 0) >= per_recipient:
                pos += 1  # a full recipient is passed over, not tried
            j = int(order[pos % len(order)])
            pos += 1
            res = place_lesion(lesion, images[j])
            if res is not None:
                made.append(res[0])
                mk.append(res[1].astype(np.uint8))
                don_i.append(int(i))
                rec_i.append(j)
                received[j] = received.get(j, 0) + 1
                full += received[j] == per_recipient
                made_bright += bool(coin[n_visit])
                break
    shape = (0, *images.shape[1:])
    arr = np.stack(made) if made else np.zeros(shape, images.dtype)
    marr = np.stack(mk) if mk else np.zeros((0, *masks.shape[1:]), np.uint8)
    return PastedCopies(arr, marr, np.asarray(don_i, np.int64), np.asarray(rec_i, np.int64),
                        len(donors) - len(don_i), made_bright)
