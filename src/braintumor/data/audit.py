"""Duplicate and leakage audit: exact and near-duplicate groups, label conflicts, corrupt files, source confounders.

Public brain-MRI sets are scraped from several sources and contain the same scan several times: byte-identical
files, re-encoded or resized copies, slightly cropped or contrast-adjusted versions. A random split puts copies on
both sides and inflates every metric. This module finds them and turns them into split groups:

* :func:`duplicate_groups` - one group id per file; :func:`braintumor.training.train` passes them to the split.
* :func:`audit` - the full report (:class:`AuditReport`): exact and near-duplicate groups, groups that span two
  classes (label conflicts), near-copies of the images in a second folder (train-on-one / test-on-the-other
  leakage), unreadable and tiny files, class balance, per-class statistics that reveal the source of an image
  (size, aspect, colour, format, intensities), and a cross-validated "trivial model" on those statistics alone.
* :func:`source_confounder_check` - with a second folder: how well the same statistics tell the two folders
  apart (overall and within each shared class), i.e. whether a model could learn the source instead of the
  tumour.

How near-duplicates are found (measured on the Navoneel and Nickparvar sets, see ``tests/test_audit.py``):

1. Every image becomes a brain-cropped (:func:`braintumor.preprocess.brain_bbox`), square-padded 64 x 64
   greyscale thumbnail, computed on a copy resized to a fixed working size so that copies at any resolution
   are cropped alike.
2. *Propose*: normalised correlation of the thumbnails, all pairs (one matrix product), ``>= PROPOSE_MIN``.
   Perceptual hashes (``imagehash`` pHash/dHash/aHash on the same crops) were measured for this step and are
   not used: on these dark-background scans aHash pairs almost everything, pHash misses a few percent of the
   copies at any radius, and dHash needs a radius that admits 0.5-2 million of the 16 million pairs of the
   5,712-image set, while the dense correlation is exact and takes seconds. Each image keeps its
   ``MAX_CANDIDATES`` most similar proposals (a pair stays when it is among those of either image): near-copies
   are each other's closest thumbnails, and folders of look-alikes (one phantom recipe, one sequence) otherwise
   send millions of pairs to the slower confirmation (10,000 phantoms: 2.5 million, 239,000 after the cap; the
   groups of the Navoneel, figshare and Nickparvar sets are the same with and without it).
3. *Confirm*: the thumbnails are aligned (integer shifts up to ``SHIFT`` pixels, best global correlation),
   cut into 8 x 8 blocks, and the lower quartile of the per-block correlations over textured blocks is the
   score. Whole-image scores are dominated by the skull outline (different brains of one sequence reach 0.9
   and more); the block quartile asks that most local anatomy matches. Copies in the Navoneel set score
   >= 0.82, different brains across classes <= 0.51 there and <= 0.76 on the 4-class Nickparvar set.
   Re-encoding, resizing, small crops, brightness/contrast/gamma changes and local annotations (arrows, text)
   keep the score high. Adjacent, nearly identical slices of one series can also pass, which is what a
   split wants anyway.
4. Union-find over byte-identical, pixel-identical and confirmed pairs gives the groups.

Example:
    >>> from braintumor.data.audit import audit
    >>> report = audit("data/brain_mri_yes_no")                      # doctest: +SKIP
    >>> report.n_distinct, len(report.cross_class_groups)            # doctest: +SKIP
    (201, 0)
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UnreadableImageError
from ..preprocess import brain_bbox, pad_to_square
from ..workers import available_cpus, imap_files
from .discover import discover
from .read import read_image

#: Side of the brain-cropped greyscale thumbnail that near-duplicates are compared on.
THUMB = 64
#: Longest side of the working copy that the brain crop and the intensity statistics are computed on.
WORK_SIDE = 160
#: Proposal: normalised correlation of the whole thumbnails at least this.
PROPOSE_MIN = 0.85
#: Confirmation is tried on a pair only when it is among the first this many proposals of one of its two images
#: (most similar thumbnails first, pairs already joined by identical bytes or pixels left out).
MAX_CANDIDATES = 32
#: Confirmation: lower quartile of the 8 x 8 block correlations at least this.
NEAR_THRESHOLD = 0.80
#: Largest shift (thumbnail pixels) tried when aligning two thumbnails.
SHIFT = 1
#: Border (thumbnail pixels) left out of the comparison (covers the shifts).
MARGIN = 4
#: Block side for the local correlations.
BLOCK = 8
#: Blocks flatter than this (grey-level standard deviation) are background and not scored.
MIN_BLOCK_STD = 4.0
#: Images whose shorter side is below this are reported as tiny.
TINY_SIDE = 64


@dataclass
class ImageInfo:
    """Facts about one file that the audit needs (no pixels except the thumbnail)."""

    path: str
    sha256: str
    file_bytes: int
    error: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    is_colour: bool = False
    pixel_sha: str | None = None
    mean: float = 0.0
    std: float = 0.0
    p05: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    dark_fraction: float = 0.0
    brain_fraction: float = 0.0
    thumb: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def _file_sha(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _work_image(grey: np.ndarray) -> np.ndarray:
    """``grey`` reduced (area filter) so that its longest side is :data:`WORK_SIDE`: every copy of a scan, whatever
    its resolution, is then cropped at the same relative precision. Smaller images are kept as they are
    (enlarging adds no detail; the crop's blur is scaled to their size instead, see :func:`_thumb`)."""
    h, w = grey.shape
    if max(h, w) <= WORK_SIDE:
        return grey
    scale = WORK_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(grey).resize(size, Image.BOX))


def _thumb(work: np.ndarray, size: int = THUMB) -> tuple[np.ndarray, float]:
    """Brain-cropped, square-padded, resized greyscale thumbnail and the brain box's share of the image area.

    The crop is :func:`braintumor.preprocess.brain_bbox` (the recipe of the :class:`~braintumor.preprocess.
    Preprocessor`) with its blur scaled to the working size (1.5 px at :data:`WORK_SIDE`).
    """
    h, w = work.shape
    box = brain_bbox(work, blur=1.5 * max(h, w) / WORK_SIDE)
    crop = work
    if box is not None and box[2] - box[0] >= 8 and box[3] - box[1] >= 8:
        crop = work[box[0]:box[2], box[1]:box[3]]
    frac = crop.shape[0] * crop.shape[1] / float(h * w)
    sq = pad_to_square(crop)
    return np.asarray(Image.fromarray(sq).resize((size, size), Image.BILINEAR)), frac


def _pixel_sha(img: np.ndarray) -> str:
    """SHA-256 of the decoded pixels and their shape; an image whose three channels are equal hashes as its single
    channel, so a greyscale file and an RGB file of the same grey pixels match."""
    if img.ndim == 3 and (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all():
        img = np.ascontiguousarray(img[..., 0])
    return hashlib.sha256(np.asarray(img.shape, np.int64).tobytes() + img.tobytes()).hexdigest()


def _scan_one(path: Path) -> ImageInfo:
    try:
        sha, nbytes = _file_sha(path)
    except OSError as exc:
        return ImageInfo(str(path), "", 0, error=f"cannot open ({exc.strerror or exc})")
    info = ImageInfo(str(path), sha, nbytes)
    described: dict = {}
    try:
        img = read_image(path, keep_grey=True, describe=described)
    except UnreadableImageError as exc:
        info.error = exc.reason
        return info
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable"
        info.error = f"{type(exc).__name__}: {exc}"
        return info
    info.format, info.mode = described.get("format"), described.get("mode")
    if info.mode is None:  # read by a registered reader (DICOM, NIfTI): the suffix names the format, as before
        info.format = Path(path).suffix.lstrip(".").upper() or None
    info.height, info.width = img.shape[:2]
    info.pixel_sha = _pixel_sha(img)
    if img.ndim == 3:
        step = max(1, min(img.shape[:2]) // 128)
        sub = img[::step, ::step].astype(np.int16)
        info.is_colour = bool(max(np.abs(sub[..., 0] - sub[..., 1]).mean(),
                                  np.abs(sub[..., 1] - sub[..., 2]).mean()) > 2.0)
        grey = np.asarray(Image.fromarray(img).convert("L"))
    else:
        grey = img  # PIL's "L" of three equal channels is that channel
    work = _work_image(grey)
    hist = np.bincount(work.ravel(), minlength=256).astype(np.float64)
    cdf = np.cumsum(hist) / hist.sum()
    levels = np.arange(256)
    info.mean = float((hist * levels).sum() / hist.sum())
    info.std = float(np.sqrt(max(0.0, (hist * levels**2).sum() / hist.sum() - info.mean**2)))
    info.p05, info.p50, info.p95 = (float(np.searchsorted(cdf, q)) for q in (0.05, 0.5, 0.95))
    info.dark_fraction = float(cdf[15])
    info.thumb, info.brain_fraction = _thumb(work)
    return info


_CACHE: dict[tuple[str, int, int], ImageInfo] = {}
_GROUP_CACHE: dict[tuple, tuple[str, ...]] = {}


def _cache_key(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def scan(paths: Sequence[str | Path], workers: int | None = None, *,
         keys: Sequence[tuple[str, int, int] | None] | None = None) -> list[ImageInfo]:
    """:class:`ImageInfo` of every path, read in threads where that pays (:func:`braintumor.workers.imap_files`);
    cached in-process by path, modification time and size.

    Unreadable files are not errors here: their :attr:`ImageInfo.error` says why. ``keys``: the paths' cache keys
    when the caller has them already.
    """
    paths = [Path(p) for p in paths]
    keys = [_cache_key(p) for p in paths] if keys is None else list(keys)
    todo = [k for k, key in enumerate(keys) if key is None or key not in _CACHE]
    fresh: dict[int, ImageInfo] = {}
    if todo:
        found = imap_files(lambda k: _scan_one(paths[k]), todo, min(4, workers or available_cpus()))
        fresh = dict(zip(todo, found, strict=True))
    for k, info in fresh.items():
        if keys[k] is not None:
            _CACHE[keys[k]] = info
    return [fresh[k] if k in fresh else _CACHE[key] for k, key in enumerate(keys)]


# --------------------------------------------------------------------------------------------- near-duplicates
def _thumbs(infos: Sequence[ImageInfo]) -> np.ndarray:
    blank = np.zeros((THUMB, THUMB), np.uint8)
    return np.stack([i.thumb if i.thumb is not None else blank for i in infos]) if infos else \
        np.zeros((0, THUMB, THUMB), np.uint8)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None] + 1e-6
    return x


def _propose(ta: np.ndarray, tb: np.ndarray | None, ok_a: np.ndarray, ok_b: np.ndarray | None,
             min_ncc: float = PROPOSE_MIN, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs ``(i, j)`` and their thumbnail correlations, ``>= min_ncc`` (``i < j`` within one set, where
    only the upper triangle of the correlation matrix is computed)."""
    same = tb is None
    za = _unit_rows(ta)
    zb = za if same else _unit_rows(tb)
    okb = ok_a if same else ok_b
    out_i, out_j, out_c = [], [], []
    for s in range(0, len(za), chunk):
        j0 = s if same else 0
        c = za[s:s + chunk] @ zb[j0:].T
        ii, jj = np.nonzero(c >= min_ncc)
        cc = c[ii, jj]
        del c
        ii, jj = ii + s, jj + j0
        keep = ok_a[ii] & okb[jj]
        if same:
            keep &= jj > ii
        out_i.append(ii[keep])
        out_j.append(jj[keep])
        out_c.append(cc[keep])
    if not out_i:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_c)


def _stable_order(key: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """Stable argsort of non-negative integers ``key`` (a radix sort when they fit 16 bits), applied to
    ``within`` (an order to refine) when given."""
    k = key if within is None else key[within]
    k = k.astype(np.uint16) if k.size and int(k.max()) < 65536 else k
    o = np.argsort(k, kind="stable")
    return o if within is None else within[o]


def _ranks(idx: np.ndarray, by_similarity: np.ndarray) -> np.ndarray:
    """Rank of each pair among the pairs of the same ``idx`` value, in the order ``by_similarity``."""
    order = _stable_order(idx, by_similarity)
    s = idx[order]
    first = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    pos = np.arange(len(s)) - np.repeat(first, np.diff(np.r_[first, len(s)]))
    out = np.empty(len(idx), np.int64)
    out[order] = pos
    return out


def _first_candidates(ci: np.ndarray, cj: np.ndarray, ncc: np.ndarray, k: int, same: bool = True) -> np.ndarray:
    """Mask of the pairs that are among the ``k`` most similar proposals of one of their two images.

    ``same``: ``ci`` and ``cj`` index one set, so an image's proposals are the pairs where it is either side;
    otherwise they index two sets (``ci`` the first, ``cj`` the second) and each side ranks its own.

    Near-copies are each other's most similar thumbnails (the groups of the Navoneel, figshare_dev and Nickparvar
    sets are the same with and without the cap); what ranks lower are look-alikes (one sequence, one phantom
    recipe) that the block score then rejects one by one. Capping the candidates keeps the work linear in the
    number of images on such folders; a group still forms through chains of first candidates.
    """
    if not len(ci):
        return np.zeros(0, bool)
    # most similar first, to 1/65535 of the proposal range (closer ties: first listed)
    span = max(1e-6, 1.0 - float(ncc.min()))
    q = np.clip(np.round((1.0 - ncc) * (65535 / span)), 0, 65535).astype(np.uint16)
    if same:
        n = len(ci)
        r = _ranks(np.concatenate([ci, cj]), _stable_order(np.concatenate([q, q])))
        return (r[:n] < k) | (r[n:] < k)
    by = _stable_order(q)
    return (_ranks(ci, by) < k) | (_ranks(cj, by) < k)


def _blocks(x: np.ndarray, nb: int) -> np.ndarray:
    """``(P, nb*B, nb*B)`` -> centred ``(P, nb*nb, B*B)`` blocks."""
    p = len(x)
    x = x.reshape(p, nb, BLOCK, nb, BLOCK).transpose(0, 1, 3, 2, 4).reshape(p, nb * nb, BLOCK * BLOCK)
    return x - x.mean(axis=2, keepdims=True)


def _shifts() -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-SHIFT, SHIFT + 1) for dx in range(-SHIFT, SHIFT + 1)]


def _block_moments(t: np.ndarray, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and sum of squares of each block of the window at every shift: ``(P, shifts, nb*nb)`` ``float64``
    each, shifts in the order of :func:`_shifts`, blocks in the order of :func:`_blocks`.

    Computed as ``L @ t @ R`` with 0/1 matrices that add up the rows and the columns of each block at each shift;
    every partial sum is an integer below ``2**24``, so ``float32`` products are exact.
    """
    n = t.shape[1]
    offsets = [MARGIN + d + BLOCK * np.arange(nb) for d in range(-SHIFT, SHIFT + 1)]
    sel = np.zeros((len(offsets) * nb, n), np.float32)          # row k: the pixels of block row/column k
    for s, off in enumerate(offsets):
        for r, o in enumerate(off):
            sel[s * nb + r, o:o + BLOCK] = 1.0
    out = []
    x = t.astype(np.float32)
    for v in (x, x * x):
        m = np.matmul(np.matmul(sel, v), sel.T)                 # (P, shifts_y * nb, shifts_x * nb)
        k = len(offsets)
        m = m.reshape(len(t), k, nb, k, nb).transpose(0, 1, 3, 2, 4).reshape(len(t), k * k, nb * nb)
        out.append(m.astype(np.float64))
    return out[0], out[1]


def _centred_norm(total: np.ndarray, squares: np.ndarray, count: int) -> np.ndarray:
    """``||x - mean(x)||`` from the exact sum and sum of squares of ``count`` values."""
    return np.sqrt(np.maximum(0.0, squares - total * total / count))


def _side_a(t: np.ndarray, nb: int, moments: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """What the scores need of the first image of each pair (per image, not per pair): its inner window's
    block-centred blocks, their norms and means, and the window's mean and norm."""
    w = nb * BLOCK
    a = t[:, MARGIN:MARGIN + w, MARGIN:MARGIN + w].astype(np.float32)
    ab = _blocks(a, nb)                                            # (P, nb*nb, B*B), as the score defines them
    bs, bss = (m[:, _shifts().index((0, 0))] for m in (moments or _block_moments(t, nb)))
    ma = bs.sum(axis=1) / (w * w)
    norm = _centred_norm(bs.sum(axis=1), bss.sum(axis=1), w * w) + 1e-6
    return {"ab": ab, "na": np.sqrt((ab * ab).sum(axis=2)), "ab_sum": ab.astype(np.float64).sum(axis=2),
            "offset": bs / (BLOCK * BLOCK) - ma[:, None], "norm": norm}


def _side_b(t: np.ndarray, nb: int, moments: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """What the scores need of the second image of each pair, per image and shift: the ``(nb*nb, (B+2S)^2)``
    patches around each block that hold it at every shift (``uint8``), and per shift the block sums, the block
    norms after centring and the window's norm after centring (exact, from :func:`_block_moments`)."""
    w = nb * BLOCK
    side = BLOCK + 2 * SHIFT
    p = len(t)
    patches = np.empty((nb * nb, p, side * side), np.uint8)
    for r in range(nb):
        for c in range(nb):
            y0, x0 = MARGIN - SHIFT + r * BLOCK, MARGIN - SHIFT + c * BLOCK
            patches[r * nb + c] = t[:, y0:y0 + side, x0:x0 + side].reshape(p, -1)
    sums, squares = moments or _block_moments(t, nb)
    nbb = _centred_norm(sums, squares, BLOCK * BLOCK).astype(np.float32)
    gnorm = _centred_norm(sums.sum(axis=2), squares.sum(axis=2), w * w)
    return {"patches": patches, "sums": sums, "nbb": nbb, "gnorm": gnorm}


def _kernels(ab: np.ndarray) -> np.ndarray:
    """``(nb*nb, (B+2S)^2, shifts)``: each block of one image placed at every shift inside its patch."""
    side = BLOCK + 2 * SHIFT
    k = np.zeros((len(ab), side, side, len(_shifts())), np.float32)
    blocks = ab.reshape(len(ab), BLOCK, BLOCK)
    for s, (dy, dx) in enumerate(_shifts()):
        k[:, SHIFT + dy:SHIFT + dy + BLOCK, SHIFT + dx:SHIFT + dx + BLOCK, s] = blocks
    return k.reshape(len(ab), side * side, -1)


def pair_scores(ta: np.ndarray, tb: np.ndarray, i: np.ndarray, j: np.ndarray, batch: int = 512) -> np.ndarray:
    """Near-duplicate score of thumbnails ``ta[i]`` and ``tb[j]`` (see the module docstring), in ``[-1, 1]``.

    Args:
        ta, tb: ``(N, 64, 64)`` ``uint8`` brain-cropped greyscale thumbnails.
        i, j: indices of the pairs to score.

    Everything that depends on one image only (block norms and sums, the window's norm at each shift) is computed
    once per image; per first image, one matrix product gives every block's correlation numerator at every shift
    for all its pairs (the global alignment's numerators follow from them), so that no per-pair work is repeated
    per shift. Equal to the direct computation up to float rounding.
    """
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    out = np.zeros(len(i), np.float32)
    if not len(i):
        return out
    n = ta.shape[1]
    nb = (n - 2 * MARGIN) // BLOCK
    ui, li = np.unique(i, return_inverse=True)
    uj, lj = np.unique(j, return_inverse=True)
    ma = mb = None
    if ta is tb:  # one set: the block moments of every image once
        u = np.union1d(ui, uj)
        mom = _block_moments(ta[u], nb)
        ma, mb = (tuple(m[np.searchsorted(u, x)] for m in mom) for x in (ui, uj))
    sa, sb = _side_a(ta[ui], nb, ma), _side_b(tb[uj], nb, mb)
    order = np.argsort(li, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(li, minlength=len(ui)))]

    def score_first(a: int) -> None:
        rows = order[starts[a]:starts[a + 1]]
        kern = _kernels(sa["ab"][a])
        for s in range(0, len(rows), batch):
            r = rows[s:s + batch]
            jb = lj[r]
            # <ab, block of b> per block, pair and shift: (blocks, pairs, shifts)
            raw = np.matmul(np.take(sb["patches"], jb, axis=1).astype(np.float32), kern)
            sums = sb["sums"][jb]                                        # (pairs, shifts, blocks)
            # <a - mean(a), window> = sum over blocks of <ab, block> + (block mean - window mean) * block sum
            g = (raw.sum(axis=0) + sums @ sa["offset"][a]) / sa["norm"][a] / (sb["gnorm"][jb] + 1e-6)
            g = g.astype(np.float32)
            pick = np.argmax(g, axis=1)                                  # the first best shift, as a loop would
            at = np.arange(len(r))
            best = g[at, pick]
            # <ab, centred block of b> = <ab, block of b> - block mean of b * sum of ab
            num = raw[:, at, pick].T - sums[at, pick] / (BLOCK * BLOCK) * sa["ab_sum"][a]
            na, nbb = sa["na"][a], sb["nbb"][jb, pick]
            corr = (num / (na.astype(np.float64) * nbb + 1e-6)).astype(np.float32)
            textured = (na > MIN_BLOCK_STD * BLOCK) & (nbb > MIN_BLOCK_STD * BLOCK)
            corr = np.where(textured, corr, np.nan)
            k = textured.sum(axis=1)
            srt = np.sort(corr, axis=1)                       # NaNs (background blocks) sort last
            q = srt[at, np.clip(((k - 1) * 0.25).astype(int), 0, None)]
            # Too little texture to judge locally (blank or tiny content): fall back to the aligned global score.
            out[r] = np.where(k >= 6, q, best)

    def score_range(lo: int, hi: int) -> None:
        for a in range(lo, hi):
            score_first(a)

    # numpy releases the GIL in the heavy steps: first images in parallel threads, each writing its own rows of
    # out, with BLAS kept to one thread per worker (its own threads would only contend with them)
    workers = min(available_cpus(), max(1, len(i) // 20_000))
    if workers == 1:
        score_range(0, len(ui))
    else:
        from threadpoolctl import threadpool_limits

        bounds = np.linspace(0, len(ui), 8 * workers + 1).astype(int)
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda k: score_range(bounds[k], bounds[k + 1]), range(len(bounds) - 1)))
    return out


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> list[int]:
        return [self.find(x) for x in range(len(self.parent))]


@dataclass
class _Pairs:
    """Matched pairs between two lists of :class:`ImageInfo` (or within one)."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray
    kind: list[str]          # "bytes", "pixels" or "near"


def match(infos_a: Sequence[ImageInfo], infos_b: Sequence[ImageInfo] | None = None,
          threshold: float = NEAR_THRESHOLD, max_candidates: int | None = MAX_CANDIDATES) -> _Pairs:
    """Duplicate pairs within ``infos_a`` (``infos_b=None``) or between ``infos_a`` and ``infos_b``.

    Identical files and pixels are all listed; near-copies are confirmed among each image's first
    ``max_candidates`` proposals (:func:`_first_candidates`; ``None``: every proposal). Within one set, pairs
    whose images are already joined by identical copies are not scored again: they are in one group anyway.
    """
    same = infos_b is None
    b = infos_a if same else infos_b
    found: dict[tuple[int, int], tuple[float, str]] = {}
    for attr, kind in (("sha256", "bytes"), ("pixel_sha", "pixels")):
        index: dict[str, list[int]] = {}
        for k, info in enumerate(b):
            key = getattr(info, attr)
            if key:
                index.setdefault(key, []).append(k)
        for ia, info in enumerate(infos_a):
            key = getattr(info, attr)
            for jb in index.get(key, []) if key else []:
                if (same and jb <= ia) or (ia, jb) in found:
                    continue
                found[(ia, jb)] = (1.0, kind)
    ok_a = np.array([x.ok for x in infos_a], bool)
    ok_b = np.array([x.ok for x in b], bool)
    ta = _thumbs(infos_a)
    tb = ta if same else _thumbs(b)
    ci, cj, ncc = _propose(ta, None if same else tb, ok_a, None if same else ok_b)
    if len(ci):
        # pairs already joined (within one set: in one group of identical files) need no confirmation
        if same:
            uf = _UnionFind(len(infos_a))
            for x, y in found:
                uf.union(x, y)
            root = np.asarray(uf.labels())
            fresh = root[ci] != root[cj]
        else:
            fresh = np.array([(x, y) not in found for x, y in zip(ci.tolist(), cj.tolist(), strict=True)], bool)
        ci, cj, ncc = ci[fresh], cj[fresh], ncc[fresh]
    if max_candidates is not None and len(ci):
        keep = _first_candidates(ci, cj, ncc, max_candidates, same)
        ci, cj = ci[keep], cj[keep]
    if len(ci):
        sc = pair_scores(ta, tb, ci, cj)
        for x, y, v in zip(ci.tolist(), cj.tolist(), sc.tolist(), strict=True):
            if v >= threshold:
                found[(x, y)] = (float(v), "near")
    keys = sorted(found)
    return _Pairs(np.array([k[0] for k in keys], int), np.array([k[1] for k in keys], int),
                  np.array([found[k][0] for k in keys], np.float32), [found[k][1] for k in keys])


def _group_ids(infos: Sequence[ImageInfo], pairs: _Pairs) -> list[str]:
    uf = _UnionFind(len(infos))
    for x, y in zip(pairs.i.tolist(), pairs.j.tolist(), strict=True):
        uf.union(x, y)
    roots = uf.labels()
    members: dict[int, list[int]] = {}
    for k, r in enumerate(roots):
        members.setdefault(r, []).append(k)
    gid = {}
    for r, ks in members.items():
        shas = sorted(infos[k].sha256 for k in ks if infos[k].sha256)
        gid[r] = f"dup-{shas[0][:16]}" if shas else f"file-{infos[ks[0]].path}"
    return [gid[r] for r in roots]


def duplicate_groups(paths: Sequence[str | Path], threshold: float = NEAR_THRESHOLD,
                     workers: int | None = None) -> list[str]:
    """One group id per path; the same id means the same scan (identical bytes or pixels, or a near-copy).

    Ids are content-based (``"dup-"`` + the first 16 hex digits of the smallest SHA-256 in the group), so they
    do not depend on the order of ``paths``. Unreadable files get their own group. Results are cached
    in-process per path, modification time and size (per file, and for the whole list).

    Example:
        >>> from braintumor.data import discover
        >>> from braintumor.data.audit import duplicate_groups
        >>> ds = discover("data/brain_mri_yes_no")                      # doctest: +SKIP
        >>> len(set(duplicate_groups(ds.paths)))                        # doctest: +SKIP
        201
    """
    keys = tuple(_cache_key(Path(p)) for p in paths)
    memo = (keys, float(threshold))
    if None not in keys and memo in _GROUP_CACHE:
        return list(_GROUP_CACHE[memo])
    infos = scan(paths, workers=workers, keys=keys)
    ids = _group_ids(infos, match(infos, threshold=threshold))
    if None not in keys:
        _GROUP_CACHE[memo] = tuple(ids)
    return ids


def copies_in(paths: Sequence[str | Path], other: str | Path, threshold: float = NEAR_THRESHOLD,
              workers: int | None = None) -> list[int]:
    """Indices of ``paths`` that have an exact or near copy among the images under the folder ``other``.

    Used to keep a pretraining set free of copies of a later test set (``TrainConfig.exclude_copies_of``).

    Example:
        >>> from braintumor.data import discover
        >>> from braintumor.data.audit import copies_in
        >>> ds = discover("data/nickparvar/Training")                                    # doctest: +SKIP
        >>> len(copies_in(ds.paths, "data/brain_mri_yes_no"))                            # doctest: +SKIP
        123
    """
    infos = scan(paths, workers=workers)
    from .discover import list_images

    oinfos = scan(list_images(other), workers=workers)  # labelled or not: every image file under ``other``
    pairs = match(infos, oinfos, threshold=threshold)
    return sorted(set(pairs.i.tolist()))


# ------------------------------------------------------------------------------------------------- confounders
#: Per-image statistics the "trivial model" sees (none of them looks at the anatomy).
CONFOUNDER_FEATURES = ("width", "height", "aspect", "log_pixels", "bytes_per_pixel", "is_colour", "is_png",
                       "name_mismatch", "mean", "std", "p05", "p50", "p95", "dark_fraction", "brain_fraction")
#: Warn when the trivial model's cross-validated ROC-AUC reaches this.
CONFOUNDER_WARN_AUC = 0.75

_SUFFIX_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def name_mismatch(info: ImageInfo) -> bool:
    """The file's content format differs from what its suffix says (e.g. a PNG named ``.jpg``)."""
    expected = _SUFFIX_FORMAT.get(Path(info.path).suffix.lower())
    return bool(info.format and expected and info.format != expected)


def _feature_row(info: ImageInfo) -> list[float]:
    px = max(1, info.width * info.height)
    return [info.width, info.height, info.width / max(1, info.height), float(np.log(px)), info.file_bytes / px,
            float(info.is_colour), float(info.format == "PNG"), float(name_mismatch(info)), info.mean, info.std,
            info.p05, info.p50, info.p95, info.dark_fraction, info.brain_fraction]


def confounder_check(infos: Sequence[ImageInfo], labels: Sequence[int], groups: Sequence[str] | None = None,
                     seed: int = 0) -> dict:
    """Cross-validate trivial models on :data:`CONFOUNDER_FEATURES` alone: do they predict the class?

    Logistic regression (standardised) and a small random forest, grouped stratified k-fold (duplicates
    stay in one fold). Returns the better model's accuracy, balanced accuracy and ROC-AUC (one-vs-rest macro
    for more than two classes), the majority-class accuracy, the forest's top features and ``warning``
    (AUC ``>= CONFOUNDER_WARN_AUC``). ``{"skipped": reason}`` when there is too little data.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = [k for k, i in enumerate(infos) if i.ok]
    x = np.array([_feature_row(infos[k]) for k in keep], np.float64)
    y = np.asarray(labels)[keep]
    g = np.asarray(groups)[keep] if groups is not None else np.array([infos[k].path for k in keep])
    classes, counts = np.unique(y, return_counts=True)
    n_groups_min = min(len(set(g[y == c])) for c in classes) if len(classes) else 0
    n_splits = min(5, n_groups_min)
    if len(classes) < 2 or n_splits < 2:
        return {"skipped": "needs at least two classes with two distinct images each"}
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    models = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "random forest": RandomForestClassifier(n_estimators=60, max_depth=6, min_samples_leaf=3,
                                                random_state=seed, n_jobs=1),
    }
    results = {}
    for name, model in models.items():
        proba = cross_val_predict(model, x, y, groups=g, cv=cv, method="predict_proba")
        pred = classes[proba.argmax(axis=1)]
        if len(classes) == 2:
            auc = roc_auc_score(y == classes[1], proba[:, 1])
        else:
            auc = roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes)
        results[name] = {"accuracy": float(accuracy_score(y, pred)),
                         "balanced_accuracy": float(balanced_accuracy_score(y, pred)), "auc": float(auc)}
    best = max(results, key=lambda k: results[k]["auc"])
    forest = models["random forest"].fit(x, y)
    order = np.argsort(-forest.feature_importances_)[:5]
    return {
        "model": best, **results[best], "models": results,
        "chance_accuracy": float(counts.max() / counts.sum()),
        "folds": int(n_splits),
        "top_features": [[CONFOUNDER_FEATURES[k], float(forest.feature_importances_[k])] for k in order],
        "features": list(CONFOUNDER_FEATURES),
        "warning": bool(results[best]["auc"] >= CONFOUNDER_WARN_AUC),
    }


# ----------------------------------------------------------------------------------------- source confounders
#: Warn when image statistics alone tell the two folders apart with a cross-validated ROC-AUC of at least this.
SOURCE_WARN_AUC = 0.8

#: :data:`CONFOUNDER_FEATURES` in words, for reports.
FEATURE_WORDS = {
    "width": "width", "height": "height", "aspect": "aspect ratio", "log_pixels": "pixel count",
    "bytes_per_pixel": "file bytes per pixel", "is_colour": "colour", "is_png": "PNG format",
    "name_mismatch": "suffix/format mismatch", "mean": "mean intensity", "std": "intensity spread",
    "p05": "dark level (5th percentile)", "p50": "median intensity", "p95": "bright level (95th percentile)",
    "dark_fraction": "share of dark pixels", "brain_fraction": "brain box share of the image",
}


def _class_strata(classes_a: Sequence[str], classes_b: Sequence[str]) -> list[tuple[str, list[int], list[int], str]]:
    """Subsets compared within one class: ``(key, labels of A, labels of B, how)``.

    Every class name both folders have (``how="name"``). When both have a negative class ("no", "notumor", ...,
    see :data:`braintumor.data.discover.NEGATIVE_NAMES`) under different names, those two (``"negative"``,
    key ``"no=notumor"``); when the tumour classes then differ by name, all tumour classes of A against all of
    B (``"tumour"``, key ``"yes=glioma+meningioma+pituitary"``).
    """
    from .discover import NEGATIVE_NAMES

    out = [(c, [classes_a.index(c)], [classes_b.index(c)], "name") for c in classes_a if c in classes_b]
    neg_a = [k for k, c in enumerate(classes_a) if c.lower() in NEGATIVE_NAMES]
    neg_b = [k for k, c in enumerate(classes_b) if c.lower() in NEGATIVE_NAMES]
    if not (neg_a and neg_b):
        return out
    if not {classes_a[k] for k in neg_a} & {classes_b[k] for k in neg_b}:
        out.append(("+".join(classes_a[k] for k in neg_a) + "=" + "+".join(classes_b[k] for k in neg_b),
                    neg_a, neg_b, "negative"))
    pos_a = [k for k in range(len(classes_a)) if k not in neg_a]
    pos_b = [k for k in range(len(classes_b)) if k not in neg_b]
    if pos_a and pos_b and {classes_a[k] for k in pos_a} != {classes_b[k] for k in pos_b}:
        out.append(("+".join(classes_a[k] for k in pos_a) + "=" + "+".join(classes_b[k] for k in pos_b),
                    pos_a, pos_b, "tumour"))
    return out


def _source_cv(x: np.ndarray, y: np.ndarray, g: np.ndarray, n_splits: int, seed: int) -> dict:
    """Grouped stratified CV of two trivial models telling ``y == 1`` (B) from ``y == 0`` (A); the better one."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = [int((y == 0).sum()), int((y == 1).sum())]
    folds = min(n_splits, len(set(g[y == 0])), len(set(g[y == 1])))
    if folds < 2:
        return {"n": n, "skipped": "needs at least two distinct images from each folder"}
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    models = {
        "logistic regression": make_pipeline(StandardScaler(),
                                             LogisticRegression(max_iter=2000, class_weight="balanced")),
        "random forest": RandomForestClassifier(n_estimators=60, max_depth=6, min_samples_leaf=3,
                                                class_weight="balanced", random_state=seed, n_jobs=1),
    }
    results = {}
    for name, model in models.items():
        p = cross_val_predict(model, x, y, groups=g, cv=cv, method="predict_proba")[:, 1]
        results[name] = {"auc": round(float(roc_auc_score(y, p)), 4),
                         "balanced_accuracy": round(float(balanced_accuracy_score(y, p >= 0.5)), 4)}
    best = max(results, key=lambda k: results[k]["auc"])
    return {"n": n, "model": best, **results[best], "folds": int(folds), "models": results}


def _single_feature_auc(v: np.ndarray, y: np.ndarray) -> float:
    """ROC-AUC of one raw feature for ``y == 1`` (ties count half); no fitting."""
    from scipy.stats import rankdata

    r = rankdata(v)
    n1 = int(y.sum())
    n0 = len(y) - n1
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def source_confounder_check(infos_a: Sequence[ImageInfo], infos_b: Sequence[ImageInfo], labels_a: Sequence[int],
                            labels_b: Sequence[int], classes_a: Sequence[str], classes_b: Sequence[str], *,
                            groups_a: Sequence[str] | None = None, groups_b: Sequence[str] | None = None,
                            exclude_b: Sequence[int] = (), names: tuple[str, str] = ("A", "B"), seed: int = 0,
                            n_splits: int = 5, top: int = 5, warn_auc: float = SOURCE_WARN_AUC) -> dict:
    """How well do image statistics alone (:data:`CONFOUNDER_FEATURES`) tell folder A's images from folder B's?

    Models trained on one public set can learn *which collection an image came from* (sequence, scanner, export
    style) instead of the tumour; when two sources are mixed, or a model is tested on the other one, that
    shortcut shows here first. Logistic regression (standardised) and a small random forest, both class-weighted,
    predict the source (B = positive) under grouped stratified k-fold (duplicates of one folder stay in one
    fold); the better model's ROC-AUC is reported for all images and within each class both folders share (by
    name, or the negative classes "no"/"notumor"/... and the remaining tumour classes when the names differ, see
    :func:`_class_strata`). Unreadable images and the images of B listed in ``exclude_b`` (copies of A's images,
    e.g. the ``leaks`` of :func:`audit`) are left out.

    Args:
        infos_a, infos_b: :func:`scan` results of the two folders.
        labels_a, labels_b: class index of each image (into ``classes_a`` / ``classes_b``).
        classes_a, classes_b: class (folder) names.
        groups_a, groups_b: duplicate-group id per image (e.g. from :func:`duplicate_groups`); ``None``: every
            image is its own group.
        exclude_b: indices into ``infos_b`` to leave out.
        names: what to call the two folders in the result and the warning.
        seed: cross-validation shuffle and forest seed.
        n_splits: folds (fewer when a side has fewer distinct images; ``>= 2``).
        top: number of single features reported in ``top_features``.
        warn_auc: ``warning`` is set when the overall AUC, or one within a shared class, reaches this.

    Returns:
        ``{"sources": [A, B], "n": [n_a, n_b], "excluded_b": int, "auc", "balanced_accuracy", "model",
        "folds", "models": {model: {"auc", "balanced_accuracy"}}, "per_class": {key: {"how", "classes": [[...],
        [...]], "n", "auc", ...} or {..., "skipped": reason}}, "top_features": [{"feature", "words", "auc",
        "higher_in", "median": [a, b]}], "class_counts": {class: [n_a, n_b]}, "warn_auc", "warning"}``.
        ``top_features`` ranks each statistic by its own AUC for telling the folders apart (folded to
        ``>= 0.5``; no fitting); ``class_counts`` counts the images used, per class name, side by side. Too few
        images on a side: the AUC keys are replaced by ``"skipped"``.

    Raises:
        ValueError: lengths disagree, a label is out of range, an index in ``exclude_b`` is out of range, or
            ``n_splits < 2``.

    Example:
        >>> from braintumor.data import discover
        >>> from braintumor.data.audit import scan, source_confounder_check
        >>> a, b = discover("data/brain_mri_yes_no"), discover("data/nickparvar/Training")   # doctest: +SKIP
        >>> r = source_confounder_check(scan(a.paths), scan(b.paths), a.labels, b.labels,
        ...                             a.classes, b.classes, names=("yes_no", "nickparvar"))  # doctest: +SKIP
        >>> neg = r["per_class"]["no=notumor"]                                               # doctest: +SKIP
        >>> round(r["auc"], 2), round(neg["auc"], 2), r["top_features"][0]["words"]          # doctest: +SKIP
        (0.94, 0.77, 'file bytes per pixel')
    """
    from sklearn.utils import check_consistent_length

    check_consistent_length(infos_a, labels_a, *([groups_a] if groups_a is not None else []))
    check_consistent_length(infos_b, labels_b, *([groups_b] if groups_b is not None else []))
    for side, labels, classes in (("a", labels_a, classes_a), ("b", labels_b, classes_b)):
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(lab) and (lab.min() < 0 or lab.max() >= len(classes)):
            raise ValueError(f"labels_{side} must be indices into classes_{side} (0..{len(classes) - 1}); "
                             f"got values {lab.min()}..{lab.max()}")
    if int(n_splits) != n_splits or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2; got {n_splits!r}")
    if top < 0:
        raise ValueError(f"top must be >= 0; got {top!r}")
    drop = {int(k) for k in exclude_b}
    if drop and (min(drop) < 0 or max(drop) >= len(infos_b)):
        raise ValueError(f"exclude_b holds indices outside 0..{len(infos_b) - 1}")

    keep_a = [k for k, i in enumerate(infos_a) if i.ok]
    keep_b = [k for k, i in enumerate(infos_b) if i.ok and k not in drop]
    x = np.array([_feature_row(infos_a[k]) for k in keep_a] + [_feature_row(infos_b[k]) for k in keep_b],
                 np.float64).reshape(-1, len(CONFOUNDER_FEATURES))
    y = np.array([0] * len(keep_a) + [1] * len(keep_b))
    ga = [f"a:{groups_a[k]}" if groups_a is not None else f"a:{infos_a[k].path}" for k in keep_a]
    gb = [f"b:{groups_b[k]}" if groups_b is not None else f"b:{infos_b[k].path}" for k in keep_b]
    g = np.array(ga + gb, dtype=object)
    cls = [classes_a[labels_a[k]] for k in keep_a] + [classes_b[labels_b[k]] for k in keep_b]
    lab = np.array([labels_a[k] for k in keep_a] + [labels_b[k] for k in keep_b])

    counts: dict[str, list[int]] = {}
    for c, side in zip(cls, y.tolist(), strict=True):
        counts.setdefault(c, [0, 0])[side] += 1
    order = [c for c in classes_a if c in counts] + [c for c in classes_b if c in counts and c not in classes_a]
    out = {"sources": list(names), "excluded_b": len(drop),
           **_source_cv(x, y, g, int(n_splits), seed)}

    per_class = {}
    for key, ka, kb, how in _class_strata(list(classes_a), list(classes_b)):
        m = ((y == 0) & np.isin(lab, ka)) | ((y == 1) & np.isin(lab, kb))
        res = _source_cv(x[m], y[m], g[m], int(n_splits), seed)
        per_class[key] = {"how": how, "classes": [[classes_a[k] for k in ka], [classes_b[k] for k in kb]], **res}
    out["per_class"] = per_class

    feats = []
    if len(set(y.tolist())) == 2:
        for f, name in enumerate(CONFOUNDER_FEATURES):
            auc = _single_feature_auc(x[:, f], y)
            feats.append({"feature": name, "words": FEATURE_WORDS[name], "auc": round(max(auc, 1 - auc), 4),
                          "higher_in": names[1] if auc > 0.5 else names[0] if auc < 0.5 else None,
                          "median": [round(float(np.median(x[y == 0, f])), 4),
                                     round(float(np.median(x[y == 1, f])), 4)]})
        feats.sort(key=lambda d: -d["auc"])
    out["top_features"] = feats[:top]
    out["class_counts"] = {c: counts[c] for c in order}
    out["warn_auc"] = float(warn_auc)
    aucs = [out.get("auc", 0.0)] + [v.get("auc", 0.0) for v in per_class.values()]
    out["warning"] = bool(max(aucs) >= warn_auc)
    return out


def _summary(values: Sequence[float]) -> dict:
    v = np.asarray(values, np.float64)
    if not len(v):
        return {}
    return {k: round(float(f(v)), 4) for k, f in (("min", np.min), ("median", np.median), ("max", np.max),
                                                  ("mean", np.mean))}


def class_statistics(infos: Sequence[ImageInfo], labels: Sequence[int], classes: Sequence[str]) -> dict:
    """Per class: counts, image sizes, aspect ratios, colour share (visible chroma), formats and stored PIL modes,
    name/format mismatches, intensities (0-255), dark-pixel share, brain-box share of the image, file sizes."""
    out = {}
    for c, name in enumerate(classes):
        members = [i for i, y in zip(infos, labels, strict=True) if y == c]
        ok = [i for i in members if i.ok]
        sizes = Counter(f"{i.width}x{i.height}" for i in ok)
        out[name] = {
            "n": len(members), "readable": len(ok),
            "width": _summary([i.width for i in ok]), "height": _summary([i.height for i in ok]),
            "aspect": _summary([i.width / max(1, i.height) for i in ok]),
            "common_sizes": [[s, n] for s, n in sizes.most_common(3)],
            "colour_fraction": round(float(np.mean([i.is_colour for i in ok])), 4) if ok else 0.0,
            "formats": dict(Counter(i.format or "?" for i in ok)),
            "modes": dict(Counter(i.mode or "?" for i in ok)),
            "suffixes": dict(Counter(Path(i.path).suffix for i in members)),
            "name_mismatch": sum(name_mismatch(i) for i in ok),
            "mean_intensity": _summary([i.mean for i in ok]),
            "p95_intensity": _summary([i.p95 for i in ok]),
            "dark_fraction": _summary([i.dark_fraction for i in ok]),
            "brain_fraction": _summary([i.brain_fraction for i in ok]),
            "kib": _summary([i.file_bytes / 1024 for i in ok]),
        }
    return out


# ------------------------------------------------------------------------------------------------------ report
@dataclass
class AuditReport:
    """What :func:`audit` found. ``to_dict()`` is JSON-serialisable; its keys:

    * ``data_dir``, ``against`` (``None`` without a second folder), ``classes``, ``seconds``.
    * ``n_images``, ``n_readable``, ``n_distinct`` (distinct scans among the readable files: one per group),
      ``class_counts`` (``{class: files}``), ``distinct_per_class`` (``{class: groups}``; a cross-class group
      counts for each of its classes).
    * ``byte_groups``: lists of >= 2 files with identical bytes. ``pixel_groups``: lists of >= 2 files with
      identical decoded pixels but different bytes (one entry per distinct byte content).
    * ``near_groups``: duplicate groups (after merging bytes, pixels and near-copies) that hold more than one
      distinct pixel content: ``{"files": [...], "classes": [...], "min_score": float}``.
    * ``cross_class_groups``: groups whose files carry different labels (label conflicts), same form.
    * ``leaks`` (with ``against``): one entry per file of ``data_dir`` with a copy in ``against``:
      ``{"file", "class", "matches": [{"file", "class", "score", "kind"}]}``; ``kind`` is ``"bytes"``,
      ``"pixels"`` or ``"near"``. ``leak_counts``: ``{"files", "exact", "per_class": {class: n}}``.
    * ``unreadable``: ``[{"file", "reason"}]``; ``tiny``: ``[{"file", "width", "height"}]`` (shorter side
      below :data:`TINY_SIDE`).
    * ``class_stats``: :func:`class_statistics`; ``confounders``: :func:`confounder_check`.
    * ``source_confounder`` (with ``against``, else ``None``): :func:`source_confounder_check` of ``data_dir``
      against ``against``, with ``against``'s copies of ``data_dir``'s images left out.
    * ``warnings``: human-readable findings, most serious first.

    File names are relative to ``data_dir`` (and to ``against`` for matches).
    """

    data_dir: str
    classes: list[str]
    n_images: int
    n_readable: int
    n_distinct: int
    class_counts: dict[str, int]
    distinct_per_class: dict[str, int]
    byte_groups: list[list[str]]
    pixel_groups: list[list[str]]
    near_groups: list[dict]
    cross_class_groups: list[dict]
    unreadable: list[dict]
    tiny: list[dict]
    class_stats: dict
    confounders: dict
    against: str | None = None
    leaks: list[dict] = field(default_factory=list)
    leak_counts: dict = field(default_factory=dict)
    source_confounder: dict | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_byte_duplicates(self) -> int:
        """Files in byte-identical groups."""
        return sum(len(g) for g in self.byte_groups)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (keys in the class docstring; label conflicts and leaks come first)."""
        first = ("data_dir", "against", "classes", "n_images", "n_readable", "n_distinct", "cross_class_groups",
                 "leak_counts", "leaks", "source_confounder", "warnings")
        keys = list(first) + [k for k in self.__dataclass_fields__ if k not in first]
        return {k: getattr(self, k) for k in keys}

    def __repr__(self) -> str:
        s = (f"AuditReport({self.data_dir!r}: {self.n_images} files, {self.n_distinct} distinct; "
             f"byte-identical {len(self.byte_groups)} groups/{self.n_byte_duplicates} files, "
             f"near-duplicate groups {len(self.near_groups)}, cross-class {len(self.cross_class_groups)}, "
             f"unreadable {len(self.unreadable)}")
        if self.against is not None:
            s += f"; {self.leak_counts.get('files', 0)} with copies in {self.against!r}"
        return s + ")"

    def summary(self) -> str:
        """A few lines of plain text: the headline numbers and the warnings."""
        lines = [repr(self)]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _rel(path: str, root: Path) -> str:
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _groups_of(ids: Sequence[str], members: Sequence[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for k in members:
        out.setdefault(ids[k], []).append(k)
    return out


def audit(data_dir: str | Path, against: str | Path | None = None, *, threshold: float = NEAR_THRESHOLD,
          confounders: bool = True, workers: int | None = None) -> AuditReport:
    """Audit a labelled folder ``data_dir/<class>/<images>`` (and its overlap with ``against``).

    Args:
        data_dir: folder with one sub-folder per class.
        against: a second labelled folder (e.g. the test set or a pretraining set): every image of ``data_dir``
            with a copy there is listed in ``leaks``.
        threshold: near-duplicate score needed to merge two images (see the module docstring).
        confounders: run the trivial-model checks (a few seconds): :func:`confounder_check` on ``data_dir`` and,
            with ``against``, :func:`source_confounder_check` (which also groups ``against``'s duplicates).

    Raises:
        DataError: a folder is missing or has no class folders.

    Example:
        >>> from braintumor.data.audit import audit
        >>> r = audit("data/brain_mri_yes_no", against="data/nickparvar/Training")     # doctest: +SKIP
        >>> r.leak_counts["files"], r.cross_class_groups                                # doctest: +SKIP
        (117, [])
    """
    t0 = time.time()
    root = Path(data_dir)
    ds = discover(root)
    infos = scan(ds.paths, workers=workers)
    labels = ds.labels
    classes = ds.classes
    pairs = match(infos, threshold=threshold)
    ids = _group_ids(infos, pairs)
    ok = [k for k, i in enumerate(infos) if i.ok]
    rel = [_rel(i.path, root) for i in infos]

    def exact_groups(attr: str) -> list[list[int]]:
        by: dict[str, list[int]] = {}
        for k in ok:
            by.setdefault(getattr(infos[k], attr), []).append(k)
        return [v for v in by.values() if len(v) > 1]

    byte_groups = exact_groups("sha256")
    pixel_groups = [v for v in exact_groups("pixel_sha") if len({infos[k].sha256 for k in v}) > 1]
    pair_score: dict[str, float] = {}
    for x, s in zip(pairs.i.tolist(), pairs.score.tolist(), strict=True):
        pair_score[ids[x]] = min(pair_score.get(ids[x], 1.0), s)
    near, cross = [], []
    for gid, ks in _groups_of(ids, ok).items():
        if len(ks) < 2:
            continue
        entry = {"files": [rel[k] for k in ks], "classes": [classes[labels[k]] for k in ks],
                 "min_score": round(pair_score.get(gid, 1.0), 4)}
        if len({labels[k] for k in ks}) > 1:
            cross.append(entry)
        if len({infos[k].pixel_sha for k in ks}) > 1:
            near.append(entry)
    distinct_groups = _groups_of(ids, ok)
    distinct_per_class = {c: len({ids[k] for k in ok if labels[k] == ci}) for ci, c in enumerate(classes)}
    unreadable = [{"file": rel[k], "reason": infos[k].error} for k, i in enumerate(infos) if not i.ok]
    tiny = [{"file": rel[k], "width": infos[k].width, "height": infos[k].height}
            for k in ok if min(infos[k].width, infos[k].height) < TINY_SIDE]
    report = AuditReport(
        data_dir=str(root), classes=list(classes), n_images=len(infos), n_readable=len(ok),
        n_distinct=len(distinct_groups), class_counts=ds.class_counts(), distinct_per_class=distinct_per_class,
        byte_groups=[[rel[k] for k in g] for g in byte_groups],
        pixel_groups=[[rel[k] for k in g] for g in pixel_groups],
        near_groups=near, cross_class_groups=cross, unreadable=unreadable, tiny=tiny,
        class_stats=class_statistics(infos, labels, classes),
        confounders=confounder_check(infos, labels, ids) if confounders else {"skipped": "not requested"},
    )
    if against is not None:
        ods, oinfos, opairs = _add_leaks(report, infos, labels, classes, rel, Path(against), threshold, workers)
        if confounders:
            report.source_confounder = source_confounder_check(
                infos, oinfos, labels, ods.labels, classes, ods.classes, groups_a=ids,
                groups_b=_group_ids(oinfos, match(oinfos, threshold=threshold)),
                exclude_b=sorted(set(opairs.j.tolist())), names=(str(root), str(against)))
        else:
            report.source_confounder = {"skipped": "not requested"}
    report.warnings = _warnings(report)
    report.seconds = round(time.time() - t0, 2)
    return report


def _add_leaks(report: AuditReport, infos, labels, classes, rel, other: Path, threshold: float, workers):
    """Fill the ``leaks`` of ``report``; returns ``other``'s folder, its infos and the matched pairs."""
    ods = discover(other)
    oinfos = scan(ods.paths, workers=workers)
    pairs = match(infos, oinfos, threshold=threshold)
    by_file: dict[int, list[dict]] = {}
    for x, y, s, kind in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.score.tolist(), pairs.kind, strict=True):
        by_file.setdefault(x, []).append({"file": _rel(oinfos[y].path, other), "class": ods.classes[ods.labels[y]],
                                          "score": round(float(s), 4), "kind": kind})
    leaks = []
    for x in sorted(by_file):
        matches = sorted(by_file[x], key=lambda m: (-m["score"], m["file"]))
        leaks.append({"file": rel[x], "class": classes[labels[x]], "matches": matches})
    report.against = str(other)
    report.leaks = leaks
    report.leak_counts = {
        "files": len(leaks),
        "exact": sum(any(m["kind"] != "near" for m in e["matches"]) for e in leaks),
        "per_class": {c: sum(e["class"] == c for e in leaks) for c in classes},
        "other_files": len({m["file"] for e in leaks for m in e["matches"]}),
    }
    return ods, oinfos, pairs


def _warnings(r: AuditReport) -> list[str]:
    w = []
    if r.cross_class_groups:
        n = sum(len(g["files"]) for g in r.cross_class_groups)
        w.append(f"{len(r.cross_class_groups)} duplicate group(s) ({n} files) carry different labels: "
                 "fix or drop them before training")
    if r.leaks:
        w.append(f"{r.leak_counts['files']} of {r.n_images} images have a copy in {r.against} "
                 f"({r.leak_counts['exact']} exact): training on one and testing on the other leaks")
    conf = r.confounders
    if conf.get("warning"):
        feats = ", ".join(f for f, _ in conf.get("top_features", [])[:3])
        w.append(f"a {conf['model']} on image statistics alone (size, colour, format, intensity) predicts the "
                 f"class with cross-validated AUC {conf['auc']:.2f} and accuracy {conf['accuracy']:.2f} "
                 f"(chance {conf['chance_accuracy']:.2f}; top features: {feats}): classes differ in their "
                 "source, a model can learn that instead of the tumour")
    src = r.source_confounder or {}
    if src.get("warning"):
        a, b = src["sources"]
        within = [f"{k} {v['auc']:.2f}" for k, v in src.get("per_class", {}).items() if "auc" in v]
        feats = ", ".join(f["words"] for f in src.get("top_features", [])[:3])
        detail = "; ".join(x for x in (f"within classes {', '.join(within)}" if within else "",
                                       f"top features: {feats}" if feats else "") if x)
        head = f"AUC {src['auc']:.2f}" if "auc" in src else "AUC n/a"
        w.append(f"image statistics alone tell {a} from {b} ({head}" + (f"; {detail}" if detail else "")
                 + "): a model can learn the source instead of the tumour")
    redundant = r.n_readable - r.n_distinct
    if redundant:
        w.append(f"{redundant} of {r.n_readable} readable images are copies ({r.n_distinct} distinct): "
                 "split by duplicate group (`braintumor train` does by default)")
    if r.unreadable:
        w.append(f"{len(r.unreadable)} unreadable file(s)")
    if r.tiny:
        w.append(f"{len(r.tiny)} tiny image(s) (shorter side < {TINY_SIDE} px)")
    counts = [n for n in r.class_counts.values() if n]
    if counts and max(counts) > 2 * min(counts):
        w.append(f"class imbalance: {r.class_counts}")
    mism = {c: s["name_mismatch"] for c, s in r.class_stats.items() if s.get("name_mismatch")}
    if mism:
        w.append(f"files whose name suffix hides another format (e.g. PNG named .jpg) per class: {mism}")
    return w
