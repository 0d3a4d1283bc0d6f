"""Uncertainty of metrics: percentile-bootstrap 95% intervals and t-based intervals of a mean across folds.

A validation set of ~50 images gives accuracy intervals about +/-0.08 wide: report them with every number.
The bootstrap resamples images, or whole groups (duplicate groups, patients) when ``groups`` is given, because
near-copies of one scan are not independent evidence. The decision rule (argmax, or the binary ``threshold``) is
held fixed across resamples; only the data are resampled.

Example:
    >>> import numpy as np
    >>> from braintumor.stats import bootstrap_ci, format_ci
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200)
    >>> p1 = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.25, 200), 0, 1)
    >>> ci = bootstrap_ci(y, np.c_[1 - p1, p1], ["no", "yes"], n_boot=200)
    >>> ci["accuracy"]["low"] <= ci["accuracy"]["estimate"] <= ci["accuracy"]["high"]
    True
    >>> format_ci(0.912, 0.853, 0.961, digits=2)
    '0.91 [0.85, 0.96]'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import predict_labels

CI_METRICS = ("accuracy", "balanced_accuracy", "f1", "macro_f1", "roc_auc", "pr_auc", "sensitivity", "specificity",
              "mcc")
PER_CLASS_CI = ("sensitivity", "specificity", "precision", "f1")


# ------------------------------------------------------------------------------------- fast metric kernels


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of a binary problem (Mann-Whitney U with mid-ranks for ties); ``nan`` with one class."""
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n0 == 0 or n1 == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """PR-AUC as average precision (scikit-learn's step definition, ties handled); ``nan`` without positives."""
    y = np.asarray(y, bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, t = np.asarray(score)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _confusion(y: np.ndarray, yp: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + yp, minlength=k * k).reshape(k, k).astype(np.float64)


def _cm_metrics(cm: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, MCC and per-class rates from a confusion matrix (rows: truth)."""
    k = len(cm)
    n = cm.sum()
    tp = np.diag(cm)
    true_n, pred_n = cm.sum(1), cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(true_n > 0, tp / true_n, np.nan)
        tn = n - true_n - pred_n + tp
        spec = np.where((n - true_n) > 0, tn / (n - true_n), np.nan)
        prec = np.where(pred_n > 0, tp / pred_n, 0.0)
        f1 = np.where(prec + np.nan_to_num(sens) > 0, 2 * prec * sens / (prec + sens), 0.0)
        cov_ytyp = n * tp.sum() - true_n @ pred_n
        cov_ypyp = n * n - pred_n @ pred_n
        cov_ytyt = n * n - true_n @ true_n
        denom = np.sqrt(cov_ypyp * cov_ytyt)
        mcc = cov_ytyp / denom if denom > 0 else 0.0
    present = true_n > 0
    return {"accuracy": tp.sum() / n if n else np.nan,
            "balanced_accuracy": np.nanmean(sens[present]) if present.sum() > 1 else np.nan,
            "mcc": float(mcc), "sens": sens, "spec": spec, "prec": prec, "f1": np.where(present, f1, np.nan),
            "k": k}


def _score_metrics(y: np.ndarray, proba: np.ndarray, pos: int | None) -> tuple[float, float]:
    if proba.shape[1] == 2:
        p = pos if pos is not None else 1
        return binary_auc(y == p, proba[:, p]), average_precision(y == p, proba[:, p])
    aucs, aps = [], []
    for c in range(proba.shape[1]):
        yc = y == c
        if not yc.any() or yc.all():
            return float("nan"), float("nan")
        aucs.append(binary_auc(yc, proba[:, c]))
        aps.append(average_precision(yc, proba[:, c]))
    return float(np.mean(aucs)), float(np.mean(aps))


def metric_vector(y: np.ndarray, y_pred: np.ndarray, proba: np.ndarray, k: int, pos: int | None,
                  with_scores: bool = True) -> dict:
    """Every bootstrapped metric of one (re)sample, as plain floats (``nan`` when undefined)."""
    m = _cm_metrics(_confusion(y, y_pred, k))
    out = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "mcc": m["mcc"],
           "macro_f1": float(np.nanmean(m["f1"])) if np.isfinite(m["f1"]).any() else np.nan}
    if pos is not None:
        out.update(sensitivity=m["sens"][pos], specificity=m["spec"][pos], f1=m["f1"][pos])
    else:
        out["f1"] = out["macro_f1"]
    if with_scores:
        out["roc_auc"], out["pr_auc"] = _score_metrics(y, proba, pos)
    for i in range(k):
        out[f"{i}:sensitivity"], out[f"{i}:specificity"] = m["sens"][i], m["spec"][i]
        out[f"{i}:precision"], out[f"{i}:f1"] = m["prec"][i], m["f1"][i]
    return {key: float(v) for key, v in out.items()}


# ------------------------------------------------------------------------------------------------ bootstrap


def _resampler(n: int, groups: Sequence | None, rng: np.random.Generator):
    if groups is None:
        return lambda: rng.integers(0, n, n)
    codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(codes))]
    members = [order[starts[i]:starts[i + 1]] for i in range(len(starts) - 1)]
    n_groups = len(members)

    def draw():
        return np.concatenate([members[g] for g in rng.integers(0, n_groups, n_groups)])

    return draw


def bootstrap_ci(y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str], positive: str | None = None,
                 threshold: float | None = None, groups: Sequence | None = None, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0, y_pred: Sequence[int] | None = None) -> dict:
    """Percentile-bootstrap intervals of accuracy, balanced accuracy, F1, ROC-AUC, PR-AUC, sensitivity,
    specificity and MCC (and per-class sensitivity / specificity / precision / F1).

    Args:
        y_true: labels; proba: ``(N, K)`` probabilities; classes: class names.
        positive: the positive class of a binary problem (default: the second class).
        threshold: binary decision threshold on the positive probability (``None``: argmax), kept fixed.
        groups: resample whole groups (e.g. duplicate groups) instead of images.
        y_pred: the decisions, when they do not follow from one threshold (e.g. pooled cross-validation folds).
        n_boot: resamples; alpha: 0.05 for 95% intervals; seed: the bootstrap's random seed.

    Returns:
        ``{metric: {"estimate", "low", "high"}, ..., "per_class": {class: {metric: {...}}}, "n_boot", "level",
        "unit"}``; a metric undefined on the full data is left out; resamples where it is undefined (one class
        missing) are dropped and counted in ``"n_valid"``.
    """
    y = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)  # as classification_metrics does, so estimates match
    classes = list(classes)
    k = len(classes)
    pos = (classes.index(positive) if positive in classes else 1) if k == 2 else None
    y_pred = np.asarray(predict_labels(proba, threshold, pos if pos is not None else 1) if y_pred is None
                        else y_pred, dtype=int)
    point = metric_vector(y, y_pred, proba, k, pos)
    rng = np.random.default_rng(seed)
    draw = _resampler(len(y), groups, rng)
    samples = {key: np.empty(n_boot) for key in point}
    for b in range(n_boot):
        idx = draw()
        mb = metric_vector(y[idx], y_pred[idx], proba[idx], k, pos)
        for key, v in mb.items():
            samples[key][b] = v

    def interval(key: str) -> dict | None:
        est = point.get(key, np.nan)
        if not np.isfinite(est):
            return None
        vals = samples[key][np.isfinite(samples[key])]
        if len(vals) < max(10, n_boot // 10):
            return None
        lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        return {"estimate": est, "low": float(lo), "high": float(hi), "n_valid": int(len(vals))}

    out: dict = {}
    for key in CI_METRICS:
        iv = interval(key)
        if iv is not None:
            out[key] = iv
    out["per_class"] = {c: {m: iv for m in PER_CLASS_CI if (iv := interval(f"{i}:{m}")) is not None}
                        for i, c in enumerate(classes)}
    out.update(n_boot=n_boot, level=1 - alpha, unit="group" if groups is not None else "image",
               n_units=int(len(set(map(str, groups)))) if groups is not None else int(len(y)))
    return out


# --------------------------------------------------------------------------------------- across-fold means


def mean_ci(values: Sequence[float], alpha: float = 0.05, bounds: tuple[float, float] | None = None) -> dict:
    """Mean and t-based ``1 - alpha`` interval of per-fold values (``nan`` entries ignored).

    ``bounds`` clips the interval to the metric's range (e.g. ``(0, 1)`` for accuracy, ``(-1, 1)`` for MCC).

    The folds of one cross-validation share training data, so this interval is somewhat optimistic; it is the
    conventional summary, not an exact one.

    Example:
        >>> r = mean_ci([0.9, 0.85, 0.95, 0.88, 0.92])
        >>> round(r["mean"], 3), r["low"] < r["mean"] < r["high"]
        (0.9, True)
    """
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return {"mean": None, "std": None, "low": None, "high": None, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "std": None, "low": None, "high": None, "n": 1}
    sd = float(v.std(ddof=1))
    half = float(t.ppf(1 - alpha / 2, n - 1) * sd / np.sqrt(n))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "std": sd, "low": low, "high": high, "n": n}


def bootstrap_mean_ci(values: Sequence[float], groups: Sequence | None = None, n_boot: int = 2000,
                      alpha: float = 0.05, seed: int = 0) -> dict:
    """Mean of per-image values (e.g. pointing-game hits) and its percentile-bootstrap ``1 - alpha`` interval,
    resampling whole groups (patients) when ``groups`` is given: slices of one patient are not independent.

    Example:
        >>> hits = [1, 1, 0, 1, 0, 1, 1, 1]
        >>> r = bootstrap_mean_ci(hits, groups=["a", "a", "b", "b", "c", "c", "d", "d"], n_boot=500)
        >>> r["estimate"], r["low"] <= r["estimate"] <= r["high"], r["unit"]
        (0.75, True, 'group')
    """
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"estimate": None, "low": None, "high": None, "n": 0, "n_boot": n_boot, "unit": "image"}
    if groups is not None and len(groups) != len(v):
        raise ValueError(f"{len(groups)} groups for {len(v)} values")
    draw = _resampler(len(v), groups, np.random.default_rng(seed))
    means = np.array([v[draw()].mean() for _ in range(n_boot)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"estimate": float(v.mean()), "low": float(low), "high": float(high), "n": len(v), "n_boot": n_boot,
            "unit": "group" if groups is not None else "image"}


def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score ``1 - alpha`` interval of a proportion ``successes / n`` (sensible at 0 and near it, where
    the normal approximation is not); ``(nan, nan)`` for ``n == 0``.

    Example:
        >>> lo, hi = wilson_ci(0, 253)
        >>> lo, round(hi, 4)
        (0.0, 0.015)
    """
    from statistics import NormalDist

    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def format_ci(estimate: float | None, low: float | None = None, high: float | None = None, digits: int = 3) -> str:
    """``0.912 [0.853, 0.961]``; just the estimate when there is no interval; ``-`` when there is nothing."""
    if estimate is None or not np.isfinite(estimate):
        return "-"
    if low is None or high is None:
        return f"{estimate:.{digits}f}"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
