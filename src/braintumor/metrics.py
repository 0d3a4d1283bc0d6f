"""Classification metrics from labels and predicted probabilities.

Example:
    >>> import numpy as np
    >>> from braintumor.metrics import classification_metrics
    >>> m = classification_metrics([0, 1, 1, 0], np.array([[.9, .1], [.2, .8], [.4, .6], [.3, .7]]), ["no", "yes"])
    >>> m["accuracy"], m["confusion_matrix"]
    (0.75, [[1, 1], [0, 2]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def predict_labels(proba: np.ndarray, threshold: float | None = None, positive: int = 1) -> np.ndarray:
    """Argmax, or for binary problems ``proba[:, positive] >= threshold`` when a threshold is set."""
    proba = np.asarray(proba)
    if threshold is not None and proba.shape[1] == 2:
        return np.where(proba[:, positive] >= threshold, positive, 1 - positive)
    return proba.argmax(axis=1)


def _mcc(cm: np.ndarray) -> float:
    """Matthews correlation from a confusion matrix (scikit-learn's formula, without its warning for a folder
    whose images all have one class)."""
    c = np.asarray(cm, dtype=np.float64)
    t, p, n = c.sum(axis=1), c.sum(axis=0), c.sum()
    cov_tp = np.trace(c) * n - t @ p
    cov_pp, cov_tt = n * n - p @ p, n * n - t @ t
    return 0.0 if cov_pp * cov_tt == 0 else float(cov_tp / np.sqrt(cov_tt * cov_pp))


def decision_margin(proba: np.ndarray, threshold: float | None = None, positive: int = 1) -> np.ndarray:
    """How far each row's probabilities are from changing its :func:`predict_labels` label: ``|p - threshold|`` of
    the positive class for binary problems with a threshold, else half the gap between the two largest
    probabilities (the same ``|p - 0.5|`` for two classes). A model whose probabilities move by less than the
    margin, class by class, gives the same label.

    Example:
        >>> decision_margin(np.array([[0.2, 0.8], [0.55, 0.45]])).round(3).tolist()
        [0.3, 0.05]
        >>> decision_margin(np.array([[0.2, 0.8]]), threshold=0.7).round(3).tolist()
        [0.1]
    """
    proba = np.asarray(proba, dtype=np.float64)
    if threshold is not None and proba.shape[1] == 2:
        return np.abs(proba[:, positive] - threshold)
    if proba.shape[1] < 2:
        return np.full(len(proba), np.inf)
    top = np.partition(proba, -2, axis=1)[:, -2:]
    return (top[:, 1] - top[:, 0]) / 2


def classification_metrics(y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str],
                           positive: str | None = None, threshold: float | None = None) -> dict:
    """Accuracy, balanced accuracy, per-class and macro precision / recall (sensitivity) / specificity / F1,
    ROC-AUC and PR-AUC (average precision; binary: of the positive class; multi-class: one-vs-rest macro), MCC,
    log-loss, confusion matrix.

    For binary problems the positive class's sensitivity, specificity, precision and F1 are also given at the top
    level (``sensitivity``, ``specificity``, ``precision``, ``f1``).
    """
    from sklearn import metrics as skm  # on first use: importing scikit-learn costs ~0.7 s

    y = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)
    k = len(classes)
    pos = classes.index(positive) if positive in classes else (1 if k == 2 else None)
    y_pred = predict_labels(proba, threshold, pos if pos is not None else 1)
    labels = list(range(k))
    cm = skm.confusion_matrix(y, y_pred, labels=labels)
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=0)
    tn = cm.sum() - cm.sum(axis=0) - cm.sum(axis=1) + np.diag(cm)
    fp = cm.sum(axis=0) - np.diag(cm)
    spec = np.divide(tn, tn + fp, out=np.zeros(k), where=(tn + fp) > 0)
    per_class = {
        c: {"precision": float(prec[i]), "recall": float(rec[i]), "sensitivity": float(rec[i]),
            "specificity": float(spec[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, c in enumerate(classes)
    }
    out: dict = {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, y_pred)) if len(np.unique(y)) > 1 else None,
        "macro_precision": float(prec.mean()),
        "macro_recall": float(rec.mean()),
        "macro_specificity": float(spec.mean()),
        "macro_f1": float(f1.mean()),
        "mcc": _mcc(cm),
        "roc_auc": roc_auc(y, proba, pos),
        "pr_auc": pr_auc(y, proba, pos),
        "log_loss": float(skm.log_loss(y, _renormalised(proba), labels=labels)),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
        "threshold": threshold,
    }
    if pos is not None:
        c = classes[pos]
        out.update(positive_class=c, sensitivity=per_class[c]["sensitivity"],
                   specificity=per_class[c]["specificity"], precision=per_class[c]["precision"],
                   f1=per_class[c]["f1"])
    else:
        out["f1"] = out["macro_f1"]
    return out


def roc_auc(y: np.ndarray, proba: np.ndarray, pos: int | None) -> float | None:
    """ROC-AUC; ``None`` when only one class is present."""
    from sklearn import metrics as skm  # on first use: importing scikit-learn costs ~0.7 s

    present = np.unique(y)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y == (pos if pos is not None else 1), proba[:, pos if pos is not None else 1]))
    if len(present) < proba.shape[1]:
        return None
    return float(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def pr_auc(y: np.ndarray, proba: np.ndarray, pos: int | None) -> float | None:
    """PR-AUC as average precision; ``None`` when only one class is present."""
    from sklearn import metrics as skm  # on first use: importing scikit-learn costs ~0.7 s

    present = np.unique(y)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        p = pos if pos is not None else 1
        return float(skm.average_precision_score(y == p, proba[:, p]))
    if len(present) < proba.shape[1]:
        return None
    return float(np.mean([skm.average_precision_score(y == c, proba[:, c]) for c in range(proba.shape[1])]))


def _renormalised(proba: np.ndarray) -> np.ndarray:
    """float64 rows summing to one (float32 softmax rows miss by ~1e-7, which scikit-learn warns about)."""
    p = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``(N, K)`` in their own dtype, in NumPy (the onnxruntime path never imports
    torch; ``torch.softmax``'s ``float32`` rows agree within a few ulp)."""
    z = np.asarray(logits)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
