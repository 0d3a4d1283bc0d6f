"""Evaluate a trained model on a labelled folder: metrics, predictions and plots.

Example:
    >>> from braintumor.evaluation import evaluate
    >>> result = evaluate("runs/my-run", "data/test")      # doctest: +SKIP
    >>> round(result.metrics["accuracy"], 3)               # doctest: +SKIP
    0.93
"""

from __future__ import annotations

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
    #: The input check's :class:`~braintumor.inference.Assessment` of each image (``None``: the run has no check).
    assessments: list | None = None

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


#: The input check's columns of an evaluation's ``predictions.csv`` (empty for a run without a check).
CHECK_COLUMNS = ("verdict", "in_distribution", "ood_score", "ood_reasons")


def _check_cells(a) -> list[str]:
    if a is None or a.in_distribution is None:
        return ["", "", "", ""]
    return [a.verdict or "", str(int(a.in_distribution)), "" if a.ood_score is None else f"{a.ood_score:.4f}",
            "; ".join(a.ood_reasons)]


def write_predictions(path: Path, paths: Sequence[str], y_true: Sequence[int], proba: np.ndarray,
                      classes: Sequence[str], y_pred: Sequence[int], checks: Sequence | None = None) -> None:
    """``predictions.csv``: path, label, predicted, ``p_<class>``; with ``checks`` (one
    :class:`~braintumor.inference.Assessment` or ``None`` per row) also :data:`CHECK_COLUMNS`.

    Written whole, then renamed into place (never a cut-off file). File names that are not UTF-8 appear
    :func:`~braintumor.display.printable`, their exact bytes in a last column ``path_bytes``.
    """
    from .display import csv_text
    from .rundir import atomic_write_text

    header = ["path", "label", "predicted", *[f"p_{c}" for c in classes],
              *(CHECK_COLUMNS if checks is not None else ())]
    rows = zip(paths, y_true, proba, y_pred, checks if checks is not None else [None] * len(paths), strict=True)
    atomic_write_text(Path(path), csv_text(header, [
        [p, classes[t], classes[yp], *[f"{v:.6f}" for v in pr], *(_check_cells(a) if checks is not None else ())]
        for p, t, pr, yp, a in rows]))


def _predicted(m: dict, proba: np.ndarray, classes: Sequence[str], threshold: float | None) -> np.ndarray:
    """The predicted class of each row, as :func:`~braintumor.metrics.classification_metrics` counts it."""
    from .metrics import predict_labels

    pos = list(classes).index(m["positive_class"]) if m.get("positive_class") else 1
    return predict_labels(proba, threshold, pos)


def report_predictions(y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str], out_dir: Path | None,
                       paths: Sequence[str] = (), positive: str | None = None,
                       threshold: float | None = None, title: str = "", checks: Sequence | None = None
                       ) -> EvaluationResult:
    """Metrics from probabilities, and (with ``out_dir``) ``metrics.json``, ``predictions.csv`` and plots.

    ``checks`` (one :class:`~braintumor.inference.Assessment` or ``None`` per image) adds the input check's
    columns to ``predictions.csv``; the metrics are always computed on every image.
    """
    y = np.asarray(y_true, dtype=int)
    m = classification_metrics(y, proba, list(classes), positive, threshold)
    res = EvaluationResult(m, out_dir, list(map(str, paths)), y, proba)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        RunDir(out_dir).write_json(out_dir / "metrics.json", m)
        if paths:
            write_predictions(out_dir / "predictions.csv", [str(p) for p in paths], y, proba, classes,
                              _predicted(m, proba, classes, threshold), checks)
        plot_confusion(m["confusion_matrix"], classes, out_dir / "confusion_matrix.png", title)
        plot_roc(y, proba, list(classes), out_dir / "roc.png", m.get("positive_class"))
    return res


def check_writable_place(out: str | Path, start: Path, flag: str = "--out") -> None:
    """The nearest existing folder at or above ``start`` (where ``out`` will be made) must be a folder this process
    can write in.

    Raises:
        UsageError: one line naming ``flag``: a path through a file, or a folder that cannot be written.
    """
    import os

    from .display import printable
    from .errors import UsageError

    shown, p = printable(out), Path(start)
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UsageError(f"{flag} {shown}: {printable(p)} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {shown}: cannot write in {printable(p)} (permission denied)")


def check_out_folder(out: str | Path, *, data_dirs=(), runs=(), what: str = "give a folder",
                     any_run: bool = True, flag: str = "--out") -> None:
    """Refuse an output folder that can only fail or would overwrite or spoil something, before any work.

    Refused: an existing file; a path through a file; a folder that cannot be written; a folder inside one of
    ``data_dirs`` (what is written there would be read as images next time; folders named ``_*`` or ``.*``, which
    discovery skips, are allowed); a run folder (one of ``runs``, or with ``any_run`` any folder holding a
    ``metadata.json``): a run's own files are never overwritten (sub-folders such as ``RUN/evaluations/<name>``
    are fine).

    Raises:
        UsageError: one line naming ``--out``, the problem and what to do.

    Example:
        >>> check_out_folder("runs/demo", runs=["runs/demo"])                        # doctest: +SKIP
        Traceback (most recent call last):
        ...
        braintumor.errors.UsageError: --out runs/demo is the run folder itself: its own ... would be overwritten ...
    """

    from .display import printable
    from .errors import UsageError

    out = Path(out)
    shown = printable(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {shown}: is a file; {what}")
    check_writable_place(out, out.absolute(), flag)
    target = out.resolve()
    for run in runs:
        base = Path(run).resolve()
        if target == base:
            raise UsageError(f"{flag} {shown} is the run folder itself: its own files (metrics.json, "
                             f"predictions.csv, figures) would be overwritten; write into a sub-folder such as "
                             f"{printable(Path(run) / 'evaluations')}/<name>, or elsewhere")
    if any_run and out.is_dir() and (out / "metadata.json").is_file():
        raise UsageError(f"{flag} {shown} is a run folder: its own files would be overwritten; pick another {flag}")
    for d in data_dirs:
        base = Path(d).resolve()
        if target == base or (target.is_relative_to(base)
                              and not target.relative_to(base).parts[0].startswith((".", "_"))):
            raise UsageError(f"{flag} {shown} is inside the data folder {printable(d)}: what is written there would be "
                             "read as images; write elsewhere (or into a folder named _out there)")


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
             ci: bool = True, n_boot: int = 1000, backend: str = "torch", notice=None,
             chunk: int = 512, tta: bool = False) -> EvaluationResult:
    """Evaluate a run folder (or a :class:`Predictor`) on a labelled folder ``data_dir/<class>/...``.

    Outputs go to ``out`` (default: ``RUN/evaluations/<folder name>/``). Class folders must be among the
    model's classes, unless ``classes`` maps both onto common classes (:mod:`braintumor.data.sources`): e.g. a
    4-class model as a tumour detector on a yes/no folder with
    ``{"tumour": ["glioma", "meningioma", "pituitary", "yes"], "no_tumour": ["notumor", "no"]}``; the model's
    probabilities are summed per class of the map (:func:`collapse_classes`). Unreadable files are skipped and
    listed in ``result.skipped``. With ``ci`` the metrics get ``ci``: percentile-bootstrap 95% intervals over
    images (:func:`braintumor.stats.bootstrap_ci`).

    A run's own files are never overwritten: an ``out`` that is the run folder (or any run folder), a file, or a
    folder inside ``data_dir`` is refused before any image is read (:func:`check_out_folder`).

    ``backend``: the engine of a run folder, as for prediction (``torch``, ``onnx`` or ``auto``: onnxruntime on the
    CPU, the run's FP32 export made on demand; probabilities within 1e-4 of torch's, identical labels). INT8 is never
    used here: an evaluation measures the run's model. ``tta``: mirror test-time augmentation (each image's
    probabilities and tumour map averaged with its mirror image's; :attr:`Predictor.tta`), recorded as
    ``metrics["tta"]``. Images are read, prepared and predicted ``chunk`` at a time,
    so memory does not grow with the folder (only the probabilities are kept).

    Example:
        >>> from braintumor import evaluate
        >>> res = evaluate("runs/demo", "data/phantoms-test")     # doctest: +SKIP
        >>> res                                                    # doctest: +SKIP
        EvaluationResult(n=100, accuracy=0.950, balanced_accuracy=0.950, ...)
        >>> res.out_dir                                            # doctest: +SKIP
        PosixPath('runs/demo/evaluations/phantoms-test')
    """
    if isinstance(model, Predictor):  # an Ensemble has its members' run folders
        runs = [r for r in getattr(model, "run_dirs", [model.run_dir]) if r is not None]
    else:
        runs = [Path(model)] if Path(model).is_dir() else []
    if out is not None:  # before any work (even loading): never a run's own files, never inside the data
        check_out_folder(out, data_dirs=[data_dir], runs=runs, what="evaluations go into a folder")
    if isinstance(model, Predictor):
        pred = model
    elif str(backend).lower() == "torch":
        pred = Predictor.from_run(model)
    else:
        from .backends import load_predictor

        pred = load_predictor(model, backend=backend, notice=notice, precision="fp32")
    if tta and not getattr(pred, "tta", False):
        if pred is model:  # the caller's predictor stays as it was: a shallow copy (same model) mirrors
            import copy

            pred = copy.copy(pred)
        pred.tta = True
    from .data.slices import run_slices

    classes_out, positive, threshold = pred.classes, pred.positive_class, pred.threshold
    if classes:
        from .data.sources import discover_sources, map_names, parse_class_map

        cmap = parse_class_map(classes)
        map_names(pred.classes, cmap, what="model class")  # every model class must be mapped
        # the map names the model's classes too: they are no folder of the data set, and are checked above
        ds = discover_sources([data_dir], cmap, slices=run_slices(pred.metadata), require_all=False,
                              known=pred.classes)
        classes_out = ds.classes
        from .data.discover import positive_class

        positive = positive_class(classes_out)
        threshold = _mapped_threshold(pred, cmap, positive)
    else:
        ds = discover(data_dir, classes=pred.classes, slices=run_slices(pred.metadata))
    checked, mapped = checks_and_maps(pred)
    every = ds.paths  # a property that builds the whole list: once, not once per image
    kept, skipped, probas, score_parts = [], [], [], []
    map_max: list[float] = []
    found: list[bool] = []
    checks: list | None = [] if checked else None
    for start in range(0, len(every), max(1, int(chunk))):  # read, prepare and predict a chunk at a time
        loaded = load_images(every[start:start + chunk], pred.preprocessor, strict=strict, on_skip=on_skip,
                             progress=progress, stats=checked)
        skipped += loaded.skipped
        if not loaded.kept:
            continue
        kept += [start + i for i in loaded.kept]
        got = model_pass(pred, loaded, checked=checked, mapped=mapped, batch_size=batch_size)
        if checked:
            score_parts.append(got.scores)
            checks += got.checks
        if mapped:
            map_max += got.map_max
            found += got.found
        probas.append(got.proba)
    proba = np.concatenate(probas) if probas else np.empty((0, len(pred.classes)), np.float32)
    scores = np.concatenate(score_parts) if score_parts else None
    y = np.asarray(ds.labels)[kept] if kept else np.empty(0, int)
    if classes:
        proba, _ = collapse_classes(proba, pred.classes, cmap)
    if out is None and pred.run_dir is not None:
        out = RunDir(pred.run_dir).evaluation(Path(data_dir).resolve().name)
    paths = [str(every[i]) for i in kept]
    res = report_predictions(y, proba, classes_out, Path(out) if out else None, paths, positive,
                             threshold, title=f"{Path(data_dir).name}",
                             checks=checks if checks is not None else [None] * len(paths))
    if classes:
        res.metrics["class_map"] = cmap
    if getattr(pred, "tta", False):
        res.metrics["tta"] = "mirror"
    res.skipped = skipped
    pass_metrics(res.metrics, y, proba, classes_out, threshold,
                 PassOutputs(proba, scores, checks, map_max if mapped else None, found if mapped else None),
                 pred.input_check if checked else None)
    if checks is not None:
        res.assessments = checks
        if res.out_dir is not None and scores is not None and len(scores):
            from .ood import NOT_BRAIN

            plot_ood_scores(scores, pred.input_check.summary, Path(res.out_dir) / "ood_scores.png",
                            title=f"{Path(data_dir).name}: input check",
                            not_brain=[a.verdict == NOT_BRAIN for a in checks])
    if ci and len(y):  # percentile-bootstrap 95% intervals (braintumor.stats), saved with the metrics
        from .stats import bootstrap_ci

        res.metrics["ci"] = bootstrap_ci(y, proba, classes_out, positive, threshold, n_boot=n_boot)
    if res.out_dir is not None:
        RunDir(res.out_dir).write_json(Path(res.out_dir) / "metrics.json", res.metrics)
        run_dir = getattr(pred, "run_dir", None)
        if run_dir is not None and Path(res.out_dir).resolve().parent == (Path(run_dir) / "evaluations").resolve():
            from .model_card import refresh_model_card

            refresh_model_card(run_dir)  # the card lists the run's evaluations
    return res


def checks_and_maps(pred) -> tuple[bool, bool]:
    """Whether an evaluation with ``pred`` assesses its inputs (the run has an input check and it is on) and scores
    its tumour map (a run trained with masks)."""
    checked = getattr(pred, "input_check", None) is not None and getattr(pred, "check_inputs", True)
    return checked, bool(getattr(pred, "has_tumour_map", False))


@dataclass
class PassOutputs:
    """What :func:`model_pass` gives for a set of prepared images."""

    proba: np.ndarray
    scores: np.ndarray | None = None
    checks: list | None = None
    map_max: list[float] | None = None
    found: list[bool] | None = None


def model_pass(pred, loaded, *, checked: bool, mapped: bool, batch_size: int = 64) -> PassOutputs:
    """Probabilities of ``loaded`` (:func:`~braintumor.data.cache.load_images`; with ``stats`` when ``checked``)
    and, in the same model pass, the input check's scores and verdicts (``checked``) and, per image, the tumour
    map's maximum and whether it outlines a region (``mapped``; :func:`~braintumor.outline.lesion_found`). Maps
    are reduced batch by batch, never kept, so memory does not grow with the number of images."""
    if not (checked or mapped):
        return PassOutputs(pred.proba_prepared(loaded.images, batch_size))
    from .outline import lesion_found

    probas, scores, map_max, found = [], [], [], []
    for i in range(0, len(loaded.images), batch_size):
        out = pred.outputs_prepared(loaded.images[i:i + batch_size], maps=mapped, scores=checked,
                                    batch_size=batch_size)
        probas.append(out.proba)
        if checked:
            scores.append(out.scores)
        if mapped:
            map_max += [float(m.max()) for m in out.maps]
            found += [lesion_found(m) for m in out.maps]
    proba = np.concatenate(probas) if probas else np.zeros((0, len(pred.classes)), np.float32)
    res = PassOutputs(proba, map_max=map_max if mapped else None, found=found if mapped else None)
    if checked:
        res.scores = np.concatenate(scores) if scores else np.zeros(0, np.float64)
        res.checks = pred.assess(proba, pred.labels_from_proba(proba), loaded.stats, res.scores)
    return res


def pass_metrics(metrics: dict, y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str],
                 threshold: float | None, got: PassOutputs, check=None) -> None:
    """Add to an evaluation's ``metrics`` what :func:`model_pass` measured beside the probabilities: the
    ``input_check`` block (:func:`input_check_metrics`, when the pass assessed its inputs; ``check`` is the run's
    :class:`~braintumor.ood.InputCheck`) and the ``tumour_map`` block (:func:`map_detection_metrics`, when it scored
    tumour maps). ``proba`` and ``classes`` are those the metrics were computed on (after any class mapping);
    the predicted labels are counted as :func:`~braintumor.metrics.classification_metrics` counts them."""
    if got.checks is None and got.found is None:
        return
    y_pred = _predicted(metrics, proba, classes, threshold)
    if got.checks is not None:
        metrics["input_check"] = input_check_metrics(y_true, y_pred, got.checks, check)
    if got.found is not None:
        metrics["tumour_map"] = map_detection_metrics(y_true, classes, got.map_max, got.found, y_pred)


def flagged_summary(parts: list[dict]) -> dict | None:
    """Pool the ``input_check`` blocks (:func:`input_check_metrics`) of several evaluations (folds): images flagged
    (``not_brain_mri`` or ``unfamiliar``) among all of them, with a Wilson 95% interval, and the counts of each
    verdict.

    Returns ``None`` when no part has an input check.

    Example:
        >>> flagged_summary([{"n": 50, "counts": {"flagged": 1, "not_brain_mri": 0, "unfamiliar": 1,
        ...                                        "uncertain": 3, "answered": 46}},
        ...                  {"n": 50, "counts": {"flagged": 0, "not_brain_mri": 0, "unfamiliar": 0,
        ...                                        "uncertain": 2, "answered": 48}}])["flagged"]
        0.01
    """
    from .stats import wilson_ci

    parts = [p for p in parts if p]
    if not parts:
        return None
    n = sum(int(p["n"]) for p in parts)
    counts = {k: sum(int(p["counts"].get(k, 0)) for p in parts) for k in parts[0]["counts"]}
    lo, hi = wilson_ci(counts["flagged"], n)
    return {"n": n, "flagged": round(counts["flagged"] / n, 4) if n else None,
            "flagged_ci": [round(lo, 4), round(hi, 4)], "counts": counts,
            "uncertain": round(counts.get("uncertain", 0) / n, 4) if n else None}


def map_detection_metrics(y_true: Sequence[int], classes: Sequence[str], map_max: Sequence[float],
                          found: Sequence[bool], y_pred: Sequence[int] | None = None) -> dict:
    """The ``tumour_map`` block of an evaluation's ``metrics.json`` (runs trained with masks): the tumour map used
    as a detector, independently of the class head.

    Keys: ``threshold`` (0.5, :data:`braintumor.outline.THRESHOLD`) and ``rule`` (in words); ``per_class``: per
    folder class ``{n, found, mean_max}`` (the share of images whose map outlines a region, as ``predict
    --outline`` would, and the mean of the map's maximum); when the classes split into no-tumour folders
    (:data:`~braintumor.data.classes.NEGATIVE_NAMES`) and tumour folders, ``detector``: ``sensitivity``,
    ``specificity``, ``balanced_accuracy`` of "a region was found", and ``roc_auc`` of the map's maximum as a
    tumour score. With the class head's predictions ``y_pred`` (indices into ``classes``), also ``head_or_map``:
    ``sensitivity``, ``specificity``, ``balanced_accuracy`` of "the head says a tumour class *or* the map outlines a
    region", a fixed rule (nothing chosen on the data evaluated): across sources the head and the map miss
    different tumours (README, "Across sources").

    Example:
        >>> m = map_detection_metrics([1, 1, 0, 0], ["no", "yes"], [0.9, 0.3, 0.2, 0.7], [True, False, False, True],
        ...                           y_pred=[1, 1, 0, 0])
        >>> m["detector"]["sensitivity"], m["detector"]["specificity"], m["detector"]["roc_auc"]
        (0.5, 0.5, 0.75)
        >>> m["head_or_map"]["sensitivity"], m["head_or_map"]["specificity"]
        (1.0, 0.5)
    """
    from .data.classes import NEGATIVE_NAMES
    from .outline import THRESHOLD
    from .stats import binary_auc

    y = np.asarray(y_true, dtype=int)
    mx, fd = np.asarray(map_max, dtype=np.float64), np.asarray(found, dtype=bool)
    out: dict = {"threshold": THRESHOLD, "rule": "a connected region of the map >= threshold, specks dropped "
                                                  "(as predict --outline)", "per_class": {}}
    for i, c in enumerate(classes):
        sel = y == i
        if sel.any():
            out["per_class"][c] = {"n": int(sel.sum()), "found": round(float(fd[sel].mean()), 4),
                                   "mean_max": round(float(mx[sel].mean()), 4)}
    negative = [i for i, c in enumerate(classes) if c.lower() in NEGATIVE_NAMES]
    neg = np.isin(y, negative)
    if neg.any() and (~neg).any():
        sens, spec = float(fd[~neg].mean()), float((~fd[neg]).mean())
        out["detector"] = {"n_tumour": int((~neg).sum()), "n_no_tumour": int(neg.sum()),
                           "sensitivity": round(sens, 4), "specificity": round(spec, 4),
                           "balanced_accuracy": round((sens + spec) / 2, 4),
                           "roc_auc": round(float(binary_auc((~neg).astype(int), mx)), 4)}
        if y_pred is not None:
            either = ~np.isin(np.asarray(y_pred, dtype=int), negative) | fd
            sens, spec = float(either[~neg].mean()), float((~either[neg]).mean())
            out["head_or_map"] = {"rule": "the class head says a tumour class, or the map outlines a region",
                                  "sensitivity": round(sens, 4), "specificity": round(spec, 4),
                                  "balanced_accuracy": round((sens + spec) / 2, 4)}
    return out


def _subset_metrics(y: np.ndarray, y_pred: np.ndarray, mask: np.ndarray) -> dict:
    """``n``, ``share`` (of all images), ``accuracy`` and ``balanced_accuracy`` (mean recall over the classes
    present; ``None`` with fewer than two) of the images in ``mask``."""
    n = int(mask.sum())
    yt, yp = y[mask], y_pred[mask]
    present = np.unique(yt)
    bal = float(np.mean([(yp[yt == c] == c).mean() for c in present])) if len(present) > 1 else None
    return {"n": n, "share": round(float(mask.mean()), 4) if len(mask) else None,
            "accuracy": float((yt == yp).mean()) if n else None, "balanced_accuracy": bal}


def input_check_metrics(y_true: Sequence[int], y_pred: Sequence[int], assessments: Sequence,
                        check=None) -> dict:
    """The ``input_check`` block of an evaluation's ``metrics.json``: what the run's input check
    (:mod:`braintumor.ood`) said about a labelled folder, and how the model did on what it let through.

    Keys: ``n``; the shares of the verdicts ``not_brain_mri``, ``unfamiliar``, ``uncertain`` and ``flagged``
    (``not_brain_mri`` or ``unfamiliar``), with ``counts`` of each (and of ``answered``); ``ood_score`` (quantiles
    ``p1``...``p99``, ``max`` of the folder's scores, ``None`` without a feature check); ``threshold`` and
    ``min_confidence`` of the check; ``all``, ``in_distribution`` (not flagged) and ``answered`` (not flagged and
    not uncertain: the images that get a class), each ``{n, share, accuracy, balanced_accuracy}``; ``errors``: the
    model's errors (``total``) and how many of them fall among the ``flagged``, ``uncertain`` and ``answered``
    images. Shares are rounded to 4 digits; every image is counted, whatever its verdict, in ``all``.

    Example:
        >>> from braintumor.inference import Assessment
        >>> a = [Assessment("yes", True, 0.5), Assessment("unfamiliar", False, 3.0), Assessment("no", True, 0.8)]
        >>> m = input_check_metrics([1, 0, 0], [1, 1, 0], a)
        >>> m["flagged"], m["answered"]["accuracy"], m["errors"]
        (0.3333, 1.0, {'total': 1, 'flagged': 1, 'uncertain': 0, 'answered': 0})
    """
    from .ood import NOT_BRAIN, UNCERTAIN, UNFAMILIAR, _quantiles

    y, yp = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    verdicts = [a.verdict for a in assessments]
    n = len(verdicts)
    not_brain = np.array([v == NOT_BRAIN for v in verdicts], dtype=bool)
    unfamiliar = np.array([v == UNFAMILIAR for v in verdicts], dtype=bool)
    uncertain = np.array([v == UNCERTAIN for v in verdicts], dtype=bool)
    flagged = not_brain | unfamiliar
    answered = ~(flagged | uncertain)
    wrong = y != yp
    scores = np.asarray([a.ood_score for a in assessments if a.ood_score is not None], dtype=np.float64)

    def share(mask: np.ndarray) -> float | None:
        return round(float(mask.mean()), 4) if n else None

    return {
        "n": n,
        NOT_BRAIN: share(not_brain), UNFAMILIAR: share(unfamiliar), UNCERTAIN: share(uncertain),
        "flagged": share(flagged),
        "counts": {NOT_BRAIN: int(not_brain.sum()), UNFAMILIAR: int(unfamiliar.sum()),
                   UNCERTAIN: int(uncertain.sum()), "flagged": int(flagged.sum()), "answered": int(answered.sum())},
        "ood_score": _quantiles(scores) if len(scores) else None,
        "threshold": getattr(check, "threshold", None),
        "min_confidence": getattr(check, "min_confidence", None),
        "all": _subset_metrics(y, yp, np.ones(n, dtype=bool)),
        "in_distribution": _subset_metrics(y, yp, ~flagged),
        "answered": _subset_metrics(y, yp, answered),
        "errors": {"total": int(wrong.sum()), "flagged": int((wrong & flagged).sum()),
                   "uncertain": int((wrong & uncertain).sum()), "answered": int((wrong & answered).sum())},
    }


def plot_ood_scores(scores: Sequence[float], summary: dict | None, path: Path, title: str = "",
                    not_brain: Sequence[bool] | None = None) -> Path:
    """Histogram of a folder's ``ood_score`` (stacked: images that pass the rules / fail them), with the run's
    validation and training score distributions above it (boxes from the quantiles in the check's ``summary``:
    25-75% box, median, 5-95% whiskers, 99% and max marked) and the threshold at 1.0."""
    from matplotlib.patches import Rectangle

    from .display import plot_text
    from .plots import _save, plt

    s = np.asarray(scores, dtype=np.float64)
    nb = np.asarray(not_brain if not_brain is not None else np.zeros(len(s)), dtype=bool)
    keep = np.isfinite(s)
    s, nb = s[keep], nb[keep]
    refs = [(name, (summary or {}).get(key) or {}) for key, name in (("val_score", "validation"),
                                                                        ("train_score", "training"))]
    refs = [(name, q) for name, q in refs if all(k in q for k in ("p5", "p25", "p50", "p75", "p95"))]
    values = [*s.tolist(), 1.0, *[v for _, q in refs for v in q.values()]]
    lo, hi = max(min(values), 1e-3), max(values)
    log = hi / lo > 20
    fig, (ax_ref, ax) = plt.subplots(2, 1, figsize=(7, 4.4), sharex=True, gridspec_kw={"height_ratios": [1, 3]})
    for row, (_, q) in enumerate(refs):
        colour = f"C{row + 2}"
        ax_ref.hlines(row, q["p5"], q["p95"], color=colour, lw=1.2)
        ax_ref.add_patch(Rectangle((q["p25"], row - 0.25), q["p75"] - q["p25"], 0.5, fc=colour, ec=colour, alpha=0.35))
        ax_ref.vlines(q["p50"], row - 0.25, row + 0.25, color=colour, lw=2)
        marks = [q[k] for k in ("p99", "max") if k in q]
        ax_ref.plot(marks, [row] * len(marks), "x", color=colour, ms=5)
    ax_ref.set_yticks(range(len(refs)), [name for name, _ in refs])
    ax_ref.set_ylim(-0.6, max(len(refs), 1) - 0.4)
    ax_ref.axvline(1.0, color="C3", ls="--", lw=1)
    ax_ref.set_title(plot_text(title) if title else "Input check: ood_score", fontsize=10)
    ax_ref.grid(alpha=0.3, axis="x")
    if not refs:
        ax_ref.text(0.5, 0.5, "no validation quantiles in metadata.json", transform=ax_ref.transAxes, ha="center",
                    va="center", fontsize=8, color="grey")
    bins = np.geomspace(lo * 0.9, hi * 1.1, 40) if log else np.linspace(0, hi * 1.05, 40)
    first = "pass the rules" if nb.any() else "this folder"
    data, labels, colours = [s[~nb]], [f"{first} ({int((~nb).sum())})"], ["C0"]
    if nb.any():
        data.append(s[nb])
        labels.append(f"not_brain_mri by the rules ({int(nb.sum())})")
        colours.append("C7")
    ax.hist(data, bins=bins, stacked=True, label=labels, color=colours)
    ax.axvline(1.0, color="C3", ls="--", lw=1, label="threshold (1.0): above is unfamiliar")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("ood_score (feature distance / threshold)")
    ax.set_ylabel("images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _mapped_threshold(pred: Predictor, class_map, positive: str | None) -> float | None:
    """The model's decision threshold where it still means the same thing: a binary model whose positive class
    alone makes up the map's positive class. Otherwise ``None`` (argmax of the summed probabilities)."""
    from .data.sources import class_of

    if pred.threshold is None or positive is None or pred.positive_class is None:
        return None
    takes = [c for c in pred.classes if class_of(c, class_map) == positive]
    return pred.threshold if takes == [pred.positive_class] else None
