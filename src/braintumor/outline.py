"""A tumour probability map -> a clinician's outline: area (pixels, mm²), bounding box, contour on the original image.

A run trained with tumour masks (``braintumor train --masks DIR``) predicts, with the class probabilities, a tumour
probability map at the prepared geometry (``img_size`` square: the image cropped to the brain, padded to a square,
resized). :func:`outline` turns such a map into what a reader wants on the scan they sent:

* the map is thresholded (default 0.5) and split into connected regions (8-connectivity); specks smaller than
  ``min_area`` prepared pixels are dropped (counted in ``specks_dropped``); the padding added by the preprocessing is
  never part of a region;
* each region's area in prepared pixels and in **original-image pixels** (the prepare geometry inverted:
  :class:`Geometry`), and in **mm²** when the pixel spacing is known (DICOM ``PixelSpacing``, NIfTI ``pixdim``:
  :func:`pixel_spacing`; ``null`` for JPEG/PNG, which carry no physical size);
* bounding boxes and contours in original-image coordinates: ``x`` to the right, ``y`` down, ``(0, 0)`` the image's
  top-left corner (pixel ``(row r, column c)`` covers ``x`` in ``[c, c + 1)``, ``y`` in ``[r, r + 1)``), so an SVG
  with ``viewBox="0 0 W H"`` over the image draws them as they are. Contours are marching-squares iso-lines of the
  map at the threshold (``contourpy``, which matplotlib already installs), simplified (Douglas-Peucker, about half a
  prepared pixel) and exclude holes;
* the largest region and the total over regions, whether anything was ``found``, and the highest probability.

Everything is a plain JSON-serialisable ``dict``. :func:`draw_outline` draws outlines on an RGB image (reports,
figures); :func:`predict_outlines` predicts files and outlines them in one model pass per batch (``braintumor
predict --outline``).

Example:
    >>> import numpy as np
    >>> from braintumor.outline import Geometry, outline
    >>> prob = np.zeros((64, 64), np.float32)
    >>> prob[20:30, 10:20] = 0.9                                  # a 10 x 10 tumour on the prepared image
    >>> g = Geometry(height=128, width=256, box=(0, 0, 128, 256), size=64)   # 256 x 128 image, no crop
    >>> o = outline(prob, g, spacing=(0.5, 0.5))
    >>> o["found"], o["area_prepared_px"], o["area_px"], o["area_mm2"]
    (True, 100, 1600.0, 400.0)
    >>> o["bbox"]                                                 # x0, y0, x1, y1 on the 256 x 128 image
    [40.0, 16.0, 80.0, 56.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .inference import NO_TUMOUR_MAP, Prediction

#: Default threshold on the tumour probability.
THRESHOLD = 0.5
#: Default speck size, as a fraction of the prepared image's pixels (10 pixels at 224 px), at least
#: :data:`MIN_AREA_FLOOR` pixels.
MIN_AREA_FRACTION = 0.0002
MIN_AREA_FLOOR = 4
#: Regions listed in the output (largest first); the totals count every region.
MAX_COMPONENTS = 20
COORDINATES = "original image pixels: x right, y down, (0, 0) the image's top-left corner"
NO_DECODER = NO_TUMOUR_MAP


# ------------------------------------------------------------------------------------------------ geometry


def _out(y: np.ndarray, x: np.ndarray):
    return (float(y), float(x)) if y.ndim == 0 and x.ndim == 0 else (y, x)


@dataclass(frozen=True)
class Geometry:
    """How :meth:`~braintumor.preprocess.Preprocessor.prepare` mapped one image: its size, the crop, the output size.

    ``prepare`` crops ``box`` = ``(top, left, bottom, right)`` out of the ``height x width`` image, centres the crop
    on a black square of side ``max(crop height, crop width)`` and resizes that square to ``size``. The mapping is
    a scale and a shift per axis; :meth:`to_original` inverts it (continuous coordinates: edges, not centres).

    Example:
        >>> from braintumor.outline import Geometry
        >>> g = Geometry(height=200, width=300, box=(50, 0, 150, 300), size=100)   # crop 100 x 300 -> pad 300
        >>> g.scale, g.pad
        (3.0, (100, 0))
        >>> g.to_original(50.0, 50.0)                          # the prepared centre -> the crop's centre
        (100.0, 150.0)
    """

    height: int
    width: int
    box: tuple[int, int, int, int]
    size: int

    @classmethod
    def identity(cls, size: int) -> Geometry:
        """The prepared image itself (outlines in prepared coordinates)."""
        return cls(int(size), int(size), (0, 0, int(size), int(size)), int(size))

    @classmethod
    def of(cls, preprocessor, image: np.ndarray) -> Geometry:
        """The geometry ``preprocessor.prepare(image)`` applies (finds the crop box: costs one crop detection)."""
        h, w = image.shape[:2]
        return cls(int(h), int(w), tuple(int(v) for v in preprocessor.crop_box(image)), int(preprocessor.img_size))

    @property
    def side(self) -> int:
        """Side of the padded square (before the resize)."""
        top, left, bottom, right = self.box
        return max(bottom - top, right - left)

    @property
    def scale(self) -> float:
        """Original pixels per prepared pixel (along each axis)."""
        return self.side / self.size

    @property
    def pad(self) -> tuple[int, int]:
        """``(top, left)`` padding of the crop on its square, in original pixels."""
        top, left, bottom, right = self.box
        return (self.side - (bottom - top)) // 2, (self.side - (right - left)) // 2

    def to_original(self, y, x):
        """Prepared coordinates (edges: ``0`` is the top/left border) -> original-image coordinates ``(y, x)``
        (floats, or arrays for arrays)."""
        s, (pt, pl) = self.scale, self.pad
        return _out(np.asarray(y, float) * s - pt + self.box[0], np.asarray(x, float) * s - pl + self.box[1])

    def to_prepared(self, y, x):
        """The inverse of :meth:`to_original`."""
        s, (pt, pl) = self.scale, self.pad
        return _out((np.asarray(y, float) - self.box[0] + pt) / s, (np.asarray(x, float) - self.box[1] + pl) / s)

    def content_mask(self) -> np.ndarray:
        """``bool`` ``(size, size)``: prepared pixels whose centre lies on the image (not on the padding)."""
        c = np.arange(self.size) + 0.5
        ys, xs = self.to_original(c, c)
        top, left, bottom, right = self.box
        return ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]


def prepare_with_geometry(preprocessor, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """``preprocessor.prepare(image)`` and its :class:`Geometry`, with one crop detection."""
    prepared, box = preprocessor.prepare_with_box(image)
    h, w = image.shape[:2]
    return prepared, Geometry(int(h), int(w), tuple(int(v) for v in box), int(preprocessor.img_size))


# ------------------------------------------------------------------------------------------------ pixel spacing


def _spacing(values) -> tuple[float, float] | None:
    try:
        r, c = (float(v) for v in list(values)[:2])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(r) and math.isfinite(c) and r > 0 and c > 0):
        return None
    return r, c


def _dicom_spacing(path: Path) -> tuple[float, float] | None:
    from .data import dicom

    if path.is_dir():
        files = dicom.series_files(path)
        if not files:
            return None
        path = files[0]
    ds = dicom._read_header(path, stop_before_pixels=True)
    if "PixelSpacing" in ds:
        return _spacing(ds.PixelSpacing)
    value = dicom._functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing")  # enhanced multi-frame
    return _spacing(value) if value is not None else None


#: NIfTI ``xyzt_units`` spatial codes -> millimetres per unit (0 = unknown: read as mm, the usual convention).
_NIFTI_MM = {0: 1.0, 1: 1000.0, 2: 1.0, 3: 0.001}


def _nifti_spacing(path: Path) -> tuple[float, float] | None:
    from .data import nifti

    img, shape = nifti._load(path)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    unit = _NIFTI_MM.get(int(img.header["xyzt_units"]) & 0x07)
    if unit is None:
        return None
    if len(shape) >= 3:
        import nibabel as nib

        ornt = nib.io_orientation(img.affine)
        canonical = [1.0, 1.0, 1.0]
        for stored, (axis, _flip) in enumerate(ornt[:3]):
            if not np.isnan(axis):
                canonical[int(axis)] = zooms[stored]
        row, col = canonical[1], canonical[0]  # slices: rows run along y (A-P), columns along x (R-L)
    else:
        row, col = zooms[1], zooms[0]
    return _spacing((row * unit, col * unit))


def pixel_spacing(path: str | Path) -> tuple[float, float] | None:
    """``(row, column)`` pixel spacing in mm of an image as :func:`~braintumor.data.read.read_image` reads it.

    DICOM: ``PixelSpacing`` (or the enhanced multi-frame ``PixelMeasuresSequence``; a series folder: its first
    slice). NIfTI: the header's ``pixdim`` of the axes that become a slice's rows and columns (after the canonical
    reorientation), in mm. ``None`` for raster images (JPEG, PNG...: no physical size), when pydicom/nibabel is
    missing, or when the header has no usable spacing. Slice references (``vol.nii.gz#12``) name their volume's.

    Example:
        >>> from braintumor.outline import pixel_spacing
        >>> pixel_spacing("scan.dcm")                        # doctest: +SKIP
        (0.46875, 0.46875)
        >>> pixel_spacing("scan.png") is None                # doctest: +SKIP
        True
    """
    from .data.read import image_format, split_ref
    from .errors import UnreadableImageError

    p = Path(path)
    if not p.exists():
        p = split_ref(p)[0]
    if not p.exists():
        return None
    try:
        kind = image_format(p)
        if kind in ("DICOM", "DICOM series"):
            return _dicom_spacing(p)
        if kind == "NIfTI":
            return _nifti_spacing(p)
    except (UnreadableImageError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    return None


# ------------------------------------------------------------------------------------------------ the outline


def default_min_area(size: int) -> int:
    """Smallest region kept, in prepared pixels, for a ``size`` x ``size`` map."""
    return max(MIN_AREA_FLOOR, int(round(MIN_AREA_FRACTION * size * size)))


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of an open or closed polyline ``(n, 2)``."""
    if len(points) < 4 or tolerance <= 0:
        return points
    keep = np.zeros(len(points), bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = points[i], points[j]
        seg = points[i + 1:j] - a
        d = b - a
        n = float(np.hypot(*d))
        dist = np.abs(seg[:, 0] * d[1] - seg[:, 1] * d[0]) / n if n > 0 else np.hypot(seg[:, 0], seg[:, 1])
        k = int(np.argmax(dist))
        if dist[k] > tolerance:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return points[keep]


def _loops(z: np.ndarray, level: float) -> list[np.ndarray]:
    """Closed iso-lines of ``z`` at ``level`` (``z`` zero on its border), ``(n, 2)`` of (row, column) centres,
    outer boundaries only (holes run the other way round)."""
    import contourpy

    lines = contourpy.contour_generator(z=z, name="serial", line_type="Separate").lines(level)
    loops = [ln[:, ::-1] for ln in lines if len(ln) >= 3]
    if not loops:
        return []
    area = [0.5 * float(np.sum(p[:, 1] * np.roll(p[:, 0], -1) - np.roll(p[:, 1], -1) * p[:, 0])) for p in loops]
    outer = np.sign(area[int(np.argmax(np.abs(area)))])
    return [p for p, a in zip(loops, area, strict=True) if np.sign(a) == outer]


def _r(v: float, nd: int = 1) -> float:
    return round(float(v), nd)


def _bbox(geo: Geometry, sl: tuple[slice, slice]) -> list[float]:
    y, x = geo.to_original(np.array([sl[0].start, sl[0].stop], float), np.array([sl[1].start, sl[1].stop], float))
    y = np.clip(y, 0, geo.height)
    x = np.clip(x, 0, geo.width)
    return [_r(x[0]), _r(y[0]), _r(x[1]), _r(y[1])]


def lesion_found(prob: np.ndarray, *, threshold: float = THRESHOLD, min_area: int | None = None) -> bool:
    """Whether :func:`outline` of a map ``(S, S)`` would find a region (``found``), without tracing it: a
    connected region (8-connectivity) of ``prob >= threshold`` of at least ``min_area`` prepared pixels
    (default :func:`default_min_area`).

    Example:
        >>> m = np.zeros((64, 64), np.float32); m[10:14, 10:14] = 0.9
        >>> lesion_found(m), lesion_found(m, min_area=20), lesion_found(m * 0.5)
        (True, False, False)
    """
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"expected a square (S, S) map, got shape {p.shape}")
    min_area = default_min_area(p.shape[0]) if min_area is None else max(1, int(min_area))
    _labels, sizes = _regions(np.nan_to_num(p), threshold)
    return bool(len(sizes)) and int(sizes.max()) >= min_area


def _regions(p: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions (8-connectivity) of ``p >= threshold``: the label image and each region's size."""
    labels, n = ndimage.label(p >= threshold, structure=np.ones((3, 3), bool))
    return labels, np.bincount(labels.ravel(), minlength=n + 1)[1:]


def outline(prob: np.ndarray, geometry: Geometry | None = None, *, threshold: float = THRESHOLD,
            min_area: int | None = None, spacing: Sequence[float] | None = None, tolerance: float = 0.5,
            max_components: int = MAX_COMPONENTS) -> dict:
    """The outline of one tumour probability map ``(S, S)`` (see the module docstring for every field).

    Args:
        prob: tumour probabilities at the prepared geometry, ``(S, S)`` in ``[0, 1]``.
        geometry: how the image was prepared (:class:`Geometry`); ``None``: the prepared image itself.
        threshold: pixels with ``prob >= threshold`` are tumour.
        min_area: regions smaller than this (prepared pixels) are dropped as specks (default
            :func:`default_min_area`).
        spacing: ``(row, column)`` pixel spacing of the original image in mm (``area_mm2`` is ``None`` without).
        tolerance: contour simplification, in prepared pixels.
        max_components: regions listed (largest first); ``n_components`` and the totals count all.

    Returns:
        ``found``, ``threshold``, ``max_probability``, ``n_components``, ``area_px`` (original pixels),
        ``area_prepared_px``, ``area_mm2``, ``pixel_spacing_mm``, ``bbox`` (``[x0, y0, x1, y1]``, all regions),
        ``largest`` (area, bbox, max probability of the largest region), ``components`` (each with its
        ``contours``: lists of ``[x, y]``), ``specks_dropped``, ``min_area_prepared_px``, ``image_size`` and
        ``coordinates`` (the convention, in words).
    """
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"expected a square (S, S) map, got shape {p.shape}")
    size = p.shape[0]
    geo = geometry or Geometry.identity(size)
    if geo.size != size:
        raise ValueError(f"map of side {size} but the geometry prepares to {geo.size}")
    p = np.where(np.isfinite(p), p, 0.0).astype(np.float32)
    p[~geo.content_mask()] = 0.0  # never outline the padding
    min_area = default_min_area(size) if min_area is None else max(1, int(min_area))
    spacing = None if spacing is None else tuple(float(v) for v in spacing)
    px_mm2 = spacing[0] * spacing[1] if spacing else None
    area1 = geo.scale ** 2  # original pixels per prepared pixel

    labels, sizes = _regions(p, threshold)
    n = len(sizes)
    kept = [k + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= min_area]
    objects = ndimage.find_objects(labels) if n else []
    comps = []
    for rank, k in enumerate(kept):
        sl = objects[k - 1]
        a = int(sizes[k - 1])
        comp = {"area_px": _r(a * area1), "area_prepared_px": a,
                "area_mm2": None if px_mm2 is None else _r(a * area1 * px_mm2, 2),
                "bbox": _bbox(geo, sl), "max_probability": _r(p[sl][labels[sl] == k].max(), 4)}
        if rank < max_components:
            # The map around this region only (one pixel of margin: below the threshold by construction),
            # on a zero border so every iso-line closes.
            r0, r1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, size)
            c0, c1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, size)
            near = ndimage.binary_dilation(labels[r0:r1, c0:c1] == k, structure=np.ones((3, 3), bool))
            z = np.pad(np.where(near, p[r0:r1, c0:c1], 0.0), 1)
            contours = []
            for loop in _loops(z, threshold):
                loop = _simplify(loop, tolerance)
                ys, xs = geo.to_original(loop[:, 0] + r0 - 1 + 0.5, loop[:, 1] + c0 - 1 + 0.5)
                xs, ys = np.clip(xs, 0, geo.width), np.clip(ys, 0, geo.height)
                contours.append([[_r(x), _r(y)] for x, y in zip(xs, ys, strict=True)])
            comp["contours"] = contours
        comps.append(comp)
    total = int(sum(c["area_prepared_px"] for c in comps))
    bbox = None
    if comps:
        boxes = np.array([c["bbox"] for c in comps])
        bbox = [_r(boxes[:, 0].min()), _r(boxes[:, 1].min()), _r(boxes[:, 2].max()), _r(boxes[:, 3].max())]
    largest = {k: v for k, v in comps[0].items() if k != "contours"} if comps else None
    return {
        "found": bool(comps), "threshold": float(threshold), "max_probability": _r(p.max() if p.size else 0.0, 4),
        "n_components": len(comps), "area_px": _r(total * area1), "area_prepared_px": total,
        "area_mm2": None if px_mm2 is None else _r(total * area1 * px_mm2, 2),
        "pixel_spacing_mm": list(spacing) if spacing else None, "bbox": bbox, "largest": largest,
        "components": comps[:max_components], "specks_dropped": int(n - len(kept)),
        "min_area_prepared_px": min_area, "image_size": {"width": geo.width, "height": geo.height},
        "coordinates": COORDINATES,
    }


def mask_outline(mask: np.ndarray, geometry: Geometry | None = None, **kwargs) -> dict:
    """:func:`outline` of a binary mask (e.g. a reference lesion mask at the prepared geometry); no speck removal
    unless ``min_area`` is given."""
    kwargs.setdefault("min_area", 1)
    return outline(np.asarray(mask).astype(np.float32), geometry, **kwargs)


def contours_of(out: dict) -> list[list[list[float]]]:
    """Every contour of an :func:`outline` result (lists of ``[x, y]``)."""
    return [c for comp in out.get("components") or [] for c in comp.get("contours") or []]


def draw_outline(image: np.ndarray, out: dict, color: Sequence[int] = (0, 255, 0), width: int | None = None,
                 scale: float = 1.0, offset: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """A copy of ``image`` (``(H, W, 3)`` ``uint8``, or ``(H, W)``) with the outline's contours drawn as closed lines.

    ``image`` is in the outline's coordinates, or in ``(x - offset[0]) * scale, (y - offset[1]) * scale`` of them
    (a crop at ``offset``, resized by ``scale``). ``width``: line width in pixels (default: about 1/160 of the
    image's smaller side).

    Example:
        >>> import numpy as np
        >>> from braintumor.outline import draw_outline, outline
        >>> prob = np.zeros((64, 64), np.float32); prob[20:40, 20:40] = 1
        >>> img = draw_outline(np.zeros((64, 64, 3), np.uint8), outline(prob), color=(255, 0, 0))
        >>> int(img[20:40, 20:40, 0].max()), int(img[0, 0, 0])
        (255, 0)
    """
    from PIL import Image, ImageDraw

    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    im = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
    if width is None:
        width = max(1, int(round(min(im.size) / 160)))
    draw = ImageDraw.Draw(im)
    ox, oy = float(offset[0]), float(offset[1])
    for contour in contours_of(out):
        pts = [((float(x) - ox) * scale, (float(y) - oy) * scale) for x, y in contour]
        if len(pts) >= 2:
            draw.line(pts + [pts[0]], fill=tuple(int(c) for c in color), width=width, joint="curve")
    return np.asarray(im)


def outline_summary(out: dict | None) -> str:
    """One table cell: ``"1234 px (56.7 mm²)"``, ``"none"``, or ``""`` without an outline."""
    if not out:
        return ""
    if not out.get("found"):
        return "none"
    mm = f" ({out['area_mm2']:.1f} mm²)" if out.get("area_mm2") is not None else ""
    more = f", {out['n_components']} regions" if out.get("n_components", 0) > 1 else ""
    return f"{out['area_px']:.0f} px{mm}{more}"


# ------------------------------------------------------------------------------------------------ prediction


@dataclass
class OutlinedPrediction(Prediction):
    """A :class:`~braintumor.inference.Prediction` with its tumour ``outline`` (:func:`outline`; ``None`` when the
    file was unreadable)."""

    outline: dict | None = None

    def to_dict(self) -> dict:
        return dict(super().to_dict(), outline=self.outline)


def _read_one(path, pre):
    from .data.read import read_image, split_ref
    from .errors import UnreadableImageError
    from .ood import image_stats

    p = Path(path)
    try:
        img = read_image(p)
        stats = image_stats(img)
        prepared, geo = prepare_with_geometry(pre, img)
    except UnreadableImageError as exc:
        src = split_ref(p)[0]
        return exc.reason if exc.path in (p, src) else f"{exc.path.name}: {exc.reason}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "this file is unreadable"
        return f"{type(exc).__name__}: {exc}"
    return prepared, geo, pixel_spacing(p), stats


def require_tumour_map(predictor) -> None:
    """Raise :class:`~braintumor.errors.UsageError` (one line) when ``predictor`` has no tumour-map output."""
    from .errors import UsageError

    if not getattr(predictor, "has_tumour_map", False):
        raise UsageError(NO_DECODER)


def predict_outlines(predictor, paths: Sequence[str | Path], *, batch_size: int = 32, threshold: float = THRESHOLD,
                     min_area: int | None = None, progress: Callable[[int], None] | None = None
                     ) -> list[OutlinedPrediction]:
    """Predict files and outline their tumour maps: one model pass per batch (probabilities and maps together).

    Each file is read once; its crop is found once (:func:`prepare_with_geometry`), and its pixel spacing read from
    the header of DICOM/NIfTI inputs. An unreadable file gets an error row. The next batch is read while the
    model runs on the current one. Works on torch and onnxruntime predictors with a tumour map.

    Raises:
        UsageError: the predictor has no tumour map (a run trained without ``--masks``).

    Example:
        >>> from braintumor import load_run
        >>> from braintumor.outline import predict_outlines
        >>> rows = predict_outlines(load_run("runs/masked"), ["scan.dcm"])          # doctest: +SKIP
        >>> rows[0].outline["area_mm2"]                                          # doctest: +SKIP
        412.6
    """
    require_tumour_map(predictor)
    pre = predictor.preprocessor
    paths = list(paths)
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    rows: list[OutlinedPrediction] = []

    def load(chunk):
        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(lambda p: _read_one(p, pre), chunk))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="braintumor-read-ahead") as ahead:
        pending = ahead.submit(load, chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            loaded = pending.result()
            if k + 1 < len(chunks):
                pending = ahead.submit(load, chunks[k + 1])
            out = [OutlinedPrediction(str(p)) for p in chunk]
            ok = [j for j, r in enumerate(loaded) if not isinstance(r, str)]
            for j, r in enumerate(loaded):
                if isinstance(r, str):
                    out[j].error = r
            if ok:
                res = predictor.outputs_prepared(np.stack([loaded[j][0] for j in ok]), maps=True,
                                                 batch_size=batch_size)
                labels = predictor.labels_from_proba(res.proba)
                checks = predictor.assess(res.proba, labels, [loaded[j][3] for j in ok], res.scores)
                for j, pr, lab, m, a in zip(ok, res.proba, labels, res.maps, checks, strict=True):
                    _, geo, spacing, _ = loaded[j]
                    out[j].label = lab
                    out[j].probabilities = {c: float(v) for c, v in zip(predictor.classes, pr, strict=True)}
                    a.apply(out[j])
                    if a.verdict in ("not_brain_mri", "unfamiliar"):
                        out[j].outline = None  # a tumour outline on a rejected input would be meaningless
                    else:
                        out[j].outline = outline(m, geo, threshold=threshold, min_area=min_area, spacing=spacing)
            rows.extend(out)
            if progress is not None:
                progress(len(chunk))
    return rows
