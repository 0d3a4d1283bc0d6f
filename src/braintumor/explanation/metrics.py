"""How far to trust a heatmap: localisation against lesion masks and faithfulness to the model.

* :func:`pointing_game`: is the map's peak inside the lesion mask?
* :func:`heatmap_iou`: IoU of the thresholded map with the mask.
* :func:`dice_curve` / :func:`best_dice`: Dice of ``map >= t`` with the mask over thresholds ``0.05 .. 0.95``; the
  best one per image (an oracle threshold: optimistic) and at 0.5.
* :func:`peak_outside_brain`: is the map's peak off the head (:func:`head_masks` of the prepared image)?
* :func:`deletion_insertion`: RISE-style curves. Pixels are replaced by a blurred copy of the image in the order
  of the map (deletion: most important first; insertion: start from the blurred image and reveal the most
  important pixels first); the area under the target-class probability curve. A faithful map has a LOW
  deletion AUC and a HIGH insertion AUC, compared with a random map (:func:`random_maps`).
* :func:`randomisation_check`: Spearman correlation between the maps of the trained model and of a copy with
  re-initialised weights (Adebayo et al. 2018). A map that survives randomisation explains the image, not the
  model: a trustworthy method gives a LOW correlation.
* :func:`evaluate_explanations`: all of the above over a list of files with masks (``braintumor explain --masks``),
  overall and per class (the image's folder).

Masks go through exactly the geometry the image goes through (:func:`prepare_mask`).

Example:
    >>> import numpy as np
    >>> from braintumor.explanation.metrics import heatmap_iou, pointing_game
    >>> m = np.zeros((8, 8), np.float32); m[2, 3] = 1.0
    >>> mask = np.zeros((8, 8), bool); mask[1:4, 2:5] = True
    >>> pointing_game(m, mask), round(heatmap_iou(m, mask), 3)
    (True, 0.111)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.masks import find_mask, load_mask, prepare_mask  # noqa: F401  (re-exported)
from ..data.read import read_image
from ..errors import DataError, UnreadableImageError, UsageError
from ..inference import Predictor
from .core import Explanation, explain_prepared, heatmaps
from .saliency import DEFAULT_METHOD, blur_baseline, check_method

# ------------------------------------------------------------------------------------------------ masks


# load_mask, find_mask and prepare_mask live in braintumor.data.masks (training reads masks too).


# ------------------------------------------------------------------------------------------- localisation


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance: float = 0.0) -> bool:
    """``True`` when the map's maximum lies inside ``mask`` (a constant map points nowhere: ``False``).

    ``tolerance``: also a hit within this many pixels of the mask. The original pointing game (Zhang et al. 2016)
    uses 15 px at 224 px, i.e. ``tolerance = 15 / 224 * side`` (:func:`standard_tolerance`); 0 = strictly inside.
    """
    h = np.asarray(heatmap)
    mask = np.asarray(mask, bool)
    if not np.isfinite(h).all() or h.max() - h.min() <= 1e-12 or not mask.any():
        return False
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    if mask[y, x]:
        return True
    if tolerance <= 0:
        return False
    from scipy import ndimage

    return bool(ndimage.distance_transform_edt(~mask)[y, x] <= tolerance)


def standard_tolerance(side: int) -> float:
    """The pointing game's usual tolerance (15 px at 224 px) scaled to an image side."""
    return 15.0 / 224.0 * side


def heatmap_iou(heatmap: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of ``heatmap >= threshold`` (the map is in ``[0, 1]``) with ``mask``."""
    pred = np.asarray(heatmap) >= threshold
    mask = np.asarray(mask, bool)
    union = np.logical_or(pred, mask).sum()
    return float(np.logical_and(pred, mask).sum() / union) if union else 0.0


#: Thresholds of :func:`dice_curve`: 0.05, 0.10, ..., 0.95.
DICE_THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 2)


def dice_curve(heatmap: np.ndarray, mask: np.ndarray, thresholds: Sequence[float] = DICE_THRESHOLDS) -> np.ndarray:
    """Dice of ``heatmap >= t`` with ``mask`` for every threshold ``t`` (0 where both are empty)."""
    h = np.asarray(heatmap, np.float32).ravel()
    m = np.asarray(mask, bool).ravel()
    inside = np.sort(h[m])
    every = np.sort(h)
    t = np.asarray(thresholds, np.float32)
    tp = len(inside) - np.searchsorted(inside, t, side="left")     # mask pixels with h >= t
    pred = len(every) - np.searchsorted(every, t, side="left")     # pixels with h >= t
    denom = pred + len(inside)
    return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)


def best_dice(heatmap: np.ndarray, mask: np.ndarray, thresholds: Sequence[float] = DICE_THRESHOLDS
              ) -> tuple[float, float]:
    """``(Dice, threshold)`` at the threshold that suits this image best (an upper bound, not a deployable score)."""
    d = dice_curve(heatmap, mask, thresholds)
    k = int(np.argmax(d))
    return float(d[k]), float(np.asarray(thresholds)[k])


def heatmap_dice(heatmap: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of ``heatmap >= threshold`` with ``mask``."""
    return float(dice_curve(heatmap, mask, [threshold])[0])


def head_mask_prepared(image: np.ndarray, level: float = 0.08) -> np.ndarray:
    """``bool`` ``(S, S)`` mask of the whole head (scalp, skull, face included) in a prepared ``uint8`` image.

    Lightly blurred grey level above ``border + level * (p99 - border)`` (``border``: the median of the outer
    frame, so a grey background works too), closed (joins a scalp ring broken by dark bone), its largest region,
    holes filled. Deliberately inclusive: :func:`braintumor.augment.head_mask` (made for augmentation) opens the
    mask with a stronger threshold and can keep the brain only, which puts a pituitary tumour in the sella
    outside it; here every expert lesion outline of the 184 figshare test slices lies inside.
    """
    from scipy import ndimage

    img = np.asarray(image)
    g = img.astype(np.float32).mean(axis=2) if img.ndim == 3 else img.astype(np.float32)
    g = ndimage.gaussian_filter(g, 1.0)
    b = max(1, min(g.shape) // 32)
    border = np.concatenate([g[:b].ravel(), g[-b:].ravel(), g[:, :b].ravel(), g[:, -b:].ravel()])
    bg, top = float(np.median(border)), float(np.percentile(g, 99))
    if top - bg <= 1e-6:
        return np.zeros(g.shape, bool)
    fg = g > bg + level * (top - bg)
    fg = ndimage.binary_closing(fg, np.ones((3, 3), bool), iterations=2, border_value=0)
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        fg = lab == int(sizes.argmax())
    return ndimage.binary_fill_holes(fg)


def head_masks(prepared: np.ndarray) -> np.ndarray:
    """:func:`head_mask_prepared` of each prepared ``uint8`` image ``(N, S, S, 3)`` (or one ``(S, S, 3)``).

    It stands in for the brain in :func:`peak_outside_brain`: a peak on the skull or scalp counts as inside, one
    on the background, an image frame or text marks as outside.
    """
    arr = np.asarray(prepared)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] != arr.shape[-1]:
        return head_mask_prepared(arr)
    if len(arr) == 0:
        return np.zeros(arr.shape[:3], bool)
    return np.stack([head_mask_prepared(a) for a in arr])


def peak_outside_brain(heatmap: np.ndarray, brain: np.ndarray) -> bool | None:
    """``True`` when the map's maximum lies outside ``brain`` (``None`` for a constant map or an empty mask)."""
    h = np.asarray(heatmap)
    brain = np.asarray(brain, bool)
    if not np.isfinite(h).all() or h.max() - h.min() <= 1e-12 or not brain.any():
        return None
    return not bool(brain.flat[int(np.argmax(h))])


# ------------------------------------------------------------------------------------------- faithfulness


def random_maps(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Uniform random maps ``(n, size, size)``: the baseline a faithful map must beat."""
    return np.random.default_rng(seed).random((n, size, size)).astype(np.float32)


def _order(heatmap: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = np.asarray(heatmap, np.float64).ravel()
    # Ties (e.g. the zero region of a ReLU'd Grad-CAM) are broken at random, never in raster order.
    return np.lexsort((rng.random(flat.size), -flat))


def deletion_insertion(predict_proba: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                       maps: np.ndarray, class_idx: Sequence[int], steps: int = 20, sigma: float | None = None,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Deletion and insertion AUCs (RISE-style) of ``maps`` for prepared ``uint8`` images.

    Args:
        predict_proba: ``uint8 (M, S, S, 3) -> probabilities (M, K)`` (``Predictor.proba_prepared``).
        images: prepared ``uint8`` ``(N, S, S, 3)``.
        maps: ``(N, S, S)``, high = important.
        class_idx: the class whose probability is followed, per image.
        steps: number of equal pixel fractions between 0 and 1.
        sigma: blur of the 'removed' image (see :func:`~braintumor.explanation.saliency.blur_baseline`).

    Returns:
        ``deletion`` and ``insertion`` AUCs ``(N,)`` in ``[0, 1]`` and their curves ``(N, steps + 1)``.
    """
    images = np.asarray(images)
    n, s = images.shape[0], images.shape[1]
    base = blur_baseline(images, sigma)
    rng = np.random.default_rng(seed)
    counts = np.round(np.linspace(0, s * s, steps + 1)).astype(int)
    curves = {"deletion": np.zeros((n, steps + 1)), "insertion": np.zeros((n, steps + 1))}
    for i in range(n):
        order = _order(maps[i], rng)
        rank = np.empty(s * s, np.int64)
        rank[order] = np.arange(s * s)
        rank = rank.reshape(s, s)
        sel = rank[None] < counts[:, None, None]  # (steps+1, S, S): pixels already switched
        deleted = np.where(sel[..., None], base[i][None], images[i][None])
        inserted = np.where(sel[..., None], images[i][None], base[i][None])
        p = predict_proba(np.concatenate([deleted, inserted]).astype(np.uint8))[:, int(class_idx[i])]
        curves["deletion"][i], curves["insertion"][i] = p[:steps + 1], p[steps + 1:]
    return {"deletion": np.trapezoid(curves["deletion"], dx=1 / steps, axis=1),
            "insertion": np.trapezoid(curves["insertion"], dx=1 / steps, axis=1),
            "deletion_curve": curves["deletion"], "insertion_curve": curves["insertion"]}


def randomised_predictor(predictor: Predictor, seed: int = 0) -> Predictor:
    """A copy of ``predictor`` whose model has every layer re-initialised (weights and BatchNorm statistics).

    The full-randomisation end point of Adebayo et al.'s cascading test: each layer gets its framework default
    initialisation (``reset_parameters``), BatchNorm layers also forget their running statistics. The original
    model is untouched.

    Raises:
        UsageError: a module holds parameters but has no ``reset_parameters`` (it would silently keep its trained
            weights and make the sanity check meaningless).
    """
    import torch

    model = copy.deepcopy(predictor.model)
    stuck = [n or type(m).__name__ for n, m in model.named_modules()
             if any(True for _ in m.parameters(recurse=False)) and not callable(getattr(m, "reset_parameters", None))]
    if stuck:
        raise UsageError(f"cannot re-initialise {', '.join(stuck[:5])}: no reset_parameters()")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()
            if callable(getattr(m, "reset_running_stats", None)):
                m.reset_running_stats()
    rp = Predictor(model, predictor.preprocessor, predictor.classes, predictor.positive_class,
                   predictor.temperature, predictor.threshold, predictor.metadata, device=str(predictor.device))
    return rp


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (0 where either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomisation_check(predictor: Predictor, images: np.ndarray, class_idx: Sequence[int],
                        method: str = DEFAULT_METHOD, maps: np.ndarray | None = None, seed: int = 0,
                        return_constant: bool = False, originals: Sequence[np.ndarray] | None = None
                        ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per-image Spearman correlation between the trained model's maps and a weight-randomised model's maps.

    Both explain the same class per image, on the full maps as the method returns them (input resolution).
    ``maps``: the trained model's maps if already computed. A pair where either map is constant (e.g. a
    Grad-CAM that is all zeros after its ReLU) scores 0; ``return_constant=True`` also returns a boolean array
    flagging those pairs, so a report can say how many there were. ``originals``: the decoded images (for
    ``layercam-tta``).
    """
    if maps is None:
        maps = heatmaps(predictor, images, class_idx, method, originals=originals)
    rand = heatmaps(randomised_predictor(predictor, seed), images, class_idx, method, originals=originals)
    rho = np.array([spearman(a, b) for a, b in zip(maps, rand, strict=True)], np.float64)
    if not return_constant:
        return rho
    constant = np.array([np.ptp(a) == 0 or np.ptp(b) == 0 for a, b in zip(maps, rand, strict=True)], bool)
    return rho, constant


# ---------------------------------------------------------------------------------------------- a folder


@dataclass
class ExplanationReport:
    """:func:`evaluate_explanations` output: per-image rows and the summary."""

    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _mean(values) -> float | None:
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _interval(rows: list[dict], key: str) -> list[float] | None:
    """95% bootstrap interval of the mean of ``key`` over ``rows``, resampling their ``group`` (patients)."""
    from ..stats import bootstrap_mean_ci

    if not rows:
        return None
    ci = bootstrap_mean_ci([float(r[key]) for r in rows], [r["group"] for r in rows], n_boot=1000)
    return [ci["low"], ci["high"]]


def _localisation_summary(rows: list[dict], curves: dict[int, np.ndarray]) -> dict:
    """Localisation and faithfulness means over ``rows`` (``curves``: row id -> its Dice curve)."""
    masked = [r for r in rows if r["has_mask"]]
    correct = [r for r in masked if r["predicted"] == r["class"]]
    out = {
        "n": len(rows), "n_masked": len(masked), "n_masked_correct": len(correct),
        "pointing_game": _mean(r["pointing"] for r in masked),
        "pointing_game_ci": _interval(masked, "pointing"),
        "pointing_game_tolerant": _mean(r["pointing_tolerant"] for r in masked),
        "pointing_game_tolerant_ci": _interval(masked, "pointing_tolerant"),
        "ci_units": len({r["group"] for r in masked}),
        "pointing_game_correct": _mean(r["pointing"] for r in correct),
        "pointing_game_tolerant_correct": _mean(r["pointing_tolerant"] for r in correct),
        "chance": _mean(r["lesion_fraction"] for r in masked),
        "iou": _mean(r["iou"] for r in masked),
        "dice_best": _mean(r["dice_best"] for r in masked),
        "dice_05": _mean(r["dice_05"] for r in masked),
        "dice_fixed": None, "dice_fixed_threshold": None,
        "peak_outside_brain": _mean(r["peak_outside_brain"] for r in rows),
        "deletion_auc": _mean(r["deletion_auc"] for r in rows),
        "insertion_auc": _mean(r["insertion_auc"] for r in rows),
        "random_deletion_auc": _mean(r["random_deletion_auc"] for r in rows),
        "random_insertion_auc": _mean(r["random_insertion_auc"] for r in rows),
    }
    cs = [curves[id(r)] for r in masked if id(r) in curves]
    if cs:
        mean_curve = np.mean(cs, axis=0)
        k = int(np.argmax(mean_curve))
        out["dice_fixed"], out["dice_fixed_threshold"] = float(mean_curve[k]), float(DICE_THRESHOLDS[k])
    return out


def evaluate_explanations(predictor: Predictor, paths: Sequence[str | Path], masks_dir: str | Path | None,
                          method: str = DEFAULT_METHOD, target: str | int | None = None, steps: int = 20,
                          randomisation_images: int = 16, batch_size: int = 16, seed: int = 0,
                          on_skip: Callable[[Path, str], None] | None = None,
                          progress: Callable[[int], None] | None = None,
                          on_explanation: Callable[[Explanation, Path], None] | None = None,
                          tolerance: float | None = None, group_by: str | None = None,
                          ) -> ExplanationReport:
    """Explain ``paths`` and measure localisation (against masks) and faithfulness.

    Args:
        masks_dir: where masks live (``<dir>/<class>/<name>`` or ``<dir>/<name>``, any image extension);
            ``None``: no localisation.
        randomisation_images: how many masked (else any) images the randomisation check uses (0: skip).
        on_explanation: called with each :class:`Explanation` and its path (e.g. to save figures).
        tolerance: pointing-game tolerance in prepared-image pixels (default :func:`standard_tolerance`).
        group_by: patient groups for the pointing game's intervals (``"id-runs"``, ``"id-blocks:N"`` or a CSV, as
            :func:`braintumor.data.groups.patient_groups`): slices of one patient are resampled together. Default:
            each image is its own unit (optimistic when a patient contributes many slices).

    Summary keys (means; localisation over masked images): ``n``, ``n_masked``, ``n_masked_correct``,
    ``pointing_game`` (strict), ``pointing_game_tolerant`` (within ``tolerance_px``), each with its 95% bootstrap
    interval (``pointing_game_ci``, ``pointing_game_tolerant_ci``: ``[low, high]`` over ``ci_units`` resampled units,
    see ``group_by``), the same over correctly
    classified masked images (``pointing_game_correct``, ``pointing_game_tolerant_correct``), ``chance`` (mean
    lesion area fraction: a random peak's hit rate), ``iou`` (map >= 0.5), ``dice_best`` (per-image best threshold
    in 0.05..0.95), ``dice_05`` (threshold 0.5), ``dice_fixed`` / ``dice_fixed_threshold`` (the one threshold
    best on average), ``peak_outside_brain`` (share of all maps whose peak is off the head), ``deletion_auc``,
    ``insertion_auc``, ``random_deletion_auc``, ``random_insertion_auc``, ``randomisation_spearman`` (mean of
    the absolute values), ``per_class`` (class folder -> the same localisation and faithfulness keys).
    """
    rows: list[dict] = []
    curves: dict[int, np.ndarray] = {}
    keep_imgs, keep_idx, keep_maps, keep_masked, keep_raws = [], [], [], [], []
    unit: dict[str, str] = {}
    if group_by is not None:
        from ..data.groups import patient_groups

        unit = {str(Path(p)): g for p, g in zip(paths, patient_groups(group_by, paths), strict=True)
                if g is not None}
    needs_originals = check_method(method) == "layercam-tta"
    tol_px: float | None = tolerance
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        raws, ok = [], []
        for p in chunk:
            try:
                raws.append(read_image(p))
                ok.append(Path(p))
            except UnreadableImageError as exc:
                if on_skip is not None:
                    on_skip(Path(p), exc.reason)
        if ok:
            prepared = np.stack([predictor.preprocessor.prepare(r) for r in raws])
            if tol_px is None:
                tol_px = standard_tolerance(prepared.shape[1])
            exs = explain_prepared(predictor, prepared, method, target, [str(p) for p in ok], batch_size,
                                   originals=raws)
            idx = [predictor.classes.index(e.target) for e in exs]
            maps = np.stack([e.heatmap for e in exs])
            heads = head_masks(prepared)
            di = deletion_insertion(predictor.proba_prepared, prepared, maps, idx, steps, seed=seed + i)
            ri = deletion_insertion(predictor.proba_prepared, prepared,
                                    random_maps(len(ok), prepared.shape[1], seed + i), idx, steps, seed=seed + i)
            for j, (p, raw, ex) in enumerate(zip(ok, raws, exs, strict=True)):
                row = {"path": str(p), "class": p.parent.name, "group": unit.get(str(p), str(p)),
                       "predicted": ex.label,
                       "probability": ex.probability, "target": ex.target, "has_mask": False,
                       "pointing": None, "pointing_tolerant": None, "iou": None, "dice_best": None,
                       "dice_best_threshold": None, "dice_05": None, "lesion_fraction": None,
                       "peak_outside_brain": peak_outside_brain(ex.heatmap, heads[j]),
                       "deletion_auc": float(di["deletion"][j]),
                       "insertion_auc": float(di["insertion"][j]),
                       "random_deletion_auc": float(ri["deletion"][j]),
                       "random_insertion_auc": float(ri["insertion"][j])}
                mpath = find_mask(p, masks_dir) if masks_dir is not None else None
                mask = None
                if mpath is not None:
                    mask = prepare_mask(predictor.preprocessor, raw, load_mask(mpath))
                    if mask.any():
                        curve = dice_curve(ex.heatmap, mask)
                        k = int(np.argmax(curve))
                        row.update(has_mask=True, pointing=pointing_game(ex.heatmap, mask),
                                   pointing_tolerant=pointing_game(ex.heatmap, mask, tol_px),
                                   iou=heatmap_iou(ex.heatmap, mask), dice_best=float(curve[k]),
                                   dice_best_threshold=float(DICE_THRESHOLDS[k]),
                                   dice_05=heatmap_dice(ex.heatmap, mask, 0.5),
                                   lesion_fraction=float(mask.mean()))
                        curves[id(row)] = curve
                rows.append(row)
                keep_imgs.append(prepared[j])
                keep_raws.append(raw if needs_originals else None)
                keep_idx.append(idx[j])
                keep_maps.append(ex.heatmap)
                keep_masked.append(row["has_mask"])
                if on_explanation is not None:
                    on_explanation(ex, p)
        if progress is not None:
            progress(len(chunk))
    if not rows:
        raise DataError("no readable images to explain")

    summary = {"method": method, **_localisation_summary(rows, curves), "tolerance_px": tol_px,
               "randomisation_spearman": None, "steps": steps}
    per_class = {}
    for c in sorted({r["class"] for r in rows}):
        sub = _localisation_summary([r for r in rows if r["class"] == c], curves)
        sub["accuracy"] = _mean(float(r["predicted"] == c) for r in rows if r["class"] == c)
        per_class[c] = sub
    summary["per_class"] = per_class
    if randomisation_images > 0:
        order = [k for k, m in enumerate(keep_masked) if m] + [k for k, m in enumerate(keep_masked) if not m]
        sel = order[:randomisation_images]
        try:
            rho = randomisation_check(predictor, np.stack([keep_imgs[k] for k in sel]), [keep_idx[k] for k in sel],
                                      method, maps=np.stack([keep_maps[k] for k in sel]), seed=seed,
                                      originals=[keep_raws[k] for k in sel] if needs_originals else None)
        except UsageError:  # e.g. a tumour-map decoder the randomised copy does not carry
            rho = None
        if rho is not None:
            summary["randomisation_spearman"] = float(np.mean(np.abs(rho)))
            summary["randomisation_n"] = len(sel)
    return ExplanationReport(rows, summary)
