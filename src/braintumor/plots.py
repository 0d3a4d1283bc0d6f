"""Figures written into run folders: training curves, confusion matrix, ROC curves (matplotlib, no display).

Text from outside (class and file names) goes through :func:`braintumor.display.plot_text`: a name that is not
UTF-8, or one with a ``$`` (mathtext), is shown as text instead of failing the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from matplotlib.figure import Figure

from .display import plot_text


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kw):
    """``pyplot.subplots`` without pyplot: a bare :class:`~matplotlib.figure.Figure` that renders to files only.

    No global backend switch (``matplotlib.use("Agg")`` would break a Jupyter user's inline plots as soon as
    training imported this module), no figure registry to leak, safe in threads.
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


#: The two pyplot functions the figure writers use (``calibration`` imports it too).
plt = SimpleNamespace(subplots=_subplots, close=lambda fig=None: None)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(history: Sequence[dict], path: Path) -> Path:
    """Accuracy and loss, train vs validation, per epoch (the notebook's two panels); phase changes marked."""
    ep = [int(h["epoch"]) for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(ep, [float(h[key]) for h in history], "o-", label="train", ms=3)
        ax.plot(ep, [float(h[f"val_{key}"]) for h in history], "o-", label="validation", ms=3)
        for i in range(1, len(history)):
            if history[i]["phase"] != history[i - 1]["phase"]:
                ax.axvline(ep[i] - 0.5, color="grey", ls="--", lw=0.8)
                ax.text(ep[i] - 0.4, ax.get_ylim()[1], f" {history[i]['phase']}", va="top", fontsize=8,
                        color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "") -> Path:
    cm = np.asarray(cm)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.3 * n + 2.5, 1.3 * n + 2))
    ax.imshow(cm, cmap="Blues")
    totals = cm.sum(axis=1, keepdims=True).clip(min=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{cm[i, j] / totals[i, 0]:.0%}", ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=10)
    names = [plot_text(c) for c in classes]
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(plot_text(title) if title else "Confusion matrix")
    return _save(fig, path)


def plot_roc(y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str], path: Path,
             positive: str | None = None) -> Path:
    """ROC of the positive class (binary) or one-vs-rest per class (multi-class), with AUCs in the legend."""
    from sklearn.metrics import auc, roc_curve

    y = np.asarray(y_true)
    proba = np.asarray(proba)
    fig, ax = plt.subplots(figsize=(5, 5))
    if len(classes) == 2:
        idx = [classes.index(positive) if positive in classes else 1]
    else:
        idx = list(range(len(classes)))
    for i in idx:
        if len(np.unique(y == i)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y == i, proba[:, i])
        ax.plot(fpr, tpr, label=f"{plot_text(classes[i])} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    curves = ax.get_lines()[:-1]  # all but the diagonal: none for a folder of one class
    ax.set_title("ROC" if curves else "ROC (one class only: no curve)")
    if curves:
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)
