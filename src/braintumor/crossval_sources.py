"""Leave-one-source-out evaluation: does a model find the tumour, or the data set it came from?

Inside one public data set, brain-MRI classifiers score 0.97-0.98; on another set they can fall apart, because each
set's classes come from different scanners, sequences and exports, and the model learns those. The honest figure is
the one on a *source the model never saw*. :func:`run_by_source` trains one model per source left out (on every
other source, with the usual group-aware inner validation split) and reports, side by side:

* **cross-source**: the model on the source it never saw. Copies are removed first: a copy in two sources is one
  duplicate group, and the images of a group on both sides leave the larger side (:func:`drop_copies`), so a
  small test source stays whole and a small training source keeps its images; the count is reported;
* **within-source**: the same model on its inner validation images of each training source (a group-aware
  hold-out: the usual Kaggle-style figure).

Each with accuracy, balanced accuracy, sensitivity, specificity and ROC-AUC, and bootstrap 95% intervals. Where
within- and cross-source figures disagree, the result says so in a sentence (``findings``), and the cross-source
errors are listed (``errors``; the report shows them with the model's Grad-CAM).

Output folder::

    CV/
      cv.json           kind "by-source": rows (trained on / tested on / kind / metrics / ci; cross rows also
                        ``flagged``: the share of the held-out source the model's input check flags, and
                        ``map_detector`` and ``head_or_map`` for runs trained with masks), findings, errors
      by_source.csv     the table
      report.html
      folds/without-<source>/   the run trained without that source (+ test/: its predictions on that source)

Example:
    >>> from braintumor import cv
    >>> res = cv(["data/nickparvar/Training", "data/brain_mri_yes_no"], by_source=True,
    ...          classes={"tumour": ["glioma", "meningioma", "pituitary", "yes"],
    ...                   "no_tumour": ["notumor", "no"]})                                  # doctest: +SKIP
    >>> [(r["tested_on"], r["kind"], round(r["metrics"]["balanced_accuracy"], 3)) for r in res.rows]  # doctest: +SKIP
    [('brain_mri_yes_no', 'cross', 0.71), ('Training', 'within', 0.98), ...]
"""

from __future__ import annotations

import csv
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .data.discover import ImageFolder
from .errors import DataError, UsageError
from .report import SOURCE_METRICS
from .rundir import RunDir

#: a cross-source balanced accuracy this far below the same model's within-source one is called out
DISAGREE_BY = 0.05
#: cross-source errors kept per held-out source (the most confident first)
N_ERRORS = 12


@dataclass
class SourceCVResult:
    """What leave-one-source-out returns: one row per (model, tested source), findings in words, errors.

    Example:
        >>> res.cross()["brain_mri_yes_no"]["metrics"]["specificity"]          # doctest: +SKIP
        0.62
    """

    out_dir: Path
    sources: list[str]
    rows: list[dict]
    findings: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def cross(self) -> dict[str, dict]:
        """Held-out source -> its cross-source row."""
        return {r["tested_on"]: r for r in self.rows if r["kind"] == "cross"}

    def __repr__(self) -> str:
        items = ", ".join(f"{s}={r['metrics'].get('balanced_accuracy') or float('nan'):.3f}"
                          for s, r in self.cross().items())
        return f"SourceCVResult({len(self.sources)} sources; cross-source balanced accuracy: {items})"

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "sources": self.sources, "rows": self.rows, "findings": self.findings,
                "errors": self.errors, "skipped": self.skipped}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "source"


def _metrics_with_ci(y, proba, classes, positive, threshold, seed: int) -> tuple[dict, dict]:
    from .metrics import classification_metrics
    from .stats import bootstrap_ci

    m = classification_metrics(y, proba, classes, positive, threshold)
    ci = bootstrap_ci(y, proba, classes, positive, threshold, n_boot=1000, seed=seed)
    keep = {k: m.get(k) for k in SOURCE_METRICS}
    if len(classes) > 2:  # several classes: no single sensitivity / specificity
        keep["sensitivity"] = keep["specificity"] = None
    elif positive in classes:  # a source with one class only (e.g. tumour slices): the other rate is undefined
        pos = classes.index(positive)
        present = set(np.asarray(y).tolist())
        if pos not in present:
            keep["sensitivity"] = None
        if (1 - pos) not in present:
            keep["specificity"] = None
    return keep, {k: ci[k] for k in SOURCE_METRICS if k in ci and keep.get(k) is not None}


def _read_val(run_dir: Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """The run's validation predictions (``predictions.csv``) and each image's source (``split.csv``)."""
    source_of = {}
    with open(run_dir / "split.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("subset") == "val":
                source_of[row["path"]] = row.get("source") or ""
    paths, y, proba = [], [], []
    with open(run_dir / "predictions.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            paths.append(row["path"])
            y.append(classes.index(row["label"]))
            proba.append([float(row[f"p_{c}"]) for c in classes])
    return paths, np.asarray(y, int), np.asarray(proba, float).reshape(-1, len(classes)), \
        [source_of.get(p, "") for p in paths]


def evaluate_fold(run_dir: Path, test: ImageFolder):
    """Predict held-out images with a fold's run (its preprocessing, temperature and threshold) and write the
    evaluation into ``RUN/test/`` (used by both :func:`braintumor.cv` and :func:`run_by_source`).

    When the run has a fitted input check (:mod:`braintumor.ood`), the same model pass scores every held-out image
    and ``metrics["input_check"]`` says how many it flags (:func:`~braintumor.evaluation.input_check_metrics`):
    images the check never saw, so the share flagged is its false-alarm rate on in-distribution data (or, for a
    held-out source, how unfamiliar that source looks). A run trained with masks also gets
    ``metrics["tumour_map"]`` (:func:`~braintumor.evaluation.map_detection_metrics`: its tumour map as a detector),
    from the same pass.

    Returns:
        ``(evaluation, groups, predictor)``: the :func:`~braintumor.evaluation.report_predictions` result of the
        images that could be read, their groups (their paths when ``test`` has none), the run's predictor.

    Example:
        >>> ev, groups, pred = evaluate_fold("runs/cv/folds/r0-f0", test_folder)     # doctest: +SKIP
        >>> ev.metrics["accuracy"], (Path("runs/cv/folds/r0-f0") / "test" / "metrics.json").is_file()  # doctest: +SKIP
        (0.95, True)
    """
    from .data.cache import load_images
    from .evaluation import checks_and_maps, model_pass, pass_metrics, report_predictions
    from .inference import Predictor

    run_dir = Path(run_dir)
    pred = Predictor.from_run(run_dir)
    checked, mapped = checks_and_maps(pred)
    loaded = load_images(test.paths, pred.preprocessor, stats=checked)
    y = np.asarray(test.labels)[loaded.kept]
    got = model_pass(pred, loaded, checked=checked, mapped=mapped)
    proba = got.proba
    every = test.paths  # a property that builds the whole list: once, not once per image
    paths = [str(every[i]) for i in loaded.kept]
    groups = [test.groups[i] for i in loaded.kept] if test.groups else paths
    ev = report_predictions(y, proba, pred.classes, run_dir / "test", paths, pred.positive_class, pred.threshold,
                            title="test fold", checks=got.checks)
    pass_metrics(ev.metrics, y, proba, pred.classes, pred.threshold, got, pred.input_check)
    if checked or mapped:
        RunDir(ev.out_dir).write_json(Path(ev.out_dir) / "metrics.json", ev.metrics)
    return ev, groups, pred


def _row(trained_on, tested_on, kind, n, metrics, ci, **extra) -> dict:
    return {"trained_on": trained_on, "tested_on": tested_on, "kind": kind, "n": int(n), "metrics": metrics,
            "ci": ci, **extra}


def findings(rows: list[dict]) -> list[str]:
    """Plain sentences where a model's cross-source figure falls short of its own within-source figures."""
    out = []
    for r in rows:
        if r["kind"] != "cross" or r["metrics"].get("balanced_accuracy") is None:
            continue
        within = [w for w in rows if w["kind"] == "within" and w["model"] == r["model"]
                  and w["metrics"].get("balanced_accuracy") is not None]
        if not within:
            continue
        w_ba = float(np.mean([w["metrics"]["balanced_accuracy"] for w in within]))
        c_ba = r["metrics"]["balanced_accuracy"]
        hi = (r["ci"].get("balanced_accuracy") or {}).get("high", c_ba)
        trained = " + ".join(r["trained_on"])
        if w_ba - c_ba >= DISAGREE_BY and hi < w_ba:
            sens, spec = r["metrics"].get("sensitivity"), r["metrics"].get("specificity")
            detail = (f" (sensitivity {sens:.2f}, specificity {spec:.2f})" if sens is not None and spec is not None
                      else "")
            out.append(f"Trained on {trained}, the model scores {w_ba:.3f} balanced accuracy on held-out images of "
                       f"its own source(s) but {c_ba:.3f} on {r['tested_on']}, which it never saw{detail}: the "
                       "within-source figure overstates how it does on new data; it has learned part of the "
                       "source, not only the tumour.")
        else:
            out.append(f"Trained on {trained}, the model keeps its level on {r['tested_on']}, which it never saw "
                       f"(balanced accuracy {c_ba:.3f} against {w_ba:.3f} within its own source(s)).")
    return out


def _has_mask(ds: ImageFolder, masks: str | None) -> np.ndarray:
    """Per image of ``ds``: whether ``masks`` holds its tumour mask (all ``False`` without ``masks``)."""
    if not masks:
        return np.zeros(len(ds), bool)
    from .data.masks import find_mask

    return np.array([find_mask(p, masks) is not None for p in ds.paths], bool)


def run_by_source(ds: ImageFolder, cfg: TrainConfig, out: Path, console=None,
                  keep_checkpoints: bool = False, only: list[str] | None = None) -> SourceCVResult:
    """Leave-one-source-out over the sources of ``ds`` (records grouped across sources; see the module doc);
    ``only``: leave out these sources alone (each still tested against all the others).

    Raises:
        UsageError: fewer than two sources.
    """
    from .training import train

    names = list(dict.fromkeys(ds.sources))
    if len(names) < 2:
        raise UsageError("--by-source needs at least two sources (give two or more data folders)")
    classes = ds.classes
    src = np.asarray(ds.sources)
    labels = np.asarray(ds.labels)
    groups = ds.groups or [str(p) for p in ds.paths]
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    errors: list[dict] = []
    skipped: list[dict] = []
    masked = _has_mask(ds, cfg.masks)
    for k, held in enumerate(names):
        if only is not None and held not in only:
            continue
        tr = np.flatnonzero(src != held)
        te = np.flatnonzero(src == held)
        trained_on = [n for n in names if n != held]
        tr, keep, n_copies, side = drop_copies(tr, te, groups)
        missing = [c for i, c in enumerate(classes) if not (labels[tr] == i).any()]
        reason = (f"the other sources have no images of class(es) {missing}" + (" once copies are removed"
                  if side == "train" and n_copies else "") if missing
                  else "every image has a copy in the other sources" if not len(keep) else None)
        if reason:
            skipped.append({"held_out": held, "reason": reason})
            if console is not None:
                console.print(f"[yellow]skipped[/yellow] leaving out {held}: {reason}")
            continue
        run_dir = out / "folds" / f"without-{_safe(held)}"
        if console is not None:
            console.print(f"[bold]leave out {held}[/bold]: train on {' + '.join(trained_on)} ({len(tr)} images), "
                          f"test on {held} ({len(keep)} images); {n_copies} cross-source copies left out of the "
                          f"{'training' if side == 'train' else 'test'} side")
        t0 = time.time()
        fold_cfg = replace(cfg, seed=cfg.seed + k)
        if cfg.masks and not masked[tr].any():  # the masks belong to the source left out: no tumour map here
            fold_cfg = replace(fold_cfg, masks=None)
            if console is not None:
                console.print(f"  no training image of this fold has a mask in {cfg.masks}: trained without a "
                              "tumour map")
        train(fold_cfg, out=run_dir, folder=ds.subset(tr), console=None)
        ev, _groups, pred = evaluate_fold(run_dir, ds.subset(keep))
        model = f"without {held}"
        m, ci = _metrics_with_ci(ev.y_true, ev.proba, classes, pred.positive_class, pred.threshold, cfg.seed)
        check = ev.metrics.get("input_check")
        cross = _row(trained_on, held, "cross", len(ev.y_true), m, ci, model=model, copies_excluded=n_copies,
                     copies_excluded_from=side, run=str(run_dir.relative_to(out)),
                     seconds=round(time.time() - t0, 1), flagged=None if check is None else check["flagged"],
                     map_detector=(ev.metrics.get("tumour_map") or {}).get("detector"),
                     head_or_map=(ev.metrics.get("tumour_map") or {}).get("head_or_map"))
        rows.append(cross)
        vpaths, vy, vproba, vsrc = _read_val(run_dir, classes)
        for name in trained_on:
            mine = np.asarray([s == name for s in vsrc], bool)
            if mine.sum() < 2:
                continue
            m_w, ci_w = _metrics_with_ci(vy[mine], vproba[mine], classes, pred.positive_class, pred.threshold,
                                         cfg.seed)
            rows.append(_row(trained_on, name, "within", int(mine.sum()), m_w, ci_w, model=model,
                             run=str(run_dir.relative_to(out))))
        errors.extend(_errors(ev, classes, pred, held, run_dir.relative_to(out)))
        if not keep_checkpoints and RunDir(run_dir).last.is_file():
            RunDir(run_dir).last.unlink()
        if console is not None:
            console.print("  " + "  ".join(f"{k} {cross['metrics'][k]:.3f}" for k in SOURCE_METRICS
                                           if cross["metrics"].get(k) is not None))
    if not rows:
        raise DataError("no source could be left out: " + "; ".join(f"{s['held_out']}: {s['reason']}"
                                                                   for s in skipped))
    result = SourceCVResult(out, names, rows, findings(rows), errors, skipped)
    _write(out, result, cfg, ds)
    return result


def drop_copies(train_idx, test_idx, groups) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Remove the images whose duplicate group spans both sides, from the larger side.

    A small test source stays whole (the figure is then "on all of it"), and a small training source keeps its
    images (Navoneel's 98 ``no`` images nearly all have copies in Nickparvar's set: removing them from training
    would leave none). Returns the new training and test indices, how many were removed, and from which side.

    Example:
        >>> tr, te, n, side = drop_copies([0, 1, 2, 3], [4, 5], ["a", "b", "c", "d", "a", "e"])
        >>> tr.tolist(), te.tolist(), n, side
        ([1, 2, 3], [4, 5], 1, 'train')
    """
    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    shared = {groups[i] for i in train_idx} & {groups[i] for i in test_idx}
    if len(train_idx) >= len(test_idx):
        kept = np.asarray([i for i in train_idx if groups[i] not in shared], dtype=int)
        return kept, test_idx, len(train_idx) - len(kept), "train"
    kept = np.asarray([i for i in test_idx if groups[i] not in shared], dtype=int)
    return train_idx, kept, len(test_idx) - len(kept), "test"


def _errors(ev, classes, pred, held: str, run_rel: Path) -> list[dict]:
    """The held-out source's misclassified images, the most confident mistakes first."""
    from .metrics import predict_labels

    pos = classes.index(pred.positive_class) if pred.positive_class in classes else 1
    y_pred = predict_labels(ev.proba, pred.threshold, pos)
    wrong = [i for i in range(len(ev.y_true)) if y_pred[i] != ev.y_true[i]]
    wrong.sort(key=lambda i: ev.proba[i][ev.y_true[i]])
    return [{"path": ev.paths[i], "source": held, "label": classes[ev.y_true[i]], "predicted": classes[y_pred[i]],
             "p_label": round(float(ev.proba[i][ev.y_true[i]]), 4), "run": str(run_rel)} for i in wrong[:N_ERRORS]]


def _write(out: Path, result: SourceCVResult, cfg: TrainConfig, ds: ImageFolder) -> None:
    from .display import csv_text
    from .rundir import atomic_write_text

    atomic_write_text(out / "by_source.csv", csv_text(
        ["trained_on", "tested_on", "kind", "n", *SOURCE_METRICS,
         *[f"{k}_{b}" for k in SOURCE_METRICS for b in ("low", "high")], "flagged"],
        [["+".join(r["trained_on"]), r["tested_on"], r["kind"], r["n"],
          *[_f(r["metrics"].get(k)) for k in SOURCE_METRICS],
          *[_f((r["ci"].get(k) or {}).get(b)) for k in SOURCE_METRICS for b in ("low", "high")],
          _f(r.get("flagged"))]
         for r in result.rows], name_columns=()))
    RunDir(out).write_json(out / "cv.json", {
        "kind": "by-source", "classes": ds.classes, "n_images": len(ds),
        "source_counts": ds.source_counts(), "source_roots": ds.source_roots, "config": cfg.to_dict(),
        **result.to_dict()})


def _f(v) -> str:
    return "" if v is None else f"{v:.4f}"
