"""Evaluate a trained model on a labelled folder: metrics, predictions and plots.

Example:
    >>> from braintumor.evaluate import evaluate
    >>> result = evaluate("runs/my-run", "data/test")      # doctest: +SKIP
    >>> round(result.metrics["accuracy"], 3)               # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.cache import load_images
from .data.discover import discover
from .inference import Predictor
from .metrics import classification_metrics
from .plots import plot_confusion, plot_roc
from .rundir import RunDir

HEADLINE = ("accuracy", "balanced_accuracy", "f1", "macro_f1", "roc_auc", "pr_auc", "sensitivity", "specificity",
            "mcc")


@dataclass
class EvaluationResult:
    """Metrics of one evaluation and where its files went.

    ``metrics`` holds everything :func:`~braintumor.metrics.classification_metrics` computes, plus ``ci``
    (bootstrap 95% intervals) from :func:`evaluate`. In Jupyter it displays as a table of the headline metrics
    with their intervals and the confusion matrix.

    Example:
        >>> res = evaluate("runs/demo", "data/phantoms-test")           # doctest: +SKIP
        >>> res.headline()["accuracy"], res.metrics["ci"]["accuracy"]    # doctest: +SKIP
        (0.95, {'estimate': 0.95, 'low': 0.91, 'high': 0.99})
    """

    metrics: dict
    out_dir: Path | None = None
    paths: list[str] = field(default_factory=list)
    y_true: np.ndarray | None = None
    proba: np.ndarray | None = None
    skipped: list = field(default_factory=list)

    def headline(self) -> dict:
        return {k: self.metrics[k] for k in HEADLINE if self.metrics.get(k) is not None}

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v:.3f}" for k, v in self.headline().items())
        return f"EvaluationResult(n={self.metrics.get('n')}, {items})"

    def _repr_html_(self) -> str:
        from .display import esc, metrics_html

        info = [("outputs", esc(self.out_dir))] if self.out_dir else []
        if self.skipped:
            info.append(("skipped files", str(len(self.skipped))))
        return metrics_html(self.metrics, "EvaluationResult", info)


def write_predictions(path: Path, paths: Sequence[str], y_true: Sequence[int], proba: np.ndarray,
                      classes: Sequence[str], y_pred: Sequence[int]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "predicted", *[f"p_{c}" for c in classes]])
        for p, t, pr, yp in zip(paths, y_true, proba, y_pred, strict=True):
            w.writerow([p, classes[t], classes[yp], *[f"{v:.6f}" for v in pr]])


def report_predictions(y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str], out_dir: Path | None,
                       paths: Sequence[str] = (), positive: str | None = None,
                       threshold: float | None = None, title: str = "") -> EvaluationResult:
    """Metrics from probabilities, and (with ``out_dir``) ``metrics.json``, ``predictions.csv`` and plots."""
    y = np.asarray(y_true, dtype=int)
    m = classification_metrics(y, proba, list(classes), positive, threshold)
    res = EvaluationResult(m, out_dir, list(map(str, paths)), y, proba)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        RunDir(out_dir).write_json(out_dir / "metrics.json", m)
        if paths:
            from .metrics import predict_labels

            pos = list(classes).index(m["positive_class"]) if m.get("positive_class") else 1
            write_predictions(out_dir / "predictions.csv", [str(p) for p in paths], y, proba, classes,
                              predict_labels(proba, threshold, pos))
        plot_confusion(m["confusion_matrix"], classes, out_dir / "confusion_matrix.png", title)
        plot_roc(y, proba, list(classes), out_dir / "roc.png", m.get("positive_class"))
    return res


def evaluate(model: str | Path | Predictor, data_dir: str | Path, out: str | Path | None = None, *,
             strict: bool = False, batch_size: int = 64, on_skip=None, progress=None, ci: bool = True,
             n_boot: int = 1000) -> EvaluationResult:
    """Evaluate a run folder (or a :class:`Predictor`) on a labelled folder ``data_dir/<class>/...``.

    Outputs go to ``out`` (default: ``RUN/evaluations/<folder name>/``). Class folders must be among the
    model's classes; unreadable files are skipped and listed in ``result.skipped``. With ``ci`` the metrics get
    ``ci``: percentile-bootstrap 95% intervals over images (:func:`braintumor.stats.bootstrap_ci`).

    Example:
        >>> from braintumor import evaluate
        >>> res = evaluate("runs/demo", "data/phantoms-test")     # doctest: +SKIP
        >>> res                                                    # doctest: +SKIP
        EvaluationResult(n=100, accuracy=0.950, balanced_accuracy=0.950, ...)
        >>> res.out_dir                                            # doctest: +SKIP
        PosixPath('runs/demo/evaluations/phantoms-test')
    """
    pred = model if isinstance(model, Predictor) else Predictor.from_run(model)
    from .data.slices import run_slices

    ds = discover(data_dir, classes=pred.classes, slices=run_slices(pred.metadata))
    loaded = load_images(ds.paths, pred.preprocessor, strict=strict, on_skip=on_skip, progress=progress)
    y = np.asarray(ds.labels)[loaded.kept]
    proba = pred.proba_prepared(loaded.images, batch_size)
    if out is None and pred.run_dir is not None:
        out = RunDir(pred.run_dir).evaluation(Path(data_dir).resolve().name)
    paths = [str(ds.paths[i]) for i in loaded.kept]
    res = report_predictions(y, proba, pred.classes, Path(out) if out else None, paths, pred.positive_class,
                             pred.threshold, title=f"{Path(data_dir).name}")
    res.skipped = loaded.skipped
    if ci and len(y):  # percentile-bootstrap 95% intervals (braintumor.stats), saved with the metrics
        from .stats import bootstrap_ci

        res.metrics["ci"] = bootstrap_ci(y, proba, pred.classes, pred.positive_class, pred.threshold, n_boot=n_boot)
        if res.out_dir is not None:
            RunDir(res.out_dir).write_json(Path(res.out_dir) / "metrics.json", res.metrics)
    return res
