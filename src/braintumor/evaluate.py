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


def collapse_classes(proba: np.ndarray, model_classes: Sequence[str], class_map) -> tuple[np.ndarray, list[str]]:
    """Probabilities over the classes of ``class_map``: each the sum of the model classes it takes.

    A 4-class model becomes a tumour detector with ``{"tumour": ["glioma", "meningioma", "pituitary"],
    "no_tumour": ["notumor"]}``. Every model class must belong to one class of the map.

    Example:
        >>> import numpy as np
        >>> p, names = collapse_classes(np.array([[0.1, 0.2, 0.6, 0.1]]), ["glioma", "meningioma", "notumor",
        ...                             "pituitary"], {"tumour": ["glioma", "meningioma", "pituitary"],
        ...                                            "no_tumour": ["notumor"]})
        >>> names, p.round(2).tolist()
        (['tumour', 'no_tumour'], [[0.4, 0.6]])
    """
    from .data.sources import map_names

    targets = list(class_map)
    idx = map_names(list(model_classes), class_map, what="model class")
    out = np.zeros((len(proba), len(targets)), dtype=np.float64)
    for j, t in enumerate(idx):
        out[:, t] += proba[:, j]
    return out, targets


def evaluate(model: str | Path | Predictor, data_dir: str | Path, out: str | Path | None = None, *,
             classes=None, strict: bool = False, batch_size: int = 64, on_skip=None, progress=None,
             ci: bool = True, n_boot: int = 1000) -> EvaluationResult:
    """Evaluate a run folder (or a :class:`Predictor`) on a labelled folder ``data_dir/<class>/...``.

    Outputs go to ``out`` (default: ``RUN/evaluations/<folder name>/``). Class folders must be among the
    model's classes, unless ``classes`` maps both onto common classes (:mod:`braintumor.data.sources`): e.g. a
    4-class model as a tumour detector on a yes/no folder with
    ``{"tumour": ["glioma", "meningioma", "pituitary", "yes"], "no_tumour": ["notumor", "no"]}``; the model's
    probabilities are summed per class of the map (:func:`collapse_classes`). Unreadable files are skipped and
    listed in ``result.skipped``. With ``ci`` the metrics get ``ci``: percentile-bootstrap 95% intervals over
    images (:func:`braintumor.stats.bootstrap_ci`).

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

    classes_out, positive, threshold = pred.classes, pred.positive_class, pred.threshold
    if classes:
        from .data.sources import discover_sources, map_names, parse_class_map

        cmap = parse_class_map(classes)
        map_names(pred.classes, cmap, what="model class")  # every model class must be mapped
        ds = discover_sources([data_dir], cmap, slices=run_slices(pred.metadata), require_all=False)
        classes_out = ds.classes
        from .data.discover import positive_class

        positive = positive_class(classes_out)
        threshold = _mapped_threshold(pred, cmap, positive)
    else:
        ds = discover(data_dir, classes=pred.classes, slices=run_slices(pred.metadata))
    if out is not None and pred.run_dir is not None and Path(out).resolve() == Path(pred.run_dir).resolve():
        from .errors import UsageError

        raise UsageError(f"--out {out} is the run folder itself: its own validation files would be overwritten")
    loaded = load_images(ds.paths, pred.preprocessor, strict=strict, on_skip=on_skip, progress=progress)
    y = np.asarray(ds.labels)[loaded.kept]
    proba = pred.proba_prepared(loaded.images, batch_size)
    if classes:
        proba, _ = collapse_classes(proba, pred.classes, cmap)
    if out is None and pred.run_dir is not None:
        out = RunDir(pred.run_dir).evaluation(Path(data_dir).resolve().name)
    paths = [str(ds.paths[i]) for i in loaded.kept]
    res = report_predictions(y, proba, classes_out, Path(out) if out else None, paths, positive,
                             threshold, title=f"{Path(data_dir).name}")
    if classes:
        res.metrics["class_map"] = cmap
    res.skipped = loaded.skipped
    if ci and len(y):  # percentile-bootstrap 95% intervals (braintumor.stats), saved with the metrics
        from .stats import bootstrap_ci

        res.metrics["ci"] = bootstrap_ci(y, proba, classes_out, positive, threshold, n_boot=n_boot)
    if res.out_dir is not None:
        RunDir(res.out_dir).write_json(Path(res.out_dir) / "metrics.json", res.metrics)
    return res


def _mapped_threshold(pred: Predictor, class_map, positive: str | None) -> float | None:
    """The model's decision threshold where it still means the same thing: a binary model whose positive class
    alone makes up the map's positive class. Otherwise ``None`` (argmax of the summed probabilities)."""
    from .data.sources import class_of

    if pred.threshold is None or positive is None or pred.positive_class is None:
        return None
    takes = [c for c in pred.classes if class_of(c, class_map) == positive]
    return pred.threshold if takes == [pred.positive_class] else None
