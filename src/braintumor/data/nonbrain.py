"""A folder-free corpus of images that are *not* brain-MRI slices, to test and measure an out-of-distribution check.

:func:`non_brain_corpus` builds, deterministically for a seed and without any download, a few hundred images of the
kinds in :data:`KINDS`, each as a user would upload it (``(H, W, 3)`` ``uint8``):

* **scikit-image's bundled samples** (``skimage.data``; only those shipped with the package, nothing is fetched):
  photos, textures, documents, microscopy, astronomy, retina images and the Shepp-Logan head phantom, plus seeded
  variants of each (random crops, flips, rotations, rescaling, greyscale or inverted copies, JPEG re-encoding) and
  40 of the 25x25 LFW faces upsampled to 128-256 pixels;
* **pydicom's bundled test files** (``pydicom.data.get_testdata_files()``, local files only): every one that
  decodes with the installed handlers through :func:`braintumor.data.dicom.read_dicom` (so the image is exactly
  what :func:`braintumor.data.read.read_image` gives for the file), is at least 16 pixels a side and is not a brain
  or head MR image; near-identical images (one picture in several transfer syntaxes) are kept once;
* **synthetic images**: blank, noise, salt-and-pepper, gradients, checkerboards, text, shapes, a white disc on
  black, extreme aspect ratios;
* **odd phantoms** from :mod:`braintumor.data.synthetic`: colour-tinted, inverted, tiny, on white, tiled...

scikit-image and pydicom are optional: without one of them its part is left out, silently (the corpus is then
smaller: about 110 items without scikit-image, about 30 fewer without pydicom).

:func:`write_corpus` writes a corpus to a folder: PNGs, and DICOM items as copies of their original ``.dcm`` files.

Example:
    >>> from braintumor.data.nonbrain import non_brain_corpus, write_corpus
    >>> items = non_brain_corpus(seed=0, kinds=["synthetic"], limit=3)
    >>> [(it.kind, it.image.ndim, str(it.image.dtype)) for it in items]
    [('synthetic', 3, 'uint8'), ('synthetic', 3, 'uint8'), ('synthetic', 3, 'uint8')]
    >>> paths = write_corpus(items, "ood_corpus")     # doctest: +SKIP
"""

from __future__ import annotations

import io
import re
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: The kinds of image in the corpus.
KINDS = ("photo", "document", "ct", "mr_other", "medical_other", "microscopy", "astronomy", "synthetic", "phantom")

#: Smallest side of a corpus image, in pixels.
MIN_SIDE = 16
#: Most DICOM items kept.
MAX_DICOM = 60


@dataclass(frozen=True)
class CorpusImage:
    """One non-brain image: a unique, stable ``name``, its ``kind`` and the ``(H, W, 3)`` ``uint8`` ``image``.

    ``source_file`` is the original file of a DICOM item (pydicom's bundled file), else ``None``.
    """

    name: str
    kind: str
    image: np.ndarray
    source_file: str | None = None


# ------------------------------------------------------------------------------------------------------ helpers


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator of its own per item, so that filtering by kind never changes the items that remain."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _rgb(arr: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D bool, float or integer array as contiguous ``(H, W, 3)`` ``uint8``."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        if a.max() <= 1.0 and a.min() >= 0.0:
            a = a * 255.0
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = _on_white(a)
    return np.ascontiguousarray(a[..., :3])


def _on_white(rgba: np.ndarray) -> np.ndarray:
    img = Image.fromarray(rgba, "RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(bg, img).convert("RGB"))


def _resize(arr: np.ndarray, h: int, w: int, resample=Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((max(1, int(w)), max(1, int(h))), resample))


def _jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"))


def _grey(arr: np.ndarray) -> np.ndarray:
    return _rgb(np.asarray(Image.fromarray(arr).convert("L")))


def _is_grey(arr: np.ndarray) -> bool:
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def _item(name: str, kind: str, image: np.ndarray, source_file: str | None = None) -> CorpusImage:
    image = _rgb(image)
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ValueError(f"{name}: image {image.shape} smaller than {MIN_SIDE} pixels a side")
    return CorpusImage(name, kind, image, source_file)


# ------------------------------------------------------------------------------------------------- scikit-image

# The samples shipped inside scikit-image (0.22-0.26) and their kind. Others (brain, cells3d, eagle, kidney,
# lily, skin, ...) are fetched from the network on first use and are never called here.
_SKIMAGE = {
    "astronaut": "photo", "binary_blobs": "synthetic", "brick": "photo", "camera": "photo", "cat": "photo",
    "cell": "microscopy", "checkerboard": "synthetic", "chelsea": "photo", "clock": "photo", "coffee": "photo",
    "coins": "photo", "colorwheel": "synthetic", "grass": "photo", "gravel": "photo", "horse": "synthetic",
    "hubble_deep_field": "astronomy", "immunohistochemistry": "microscopy", "logo": "document",
    "microaneurysms": "medical_other", "moon": "astronomy", "page": "document", "retina": "medical_other",
    "rocket": "photo", "shepp_logan_phantom": "phantom", "text": "document",
}
_VARIANTS = ("crop-0", "crop-1", "flip", "rotate", "rescale", "grey", "jpeg")
_N_FACES = 40
_VARIANT_MAX = 640


def _skimage_sample(data, name: str, seed: int) -> np.ndarray | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name == "binary_blobs":
                return _rgb(data.binary_blobs(length=256, rng=int(seed)))
            return _rgb(getattr(data, name)())
    except Exception:  # noqa: BLE001 - a sample missing from this scikit-image version, or not bundled
        return None


def _variant(img: np.ndarray, op: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    h, w = img.shape[:2]
    if op.startswith("crop"):
        ch = int(np.clip(rng.uniform(0.3, 0.7) * h, MIN_SIDE * 2, h))
        cw = int(np.clip(rng.uniform(0.3, 0.7) * w, MIN_SIDE * 2, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return op, img[y:y + ch, x:x + cw]
    if op == "flip":
        return op, img[::-1] if rng.random() < 0.5 else img[:, ::-1]
    if op == "rotate":
        fill = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
        angle = float(rng.uniform(15, 345))
        return op, np.asarray(Image.fromarray(img).rotate(angle, Image.BILINEAR, expand=True, fillcolor=fill))
    if op == "rescale":
        f = rng.uniform(0.2, 0.6) if max(h, w) > 400 else rng.uniform(1.5, 2.5)
        return op, _resize(img, max(MIN_SIDE, round(h * f)), max(MIN_SIDE, round(w * f)))
    if op == "grey":
        # A grey source has no colour to drop: invert it instead.
        return ("invert", 255 - img) if _is_grey(img) else ("grey", _grey(img))
    if op == "jpeg":
        return op, _jpeg(img, int(rng.integers(5, 41)))
    raise ValueError(op)


def _skimage_items(seed: int, kinds: set[str]) -> Iterator[CorpusImage]:
    try:
        from skimage import data
    except ImportError:
        return
    for name, kind in _SKIMAGE.items():
        if kind not in kinds:
            continue
        img = _skimage_sample(data, name, seed)
        if img is None:
            continue
        yield _item(f"skimage/{name}", kind, img)
        h, w = img.shape[:2]
        if max(h, w) > _VARIANT_MAX:  # variants of the large samples (retina, Hubble) from a smaller copy: faster
            f = _VARIANT_MAX / max(h, w)
            img = _resize(img, round(h * f), round(w * f), Image.LANCZOS)
        for op in _VARIANTS:
            label, out = _variant(img, op, _rng(seed, f"skimage/{name}/{op}"))
            yield _item(f"skimage/{name}/{label}", kind, out)
    if "photo" in kinds:
        try:
            # (200, 25, 25) float in [0, 1]: the first 100 are faces, the other 100 are patches that are not faces.
            faces = np.asarray(data.lfw_subset())[:100]
        except Exception:  # noqa: BLE001 - not in this scikit-image version
            return
        rng = _rng(seed, "skimage/lfw_subset")
        for idx in sorted(rng.choice(len(faces), size=min(_N_FACES, len(faces)), replace=False).tolist()):
            side = int(rng.integers(128, 257))
            face = _rgb(faces[idx])
            yield _item(f"skimage/lfw_subset/face-{idx:03d}", "photo", _resize(face, side, side, Image.BICUBIC))


# ------------------------------------------------------------------------------------------------------- pydicom

# Brain or head MR files are excluded: they are not "non-brain". By header: an MR whose body part or
# study/series/protocol description names the brain or head (or a head/neck MR angiogram or localiser), which
# drops pydicom's dicomdirtests/98892003 MR1, MR2 and MR700 files (16x16 fragments of "Brain", "Brain-MRA" and
# "Carotids" localisers and angiograms). By eye (contact sheet of every decodable file, pydicom 3.0): no other
# bundled file is a brain MR slice. MR_small is a 64x64, 20 mm field-of-view MR crop with no recognisable brain
# anatomy and is kept (as "mr_other"); examples_overlay is an abdominal MR. Head *CT* slices (693_J2KI,
# J2K_pixelrep_mismatch, dicomdirtests CT2 "HEAD/BRAIN") are kept as "ct": they are not MRI.
# Also left out: files under 16 pixels a side (rtdose*, SC_rgb_small_odd*), files without pixel data (reports,
# plans, DICOMDIRs...) and files the installed handlers cannot decode (JPEG-LS, 12-bit JPEG... without plugins).
_BRAIN_MR = re.compile(r"brain|head|neuro|skull|cereb|carotid|\bmra\b|angio", re.IGNORECASE)
_EXCLUDE_BY_EYE: frozenset[str] = frozenset()  # file stems found to be brain MR by looking; none in pydicom 3.0
_SYNTHETIC_MODALITIES = {"", "OT"}  # secondary captures of test patterns (colour bars, quadtrees)


def _dicom_kind(ds) -> str | None:
    modality = str(ds.get("Modality", "") or "").upper()
    text = " ".join(str(ds.get(k, "") or "") for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription",
                                                           "ProtocolName"))
    if modality == "MR":
        return None if _BRAIN_MR.search(text) else "mr_other"
    if modality == "CT":
        return "ct"
    return "synthetic" if modality in _SYNTHETIC_MODALITIES else "medical_other"


def _thumb(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).convert("L").resize((16, 16), Image.BILINEAR), np.float32)


@lru_cache(maxsize=2)
def _dicom_scan() -> tuple[tuple[str, str, str, np.ndarray], ...]:
    """``(name, kind, file, image)`` of the usable, distinct bundled DICOM images (seed-independent, cached)."""
    try:
        from pydicom.data import get_testdata_files
    except ImportError:
        return ()
    import pydicom

    from .dicom import has_dicom_magic, read_dicom

    try:
        files = sorted(get_testdata_files())
    except Exception:  # noqa: BLE001 - an unusual pydicom install
        return ()
    kept: list[tuple[str, str, str, np.ndarray]] = []
    thumbs: list[tuple[float, np.ndarray]] = []
    for f in files:
        if len(kept) >= MAX_DICOM:
            break
        path = Path(f)
        if path.suffix.lower() in (".txt", ".json", ".dump", ".gz", ".icc", ".py") or not has_dicom_magic(path):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                kind = _dicom_kind(ds)
                if kind is None or path.stem in _EXCLUDE_BY_EYE:
                    continue
                img = _rgb(read_dicom(path, window="auto"))
        except Exception:  # noqa: BLE001 - UnreadableImageError and pydicom's many: skip quietly
            continue
        if min(img.shape[:2]) < MIN_SIDE:
            continue
        th = _thumb(img)
        aspect = img.shape[1] / img.shape[0]
        if any(abs(aspect / a - 1) < 0.02 and float(np.abs(th - t).mean()) < 6.0 for a, t in thumbs):
            continue  # the same picture in another transfer syntax or size
        thumbs.append((aspect, th))
        rel = path.relative_to(_root(path))
        name = "pydicom/" + (rel.with_suffix("") if rel.suffix.lower() == ".dcm" else rel).as_posix()
        img.setflags(write=False)
        kept.append((name, kind, str(path), img))
    return tuple(kept)


def _root(p: Path) -> Path:
    """pydicom's ``test_files`` folder, the common root of its bundled files."""
    for parent in p.parents:
        if parent.name == "test_files":
            return parent
    return p.parent


def _pydicom_items(seed: int, kinds: set[str]) -> Iterator[CorpusImage]:
    for name, kind, path, img in _dicom_scan():
        if kind in kinds:
            yield CorpusImage(name, kind, np.array(img), path)


# ----------------------------------------------------------------------------------------------------- synthetic

_WORDS = ("lorem ipsum dolor sit amet invoice total due patient report page figure table summary brain tumour "
          "not an image hello world 2024 scan result quick brown fox jumps over lazy dog").split()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # noqa: BLE001 - Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text(rng: np.random.Generator, dark: bool) -> np.ndarray:
    h, w = int(rng.integers(120, 400)), int(rng.integers(200, 600))
    bg, fg = ((0, 0, 0), (255, 255, 255)) if dark else ((255, 255, 255), (0, 0, 0))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    size = int(rng.integers(10, 28))
    font = _font(size)
    y = int(rng.integers(2, 12))
    while y < h - size:
        line = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 9))).tolist())
        draw.text((int(rng.integers(2, 20)), y), line, fill=fg, font=font)
        y += int(size * rng.uniform(1.2, 1.8))
    return np.asarray(img)


def _shapes(rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(96, 384)), int(rng.integers(96, 384))
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 15))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        shape = rng.integers(0, 4)
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 2:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(pts, fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 8)))
    return np.asarray(img)


def _size(rng: np.random.Generator, lo: int = 64, hi: int = 512) -> tuple[int, int]:
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def _blank(rng: np.random.Generator, level) -> np.ndarray:
    h, w = _size(rng)
    return np.broadcast_to(np.asarray(level, np.uint8), (h, w, 3)).copy()


def _noise(rng: np.random.Generator, colour: bool) -> np.ndarray:
    h, w = _size(rng)
    a = rng.normal(rng.uniform(60, 190), rng.uniform(10, 80), (h, w, 3 if colour else 1))
    return np.clip(a, 0, 255).astype(np.uint8)


def _salt_pepper(rng: np.random.Generator) -> np.ndarray:
    h, w = _size(rng)
    base = np.full((h, w), rng.integers(0, 256), np.uint8)
    u = rng.random((h, w))
    p = rng.uniform(0.02, 0.3)
    base[u < p / 2] = 0
    base[u > 1 - p / 2] = 255
    return base


def _linear(rng: np.random.Generator) -> np.ndarray:
    h, w = _size(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if rng.random() < 0.4:
        c0, c1 = np.full(3, c0[0]), np.full(3, c1[0])
    return (c0 + t[..., None] * (c1 - c0.astype(np.float32))).astype(np.uint8)


def _radial(rng: np.random.Generator) -> np.ndarray:
    h, w = _size(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    r = np.hypot(yy - cy, xx - cx)
    t = r / max(float(r.max()), 1e-6)
    if rng.random() < 0.5:
        t = 1 - t
    c = rng.integers(0, 256, 3) if rng.random() < 0.5 else np.full(3, 255)
    return (t[..., None] * c).astype(np.uint8)


def _checker(rng: np.random.Generator) -> np.ndarray:
    h, w = _size(rng)
    sq = int(rng.integers(2, 64))
    yy, xx = np.mgrid[0:h, 0:w]
    on = ((yy // sq + xx // sq) % 2).astype(bool)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if rng.random() < 0.5:
        a, b = np.zeros(3, int), np.full(3, 255)
    return np.where(on[..., None], a, b).astype(np.uint8)


def _disc(rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(64, 384))
    yy, xx = np.mgrid[0:side, 0:side]
    cy, cx = rng.uniform(0.35, 0.65) * side, rng.uniform(0.35, 0.65) * side
    r = rng.uniform(0.15, 0.45) * side
    return (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.uint8) * 255


def _extreme(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    pick = rng.integers(0, 3)
    if pick == 0:
        return np.clip(rng.normal(128, 50, (h, w)), 0, 255).astype(np.uint8)
    t = np.linspace(0, 255, max(h, w), dtype=np.float32)
    grad = np.broadcast_to(t[None, :w] if w >= h else t[:h, None], (h, w))
    return grad.astype(np.uint8) if pick == 1 else (255 - grad).astype(np.uint8)


def _synthetic_specs() -> list[tuple[str, Callable[[np.random.Generator], np.ndarray]]]:
    specs: list[tuple[str, Callable[[np.random.Generator], np.ndarray]]] = [
        ("blank-black", lambda r: _blank(r, 0)),
        ("blank-white", lambda r: _blank(r, 255)),
        ("blank-grey", lambda r: _blank(r, 128)),
        ("blank-dark", lambda r: _blank(r, 12)),
    ]
    specs += [(f"blank-level-{i}", lambda r: _blank(r, int(r.integers(0, 256)))) for i in range(2)]
    specs += [(f"blank-colour-{i}", lambda r: _blank(r, r.integers(0, 256, 3))) for i in range(3)]
    specs += [(f"noise-{i}", lambda r: _noise(r, False)) for i in range(5)]
    specs += [(f"noise-colour-{i}", lambda r: _noise(r, True)) for i in range(4)]
    specs += [(f"salt-pepper-{i}", _salt_pepper) for i in range(6)]
    specs += [(f"gradient-{i}", _linear) for i in range(7)]
    specs += [(f"radial-{i}", _radial) for i in range(5)]
    specs += [(f"checkerboard-{i}", _checker) for i in range(6)]
    specs += [(f"text-white-{i}", lambda r: _text(r, dark=False)) for i in range(6)]
    specs += [(f"text-black-{i}", lambda r: _text(r, dark=True)) for i in range(6)]
    specs += [(f"shapes-{i}", _shapes) for i in range(10)]
    specs += [(f"disc-{i}", _disc) for i in range(4)]
    for h, w in ((50, 1000), (1000, 50), (16, 800), (800, 16), (40, 2000)):
        specs.append((f"aspect-{w}x{h}", lambda r, h=h, w=w: _extreme(r, h, w)))
    return specs


def _synthetic_items(seed: int, kinds: set[str]) -> Iterator[CorpusImage]:
    if "synthetic" not in kinds:
        return
    for label, make in _synthetic_specs():
        name = f"synthetic/{label}"
        yield _item(name, "synthetic", make(_rng(seed, name)))


# ------------------------------------------------------------------------------------------------------ phantoms


def _phantom_specs() -> list[tuple[str, Callable[[np.random.Generator], np.ndarray]]]:
    from .synthetic import make_phantom

    def base(r, size=128, tumour=None):
        return make_phantom(r, size, bool(r.random() < 0.5) if tumour is None else tumour)[0]

    def tint(r):
        g = base(r).astype(np.float32)
        c = r.uniform(0.2, 1.0, 3)
        c[int(r.integers(0, 3))] = 1.0
        return (g[..., None] * c).astype(np.uint8)

    def false_colour(r):
        g = base(r)
        return np.stack([g, np.roll(g, int(r.integers(5, 30)), axis=1), 255 - g], axis=2)

    def tiled(r):
        tiles = [base(r, 64) for _ in range(4)]
        return np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])

    def on_white(r):
        g = base(r)
        return np.where(g < 20, 255, g).astype(np.uint8)

    def stretched(r):
        g = base(r)
        return _resize(g, 128, int(r.integers(300, 480)))

    def noisy(r):
        g = base(r).astype(np.float32) + r.normal(0, 70, (128, 128))
        return np.clip(g, 0, 255).astype(np.uint8)

    def half(r):
        g = base(r, 160)
        return g[:, :80] if r.random() < 0.5 else g[:80]

    specs: list[tuple[str, Callable[[np.random.Generator], np.ndarray]]] = []
    specs += [(f"tinted-{i}", tint) for i in range(3)]
    specs += [("false-colour", false_colour)]
    specs += [(f"inverted-{i}", lambda r: 255 - base(r)) for i in range(2)]
    specs += [("tiny-16", lambda r: base(r, 16)), ("tiny-24", lambda r: base(r, 24))]
    specs += [("tiled-2x2", tiled), ("on-white", on_white), ("stretched", stretched), ("noisy", noisy)]
    specs += [("half", half)]
    return specs


def _phantom_items(seed: int, kinds: set[str]) -> Iterator[CorpusImage]:
    if "phantom" not in kinds:
        return
    for label, make in _phantom_specs():
        name = f"phantom/{label}"
        yield _item(name, "phantom", make(_rng(seed, name)))


# ---------------------------------------------------------------------------------------------------------- API


def non_brain_corpus(*, seed: int = 0, kinds: Iterable[str] | None = None,
                     limit: int | None = None) -> list[CorpusImage]:
    """Images that are not brain-MRI slices, deterministic for ``seed`` (see the module docstring for the parts).

    Args:
        seed: seeds every random choice (crops, noise, text, phantoms...). Items of a kind are the same whatever
            ``kinds`` asks for; pydicom items do not depend on the seed.
        kinds: keep only these kinds (from :data:`KINDS`); default all.
        limit: at most this many items, taken in turn from each kind (in :data:`KINDS` order) so that a small
            corpus still covers every kind.

    Returns:
        ``CorpusImage`` items with unique names, in a stable order (scikit-image, pydicom, synthetic, phantoms).
        Without scikit-image or pydicom installed, that part is left out (no error).

    Raises:
        ValueError: an unknown kind, or a negative ``limit``.
    """
    wanted = set(KINDS) if kinds is None else set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    items: list[CorpusImage] = []
    for part in (_skimage_items, _pydicom_items, _synthetic_items, _phantom_items):
        items.extend(it for it in part(seed, wanted) if it.kind in wanted)
    if limit is None or limit >= len(items):
        return items
    by_kind = {k: [it for it in items if it.kind == k] for k in KINDS}
    chosen: set[str] = set()
    depth = 0
    while len(chosen) < limit:
        for k in KINDS:
            if depth < len(by_kind[k]) and len(chosen) < limit:
                chosen.add(by_kind[k][depth].name)
        depth += 1
    return [it for it in items if it.name in chosen]


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "__")).strip("-.") or "image"


def write_corpus(items: Iterable[CorpusImage], folder: str | Path) -> list[Path]:
    """Write ``items`` into ``folder`` (created): a PNG each, named after the item (``/`` becomes ``__``); DICOM
    items are copies of their original file, as ``.dcm``. Returns the written paths, in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for it in items:
        suffix = ".dcm" if it.source_file else ".png"
        stem = _file_name(it.name)
        fname, n = stem + suffix, 1
        while fname.lower() in used:
            fname, n = f"{stem}-{n}{suffix}", n + 1
        used.add(fname.lower())
        out = folder / fname
        if it.source_file:
            shutil.copyfile(it.source_file, out)
        else:
            Image.fromarray(np.ascontiguousarray(it.image, np.uint8)).save(out)
        written.append(out)
    return written
