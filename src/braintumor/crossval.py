"""Group-aware (repeated) stratified k-fold cross-validation: one model per fold, honest pooled results.

Each fold trains a full run (:func:`braintumor.training.train`) on the other folds; early stopping, temperature and
threshold use an inner validation split carved out of those training folds, so the test fold is never used to
choose anything. Duplicate groups (from :mod:`braintumor.data.audit`) keep near-copies of one scan inside one fold.
``show_leakage=True`` repeats the whole cross-validation with a naive image-level split and reports how much that
inflates the results.

Layout of the output folder::

    CV/
      cv.json                 settings, per-fold metrics, mean and 95% CI per metric, pooled metrics (+ bootstrap
                              CIs over groups), wall time per fold, leakage comparison, labels_to_check
                              (images their out-of-fold model confidently contradicts: look there for label errors)
      folds.csv               one row per fold: sizes, seconds, metrics
      oof_predictions.csv     out-of-fold predictions: repeat, fold, path, group, label, predicted, probabilities
      confusion_matrix.png  roc.png  calibration.png      pooled out-of-fold
      report.html
      folds/r0-f0/            the fold's run folder (train outputs + test/ evaluation of its test fold)
      naive/                  the same layout for the image-level split (with show_leakage)

Example:
    >>> from braintumor.crossval import cv
    >>> res = cv("data/phantoms", folds=3, model="cnn", img_size=64, epochs=3, out="runs/cv-demo")  # doctest: +SKIP
    >>> res.summary["accuracy"]                                                                    # doctest: +SKIP
    {'mean': 0.95, 'std': 0.02, 'low': 0.90, 'high': 1.0, 'n': 3}
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .crossval_sources import SourceCVResult, evaluate_fold, run_by_source
from .data.discover import ImageFolder
from .data.split import assert_disjoint_groups, kfold
from .errors import DataError, UsageError
from .evaluation import flagged_summary
from .report import LABEL_CHECK_BELOW
from .rundir import RunDir
from .tracking import check_available, flat_metrics, metric_key, run_files, track_group

CV_METRICS = ("accuracy", "balanced_accuracy", "f1", "macro_f1", "roc_auc", "pr_auc", "sensitivity", "specificity",
              "mcc")


@dataclass
class CVResult:
    """What :func:`cv` returns: per-fold metrics, their mean and 95% CI, pooled out-of-fold metrics.

    In Jupyter it displays as a table (fold mean +/- std, CI of the mean, pooled value and CI per metric).

    Example:
        >>> res = cv("data/phantoms", folds=3, model="cnn", img_size=64, epochs=3)   # doctest: +SKIP
        >>> res.summary["roc_auc"]["mean"], res.pooled["accuracy"]                   # doctest: +SKIP
        (0.99, 0.96)
    """

    out_dir: Path
    folds: list[dict]
    summary: dict
    pooled: dict
    pooled_ci: dict = field(default_factory=dict)
    grouped: bool = True
    n_groups: int | None = None
    leakage: dict | None = None
    naive: CVResult | None = None
    labels_to_check: list[dict] = field(default_factory=list)
    input_check: dict | None = None

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={self.summary[k]['mean']:.3f}" for k in ("accuracy", "roc_auc")
                          if self.summary.get(k, {}).get("mean") is not None)
        return f"CVResult({len(self.folds)} folds, {'group-aware' if self.grouped else 'image-level'}, {items})"

    def _repr_html_(self) -> str:
        from .display import cv_html

        return cv_html(self)

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "grouped": self.grouped, "n_groups": self.n_groups,
                "folds": self.folds, "summary": self.summary, "pooled": self.pooled, "pooled_ci": self.pooled_ci,
                "leakage": self.leakage, "labels_to_check": self.labels_to_check, "input_check": self.input_check}


def labels_to_check(oof: list[tuple], classes: list[str], below: float = LABEL_CHECK_BELOW) -> list[dict]:
    """Images whose out-of-fold prediction confidently contradicts their label: the first place to look for
    label errors.

    Each image's probabilities are averaged over repeats; it is listed when the probability of its own label is
    below ``below`` (the model, never trained on it, gives another class over 80%). Most listed images are hard
    cases, but this is how mislabelled ones show up (the idea behind confident learning, Northcutt et al. 2021):
    on Navoneel's yes/no set the top of the list are ``no`` images that show a lesion. Sorted by that
    probability, lowest first.

    Args:
        oof: ``(repeat, fold, path, group, label, predicted, proba)`` rows, as :func:`cv` collects them.
        classes: class names in label order.

    Example:
        >>> import numpy as np
        >>> from braintumor.crossval import labels_to_check
        >>> oof = [(0, 0, "no/a.jpg", "a", 0, 1, np.array([0.05, 0.95])),
        ...        (0, 1, "yes/b.jpg", "b", 1, 1, np.array([0.30, 0.70]))]
        >>> [(d["path"], d["label"], d["predicted"], d["p_label"]) for d in labels_to_check(oof, ["no", "yes"])]
        [('no/a.jpg', 'no', 'yes', 0.05)]
    """
    rows_of: dict[str, list[tuple]] = {}  # one row per repeat
    for row in oof:
        rows_of.setdefault(str(row[2]), []).append(row)
    out = []
    for path, rows in rows_of.items():
        _r, _f, _p, group, y, _yp, _proba = rows[0]
        p = np.mean([np.asarray(r[6], dtype=float) for r in rows], axis=0)
        if p[y] < below:
            out.append({"path": path, "label": classes[y], "predicted": classes[int(np.argmax(p))],
                        "p_label": round(float(p[y]), 4), "group": group,
                        "folds": sorted({int(r[1]) for r in rows})})
    return sorted(out, key=lambda d: (d["p_label"], d["path"]))


def _folder(data, slices="middle", class_map=None) -> ImageFolder:
    """An :class:`ImageFolder` from a folder, several folders (sources) or an ImageFolder."""
    if isinstance(data, ImageFolder):
        return data
    from .data.sources import discover_sources

    return discover_sources(list(data) if isinstance(data, list | tuple) else [data], class_map, slices=slices)


def _grouped(ds: ImageFolder, cfg: TrainConfig) -> ImageFolder:
    """Attach patient groups (``group_by``) and duplicate groups unless the records carry groups already."""
    if not cfg.group_duplicates and not cfg.group_by:
        return ds.with_groups([None] * len(ds))
    from .training import group_folder

    return group_folder(ds, cfg)


def _run_cv(ds: ImageFolder, cfg: TrainConfig, folds: int, repeats: int, out: Path, console, label: str,
            keep_checkpoints: bool) -> CVResult:
    from .metrics import predict_labels
    from .stats import bootstrap_ci, mean_ci
    from .training import train

    groups = ds.groups
    out.mkdir(parents=True, exist_ok=True)
    rows, oof, checks = [], [], []
    classes = ds.classes
    positive = None
    from .training import split_strata

    for r, f, tr, te in kfold(split_strata(ds, folds), groups, folds, repeats, cfg.seed):
        if groups is not None:
            assert_disjoint_groups(groups, tr, te)
        name = f"r{r}-f{f}"
        run_dir = out / "folds" / name
        if console is not None:
            console.print(f"[bold]{label}[/bold] fold {f + 1}/{folds}" + (f" repeat {r + 1}/{repeats}" if repeats > 1
                          else "") + f": {len(tr)} train+val / {len(te)} test images")
        t0 = time.time()
        fold_cfg = replace(cfg, seed=cfg.seed + 1000 * r + f)
        res = train(fold_cfg, out=run_dir, folder=ds.subset(tr), console=None)
        ev, test_groups, pred = evaluate_fold(run_dir, ds.subset(te))
        seconds = time.time() - t0
        positive = pred.positive_class
        row = {"repeat": r, "fold": f, "n_train": res.metadata["data"]["n_train"],
               "n_val": res.metadata["data"]["n_val"], "n_test": int(len(ev.y_true)), "seconds": round(seconds, 1),
               "best_epoch": res.metrics.get("best_epoch"),
               "temperature": (res.metadata.get("calibration") or {}).get("temperature"),
               "threshold": pred.threshold}
        row.update({k: ev.metrics.get(k) for k in CV_METRICS})
        check = ev.metrics.get("input_check")
        if check is not None:  # held-out images the fold's input check never saw: its false-alarm rate
            row["flagged"] = check["flagged"]
            checks.append(check)
        rows.append(row)
        pos_idx = classes.index(positive) if positive in classes else 1
        y_pred = predict_labels(ev.proba, pred.threshold, pos_idx)
        for p, g, yt, yp, pr in zip(ev.paths, test_groups, ev.y_true, y_pred, ev.proba, strict=True):
            oof.append((r, f, p, g, int(yt), int(yp), pr))
        if not keep_checkpoints and RunDir(run_dir).last.is_file():
            RunDir(run_dir).last.unlink()  # optimizer state: only needed to resume, 3x the model's size
        if console is not None:
            console.print(f"  accuracy {row['accuracy']:.3f}  ROC-AUC {row['roc_auc'] or float('nan'):.3f}  "
                          f"sensitivity {row.get('sensitivity') or float('nan'):.3f}  "
                          f"specificity {row.get('specificity') or float('nan'):.3f}  ({seconds:.0f} s)")

    summary = {k: mean_ci([row[k] for row in rows if row[k] is not None],
                          bounds=(-1.0, 1.0) if k == "mcc" else (0.0, 1.0)) for k in CV_METRICS}
    summary["seconds_per_fold"] = mean_ci([row["seconds"] for row in rows])
    y = np.asarray([o[4] for o in oof])
    proba = np.stack([o[6] for o in oof])
    paths = [o[2] for o in oof]
    # Pooled out-of-fold metrics: decisions are each fold's own (its threshold, if any); scores are pooled.
    y_pred_oof = np.asarray([o[5] for o in oof])
    pooled = pooled_metrics(y, proba, y_pred_oof, classes, positive)
    pooled_ci = bootstrap_ci(y, proba, classes, positive, groups=[o[3] for o in oof], n_boot=1000, seed=cfg.seed,
                             y_pred=y_pred_oof)
    _write_outputs(out, rows, oof, classes, y, proba, pooled, positive, label)
    n_groups = len(set(groups)) if groups is not None else None
    result = CVResult(out, rows, summary, pooled, pooled_ci, groups is not None, n_groups,
                      labels_to_check=labels_to_check(oof, classes), input_check=flagged_summary(checks))
    RunDir(out).write_json(out / "cv.json", {
        "kind": "cv", "split": label, "n_folds": folds, "repeats": repeats, "classes": classes,
        "positive_class": positive, "grouped": groups is not None, "n_images": len(ds), "n_groups": n_groups,
        "n_oof": len(paths), "config": cfg.to_dict(), **result.to_dict()})
    return result


def pooled_metrics(y: np.ndarray, proba: np.ndarray, y_pred: np.ndarray, classes: list[str],
                   positive: str | None) -> dict:
    """:func:`classification_metrics` of pooled scores, with the label-based metrics recomputed from the folds'
    own decisions ``y_pred`` (folds may carry different thresholds)."""
    from sklearn.metrics import confusion_matrix

    from .metrics import classification_metrics
    from .stats import metric_vector

    k = len(classes)
    m = classification_metrics(y, proba, classes, positive)
    pos = (classes.index(positive) if positive in classes else 1) if k == 2 else None
    v = metric_vector(y, y_pred, proba, k, pos, with_scores=False)
    for key in ("accuracy", "balanced_accuracy", "mcc", "macro_f1", "sensitivity", "specificity", "f1"):
        if key in v and key in m:
            m[key] = None if not np.isfinite(v[key]) else v[key]
    for i, c in enumerate(classes):
        for key in ("sensitivity", "specificity", "precision", "f1"):
            m["per_class"][c][key] = float(np.nan_to_num(v[f"{i}:{key}"]))
        m["per_class"][c]["recall"] = m["per_class"][c]["sensitivity"]
    m["confusion_matrix"] = confusion_matrix(y, y_pred, labels=list(range(k))).tolist()
    m["threshold"] = "per fold"
    return m


def _write_outputs(out: Path, rows, oof, classes, y, proba, pooled, positive, label) -> None:
    from .calibration import plot_reliability
    from .display import csv_text
    from .plots import plot_confusion, plot_roc
    from .rundir import atomic_write_text

    fields = list(rows[0])
    atomic_write_text(out / "folds.csv", csv_text(fields, [[r.get(k, "") for k in fields] for r in rows],
                                                  name_columns=()))
    # any file name: printable in `path` (and `group`), the exact bytes in `path_bytes` where that changed it
    atomic_write_text(out / "oof_predictions.csv", csv_text(
        ["repeat", "fold", "path", "group", "label", "predicted", *[f"p_{c}" for c in classes]],
        [[r, f, p, g, classes[yt], classes[yp], *[f"{v:.6f}" for v in pr]] for r, f, p, g, yt, yp, pr in oof]))
    plot_confusion(pooled["confusion_matrix"], classes, out / "confusion_matrix.png",
                   f"pooled out-of-fold ({label})")
    plot_roc(y, proba, list(classes), out / "roc.png", positive)
    plot_reliability(y, proba, out / "calibration.png", title="Calibration (pooled out-of-fold)")


def leakage_table(grouped: CVResult, naive: CVResult) -> dict:
    """Per metric: group-aware mean, naive mean, inflation (naive - group-aware) and both fold spreads."""
    out = {}
    for k in CV_METRICS:
        a, b = grouped.summary.get(k, {}), naive.summary.get(k, {})
        if a.get("mean") is None or b.get("mean") is None:
            continue
        out[k] = {"group_aware": a["mean"], "naive": b["mean"], "inflation": b["mean"] - a["mean"],
                  "group_aware_std": a.get("std"), "naive_std": b.get("std")}
    return out


def cv(data: str | Path | ImageFolder, folds: int = 5, *, repeats: int = 1, config: TrainConfig | None = None,
       out: str | Path | None = None, show_leakage: bool = False, console=None, keep_checkpoints: bool = False,
       report: bool = True, by_source: bool = False, hold_out: list[str] | None = None,
       **overrides) -> CVResult | SourceCVResult:
    """Cross-validate a training recipe.

    Args:
        data: a labelled folder (``<class>/<images>``), a list of folders (sources; map their classes with
            ``classes=`` in ``config`` or ``overrides``) or an :class:`ImageFolder` (records may carry groups).
        by_source: leave-one-source-out instead of k-fold: train on every source but one, test on the one left
            out (minus copies of training images); returns a :class:`SourceCVResult` (see :func:`run_by_source`).
        hold_out: with ``by_source``, leave out only these sources (names or folder paths), not each in turn.
        folds, repeats: ``repeats`` x stratified group ``folds``-fold (a new shuffle per repeat).
        config: the training recipe (default :class:`TrainConfig`); ``overrides`` replace its fields
            (``model="cnn", img_size=64, epochs=3``...).
        out: output folder (default ``runs/<time>-<data>-cv``).
        show_leakage: also run the naive image-level split and report the inflation (``result.leakage``).
        console: a ``rich`` console for progress lines.
        keep_checkpoints: keep each fold's ``last.pt`` (optimizer state); ``best.pt`` is always kept.
        report: write ``report.html``.

    Raises:
        DataError: too few images or groups for the folds.
        UsageError: bad settings.

    Example:
        >>> from braintumor import cv
        >>> res = cv("data/phantoms", folds=3, model="cnn", img_size=64, epochs=3,
        ...          out="runs/cv-demo", show_leakage=True)                         # doctest: +SKIP
        >>> res.summary["accuracy"]["mean"], res.leakage["accuracy"]["inflation"]    # doctest: +SKIP
        (0.95, 0.01)
    """
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    cfg = config if config is not None else TrainConfig()
    cfg = replace(cfg, val_dir=None, **overrides)
    ds = _folder(data, cfg.slices, cfg.classes)
    if not cfg.data_dir:
        roots = list(ds.source_roots.values()) or [str(ds.root)]
        cfg = replace(cfg, data_dir=roots[0] if len(roots) == 1 else roots)
    out = Path(out) if out is not None else RunDir.default_for(cfg.data_dirs, "cv-by-source" if by_source else "cv")
    if (out / "cv.json").exists():
        raise UsageError(f"{out} already holds a cross-validation; pick another --out")
    _check_before_work(cfg, ds, out, folds)
    if hold_out and not by_source:
        raise UsageError("--hold-out needs --by-source")
    held = resolve_sources(ds, hold_out) if hold_out else None
    # A cross-validation cannot be resumed: one that fails before any fold is finished leaves no folder behind (if
    # it made the folder); one that fails later keeps its finished folds (hours of training are not thrown away).
    top, p = None, out.absolute()
    while not p.exists() and p != p.parent:
        top, p = p, p.parent
    params = {**cfg.to_dict(), "folds": folds, "repeats": repeats, "show_leakage": show_leakage,
              "by_source": by_source}
    try:
        # tracked (cfg.track): one run for the whole cross-validation, the folds' runs nested under it
        with track_group(cfg.track, out, params) as group:
            result = _cv(ds, cfg, folds, repeats, out, show_leakage, console, keep_checkpoints, report, by_source,
                         held)
            group.complete(tracked_metrics(result), run_files(out))
        return result
    except BaseException:
        finished = sorted((out / "folds").glob("*/test/metrics.json")) if (out / "folds").is_dir() else []
        if top is not None and not finished:
            import shutil

            shutil.rmtree(top, ignore_errors=True)
        elif finished and console is not None:
            from .display import markup

            console.print(f"[yellow]stopped[/yellow]: the {len(finished)} finished fold(s) are kept in "
                          f"{markup(out / 'folds')} (each a run folder with its test/ predictions); no cv.json",
                          highlight=False)
        raise


def resolve_sources(ds: ImageFolder, wanted: list[str]) -> list[str]:
    """The source names ``wanted`` names (each a source name or its folder's path).

    Raises:
        UsageError: a name that is no source of ``ds``.
    """
    import os

    names = list(dict.fromkeys(ds.sources))
    by_path = {os.path.realpath(p): n for n, p in ds.source_roots.items()}
    out = []
    for w in wanted:
        n = w if w in names else by_path.get(os.path.realpath(w))
        if n is None:
            raise UsageError(f"--hold-out {w}: not one of the sources ({', '.join(names)})")
        out.append(n)
    return list(dict.fromkeys(out))


def _check_before_work(cfg: TrainConfig, ds: ImageFolder, out: Path, folds: int) -> None:
    """The options of a cross-validation that can be checked before any image is read.

    Raises:
        UsageError: ``--out`` a file (or inside the data), ``target_sensitivity`` for more than two classes,
            nothing to train, an unfit ``init_from``, a ``track`` whose package is not installed.
    """
    from .evaluation import check_out_folder
    from .models import get_spec
    from .training import check_classes, check_options

    check_available(cfg.track)
    check_out_folder(out, data_dirs=cfg.data_dirs, what="cross-validation results go into a folder", any_run=False)
    check_classes(cfg, ds)
    spec = get_spec(cfg.model)
    pretrained = True if cfg.init_from else spec.pretrained_default if cfg.pretrained is None else cfg.pretrained
    check_options(cfg, pretrained, RunDir(out / "folds" / "r0-f0"))


def _cv(ds: ImageFolder, cfg: TrainConfig, folds: int, repeats: int, out: Path, show_leakage: bool, console,
        keep_checkpoints: bool, report: bool, by_source: bool, held: list[str] | None = None
        ) -> CVResult | SourceCVResult:
    grouped_ds = _grouped(ds, cfg)
    if by_source:
        result = run_by_source(grouped_ds, cfg, out, console, keep_checkpoints, only=held)
        if report:
            from .report import write_cv_report

            write_cv_report(out)
        return result
    n_units = len(set(grouped_ds.groups)) if grouped_ds.groups else len(grouped_ds)
    counts = np.bincount(grouped_ds.labels)
    if n_units < folds or counts.min() < folds:
        raise DataError(f"{len(ds)} images in {n_units} groups (smallest class {counts.min()}): too few for "
                        f"{folds} folds")
    result = _run_cv(grouped_ds, cfg, folds, repeats, out, console,
                     "group-aware" if grouped_ds.groups is not None else "image-level", keep_checkpoints)
    if show_leakage:
        naive_cfg = replace(cfg, group_duplicates=False)
        naive_ds = ds.with_groups([None] * len(ds))
        naive = _run_cv(naive_ds, naive_cfg, folds, repeats, out / "naive", console, "naive image-level",
                        keep_checkpoints)
        result.naive = naive
        result.leakage = leakage_table(result, naive)
        doc = json.loads((out / "cv.json").read_text())
        doc["leakage"] = result.leakage
        doc["naive_summary"] = naive.summary
        RunDir(out).write_json(out / "cv.json", doc)
    if report:
        from .report import write_cv_report

        write_cv_report(out)
    return result


def tracked_metrics(result: CVResult | SourceCVResult) -> dict[str, float]:
    """What a tracked cross-validation logs as its final metrics (see :mod:`braintumor.tracking`).

    k-fold: the pooled out-of-fold metrics with their bootstrap intervals (``accuracy``, ``accuracy_ci_low``...),
    the fold mean, spread and interval (``folds/accuracy_mean``...) and, with ``show_leakage``, the naive split's
    means and the inflation (``leakage/accuracy_naive``...). Leave-one-source-out: each row's metrics and intervals
    (``cross/<source>/balanced_accuracy``, ``within/<model>/<source>/...``).

    Example:
        >>> res = cv("data/phantoms", folds=3, model="cnn", img_size=64, epochs=3)   # doctest: +SKIP
        >>> sorted(tracked_metrics(res))[:3]                                            # doctest: +SKIP
        ['accuracy', 'accuracy_ci_high', 'accuracy_ci_low']
    """
    if isinstance(result, SourceCVResult):
        out: dict[str, float] = {}
        for r in result.rows:
            where = metric_key(r["tested_on"]) if r["kind"] == "cross" else \
                f"{metric_key(r['model'])}/{metric_key(r['tested_on'])}"
            out.update(flat_metrics({**r["metrics"], "ci": r["ci"], "n": r["n"]}, f"{r['kind']}/{where}/"))
        return out
    out = flat_metrics({**result.pooled, "ci": result.pooled_ci})
    for k, s in result.summary.items():
        for stat, name in (("mean", "mean"), ("std", "std"), ("low", "ci_low"), ("high", "ci_high")):
            if isinstance(s.get(stat), int | float):
                out[f"folds/{metric_key(k)}_{name}"] = float(s[stat])
    for k, leak in (result.leakage or {}).items():
        out[f"leakage/{metric_key(k)}_naive"] = float(leak["naive"])
        out[f"leakage/{metric_key(k)}_inflation"] = float(leak["inflation"])
    return out
