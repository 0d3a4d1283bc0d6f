"""Calibration: expected calibration error, reliability diagrams, temperature scaling, decision thresholds.

Everything is fitted on the *validation* split after training and stored in the run's ``metadata.json``; the
:class:`~braintumor.inference.Predictor` applies it at prediction time (``logits / temperature``, then the binary
``threshold`` on the positive-class probability, or argmax when there is none). Temperature scaling never changes
the argmax, so it changes probabilities (and ECE / log-loss), not accuracy.

Example:
    >>> import numpy as np, torch
    >>> from braintumor.calibration import fit_temperature, expected_calibration_error
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randint(0, 2, (500,), generator=g)
    >>> logits = torch.randn(500, 2, generator=g) * 4 + torch.nn.functional.one_hot(y, 2) * 3   # over-confident
    >>> t = fit_temperature(logits, y)
    >>> t > 1
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

T_MIN, T_MAX = 0.05, 20.0


# ------------------------------------------------------------------------------------------------- measures


def expected_calibration_error(y_true: Sequence[int], proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: the bin-size-weighted mean gap between confidence and accuracy, equal-width bins."""
    y = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(y_true: Sequence[int], proba: np.ndarray, n_bins: int = 10) -> dict:
    """Per equal-width confidence bin: mean confidence, accuracy and count (empty bins are ``nan``)."""
    y = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = {"edges": np.linspace(0, 1, n_bins + 1).tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else float("nan"))
        out["accuracy"].append(float(correct[m].mean()) if m.any() else float("nan"))
    return out


def nll(logits: torch.Tensor | np.ndarray, y: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``."""
    z = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).double()
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    return float(torch.nn.functional.cross_entropy(z / temperature, yt))


def plot_reliability(y_true: Sequence[int], proba: np.ndarray, path: str | Path, proba_before: np.ndarray | None = None,
                     n_bins: int = 10, title: str = "Calibration (validation)") -> Path:
    """Reliability diagram (accuracy vs confidence per bin, with bin counts) as a PNG; ``proba_before`` adds the
    uncalibrated curve for comparison."""
    from .plots import _save, plt

    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    series = [("after temperature", proba, "C1")] if proba_before is not None else [("model", proba, "C0")]
    if proba_before is not None:
        series.insert(0, ("before", proba_before, "C0"))
    for label, p, colour in series:
        rb = reliability_bins(y_true, p, n_bins)
        ece = expected_calibration_error(y_true, p)
        ax.plot(rb["confidence"], rb["accuracy"], "o-", color=colour, label=f"{label} (ECE {ece:.3f})")
    rb = reliability_bins(y_true, proba, n_bins)
    centres = (np.asarray(rb["edges"][:-1]) + np.asarray(rb["edges"][1:])) / 2
    axh.bar(centres, rb["count"], width=1.0 / n_bins * 0.9, color="grey")
    axh.set_ylabel("images")
    axh.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


# ------------------------------------------------------------------------------------------------- fitting


def fit_temperature(logits: torch.Tensor | np.ndarray, y: Sequence[int], max_iter: int = 200) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (grid, then LBFGS on ``log T``).

    ``T > 1`` softens over-confident models. Clamped to ``[0.05, 20]``: a perfectly separated validation set
    would otherwise drive ``T`` to zero. Falls back to 1 when fitting does not lower the NLL.
    """
    z = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).double().detach()
    yt = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if len(yt) == 0:
        return 1.0
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    # A coarse log-spaced grid first (the NLL is flat far from its minimum, where LBFGS alone stalls), then LBFGS.
    grid = np.exp(np.linspace(lo, hi, 41))
    losses = [nll(z, yt, float(t)) for t in grid]
    t_grid = float(grid[int(np.argmin(losses))])
    log_t = torch.tensor([math.log(t_grid)], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(lo, hi).exp(), yt)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(lo, hi).exp())
    if not math.isfinite(t) or nll(z, yt, t) > min(losses):
        t = t_grid
    return t if nll(z, yt, t) <= nll(z, yt, 1.0) else 1.0


def choose_threshold(y_true: Sequence[int], p_positive: Sequence[float], target_sensitivity: float,
                     positive: int = 1) -> dict:
    """A threshold ``t`` with sensitivity (``p >= t`` among positives) at least the target: halfway between the
    score of the last positive needed and the next lower score, the largest such margin-safe choice.

    Returns ``{"threshold", "target_sensitivity", "sensitivity", "specificity"}`` measured on the data given.

    Example:
        >>> round(choose_threshold([0, 0, 1, 1, 1, 1], [0.1, 0.6, 0.4, 0.7, 0.8, 0.9], 0.75)["threshold"], 3)
        0.65
    """
    if not 0 < target_sensitivity <= 1:
        raise UsageError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    y = np.asarray(y_true) == positive
    p = np.asarray(p_positive, dtype=np.float64)
    pos_scores = np.sort(p[y])[::-1]
    if len(pos_scores) == 0:
        raise UsageError("cannot choose a threshold: no positive images in the validation split")
    k = max(1, math.ceil(target_sensitivity * len(pos_scores) - 1e-9))
    t = float(pos_scores[k - 1])
    # Halfway down to the next lower score, so the boundary image stays above the threshold when prediction
    # recomputes its probability in float32.
    lower = p[p < t]
    t = (t + float(lower.max())) / 2 if len(lower) else t * (1 - 1e-6)
    return {"threshold": t, "target_sensitivity": float(target_sensitivity),
            "sensitivity": float((p[y] >= t).mean()),
            "specificity": float((p[~y] < t).mean()) if (~y).any() else None}


def calibrate_run(predictor, val_x: np.ndarray, val_y: np.ndarray, cfg) -> dict:
    """Fit the temperature (and, with ``cfg.target_sensitivity``, the binary threshold) on the validation split.

    Called by :func:`braintumor.training.train` after training. Writes ``calibration.png`` into the run folder and
    returns the metadata entries ``calibration``, ``threshold`` and ``threshold_info``.
    """
    from .rundir import RunDir

    z = predictor.logits(predictor.preprocessor.normalise(val_x))  # raw logits: temperature not applied
    y = np.asarray(val_y, dtype=int)
    t = fit_temperature(z, y)
    before = torch.softmax(z.double(), 1).numpy()
    after = torch.softmax(z.double() / t, 1).numpy()
    calib = {"method": "temperature", "fitted_on": "validation", "temperature": t, "n": int(len(y)),
             "ece_before": expected_calibration_error(y, before), "ece_after": expected_calibration_error(y, after),
             "nll_before": nll(z, y, 1.0), "nll_after": nll(z, y, t)}
    out: dict = {"calibration": calib, "threshold": None, "threshold_info": None}
    target = getattr(cfg, "target_sensitivity", None)
    if target is not None:
        if len(predictor.classes) != 2:
            raise UsageError("--target-sensitivity needs a binary (two-class) problem")
        pos = predictor.positive_index
        info = choose_threshold(y, after[:, pos], target, pos)
        argmax_pred = after.argmax(1)
        neg = y != pos
        info["argmax_sensitivity"] = float((argmax_pred[~neg] == pos).mean())
        info["argmax_specificity"] = float((argmax_pred[neg] != pos).mean()) if neg.any() else None
        info["fitted_on"] = "validation"
        out["threshold"] = info["threshold"]
        out["threshold_info"] = info
    if predictor.run_dir is not None:
        try:
            plot_reliability(y, after, RunDir(predictor.run_dir).root / "calibration.png", proba_before=before,
                             title=f"Calibration on validation (T = {t:.2f})")
        except Exception:  # noqa: BLE001 - a figure must never lose a finished training run
            pass
    return out
