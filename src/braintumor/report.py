"""One self-contained HTML page per run (``report.html``): every figure embedded, no network, no CDN.

Three pages, each a list of sections; every section is one top-level function of the page's context, built on its
own: a section that fails says so in the page instead of losing the report (or the training run that called it).

* :func:`write_report` - a training run folder. Sections (``_RunContext``): ``_section_summary``,
  ``_section_data``, ``_section_audit``, ``_section_metrics``, ``_section_curves``, ``_section_confusion``,
  ``_section_roc``, ``_section_calibration``, ``_section_per_class``, ``_section_samples``, ``_section_gradcam``,
  ``_section_tumour_map`` (runs trained with masks), ``_section_input_check``, ``_section_caveats``.
* :func:`write_cv_report` - a cross-validation folder of :func:`braintumor.crossval.cv`. Sections
  (``_CVContext``): ``_cv_section_summary``, ``_cv_section_data``, ``_cv_section_audit``, ``_cv_section_metrics``,
  ``_cv_section_folds``, ``_cv_section_pooled``, ``_cv_section_confusion``, ``_cv_section_roc``,
  ``_cv_section_calibration``, ``_cv_section_labels``, ``_cv_section_leakage``, ``_cv_section_caveats``.
* :func:`write_source_report` - a leave-one-source-out folder (:mod:`braintumor.crossval_sources`). Sections
  (``_SourceContext``): ``_source_section_summary``, ``_source_section_table``, ``_source_section_data``,
  ``_source_section_errors``, ``_source_section_caveats``.

The "Data audit" section of the run and cross-validation pages is :func:`audit_html`: the findings of
:func:`braintumor.data.audit.audit` in sentences (:func:`audit_findings`), then duplicate groups with thumbnails,
the source check, class balance and per-class image statistics as small tables.

Example:
    >>> from braintumor.report import write_report
    >>> write_report("runs/demo")                # doctest: +SKIP
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .rundir import RunDir, atomic_write_text, read_predictions
from .stats import bootstrap_ci, format_ci

RUN_SECTIONS = ("summary", "data", "audit", "metrics", "curves", "confusion", "roc", "calibration", "per-class",
                "samples", "gradcam", "caveats")
CV_SECTIONS = ("summary", "data", "audit", "metrics", "folds", "pooled", "confusion", "roc", "calibration", "leakage",
               "caveats")
#: The extra section of runs trained with tumour masks (``metadata.json`` ``tumour_map``).
MAP_SECTION = "tumour-map"
#: The section on the input check (:mod:`braintumor.ood`): its settings and scores, or how to fit one.
CHECK_SECTION = "input-check"
#: The figure of the abstention limit's coverage / accuracy trade-off on the validation split (in the run folder).
COVERAGE_FILE = "coverage.png"
AUDIT_MAX_IMAGES = 3000  # run the duplicate audit from the report only when the data set is this small
#: ``labels_to_check`` of a cross-validation (:mod:`braintumor.crossval`) lists images whose out-of-fold probability
#: of their own label is below this (defined here so that this module imports no training code).
LABEL_CHECK_BELOW = 0.2
#: The metrics of the leave-one-source-out table (:mod:`braintumor.crossval_sources`).
SOURCE_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc")
#: Duplicate groups shown with thumbnails in the audit section (label conflicts first, then the largest groups),
#: and thumbnails per group.
AUDIT_GROUPS_SHOWN, AUDIT_THUMBS_PER_GROUP = 4, 4
#: Rows of the audit's file lists (copies in another folder, unreadable files) shown in the page.
AUDIT_ROWS_SHOWN = 10

Section = tuple[str, str, Callable]  # (html id, heading, function of the page's context -> HTML)


# ------------------------------------------------------------------------------------------------ the pages


@dataclass
class _RunContext:
    """What the run report's sections read: the run folder, its metadata and metrics, the page's settings, and the
    validation bootstrap CIs (computed once, on first use)."""

    run: RunDir
    meta: dict
    metrics: dict
    n_samples: int = 8
    n_gradcam: int = 4
    n_boot: int = 1000
    n_maps: int = 6
    _ci: dict | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def data(self) -> dict:
        return self.meta.get("data") or {}

    def ci(self) -> dict:
        """Bootstrap CIs of the validation metrics: ``metrics.json``'s, else from ``predictions.csv`` (over
        duplicate groups when the audit can group the files)."""
        if self._ci is None:
            self._ci = {}
            if self.metrics.get("ci"):
                self._ci = self.metrics["ci"]
            elif self.run.predictions.is_file():
                paths, labels, _, proba, _ = read_predictions(self.run.predictions)
                y = [self.classes.index(lab) for lab in labels]
                self._ci = bootstrap_ci(y, proba, self.classes, self.meta.get("positive_class"),
                                        self.meta.get("threshold"), groups=_val_groups(paths), n_boot=self.n_boot,
                                        seed=int(self.meta.get("seed", 0)))
        return self._ci


def write_report(run_dir: str | Path, n_samples: int = 8, n_gradcam: int = 4, n_boot: int = 1000,
                 n_maps: int = 6) -> Path:
    """Write ``RUN/report.html`` for a training run folder and return its path.

    Bootstrap CIs of the validation metrics are computed from ``predictions.csv`` (over duplicate groups when the
    audit is available). The audit is read from ``RUN/audit.json`` or run on small data sets and saved there, and
    shown as findings in sentences (:func:`audit_html`). A run trained with tumour masks gets a "Tumour map"
    section: the mask summary, the validation Dice per epoch and ``n_maps`` validation images with the predicted
    and the true outline (when the mask folder is still there). Every run gets an "Input check" section
    (:mod:`braintumor.ood`): the check's settings, its score quantiles on the training and validation splits, the
    coverage / accuracy trade-off of the abstention limit on the validation split (also saved as ``coverage.png``)
    and the input-check figures of the run's evaluations; for a run without a check, how to fit one.

    Example:
        >>> from braintumor.report import write_report
        >>> write_report("runs/demo", n_gradcam=2)        # doctest: +SKIP
        PosixPath('runs/demo/report.html')
    """
    run = RunDir(run_dir)
    meta = run.read_metadata()
    metrics = json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}
    ctx = _RunContext(run, meta, metrics, n_samples=n_samples, n_gradcam=n_gradcam, n_boot=n_boot, n_maps=n_maps)
    sections: list[Section] = [
        ("summary", "Summary", _section_summary), ("data", "Data", _section_data),
        ("audit", "Data audit", _section_audit), ("metrics", "Metrics with 95% CIs", _section_metrics),
        ("curves", "Training curves", _section_curves), ("confusion", "Confusion matrix", _section_confusion),
        ("roc", "ROC curve", _section_roc), ("calibration", "Calibration", _section_calibration),
        ("per-class", "Per-class metrics", _section_per_class), ("samples", "Sample predictions", _section_samples),
        ("gradcam", "Grad-CAM", _section_gradcam)]
    if isinstance(meta.get("tumour_map"), dict):
        sections.append((MAP_SECTION, "Tumour map", _section_tumour_map))
    sections += [(CHECK_SECTION, "Input check", _section_input_check), ("caveats", "Caveats", _section_caveats)]
    page = _page(f"braintumor run report: {run.root.name}", f"{meta['model']} on {ctx.data.get('data_dir')}",
                 sections, ctx)
    _write_page(run.report, page)
    return run.report


@dataclass
class _CVContext:
    """What the cross-validation report's sections read: the folder and its ``cv.json``."""

    root: Path
    doc: dict

    @property
    def summary(self) -> dict:
        return self.doc["summary"]

    @property
    def metrics(self) -> list[str]:
        """The metrics with a mean over folds, in the page's order."""
        return [k for k in ("accuracy", "balanced_accuracy", "f1", "macro_f1", "roc_auc", "pr_auc", "sensitivity",
                            "specificity", "mcc") if (self.summary.get(k) or {}).get("mean") is not None]

    def mean_ci(self, key: str) -> str:
        """'0.900 [0.840, 0.960]': the mean over folds of ``key`` and its 95% CI."""
        v = self.summary[key]
        return format_ci(v["mean"], v.get("low"), v.get("high"))


def write_cv_report(cv_dir: str | Path) -> Path:
    """Write ``CV/report.html`` for a cross-validation folder (``cv.json`` and its figures) and return its path.

    A leave-one-source-out folder (``cv.json`` ``kind`` ``"by-source"``) gets :func:`write_source_report`.

    Example:
        >>> from braintumor.report import write_cv_report
        >>> write_cv_report("runs/cv-demo")               # doctest: +SKIP
        PosixPath('runs/cv-demo/report.html')
    """
    root = Path(cv_dir)
    doc = json.loads((root / "cv.json").read_text())
    if doc.get("kind") == "by-source":
        return write_source_report(root, doc)
    sections: list[Section] = [
        ("summary", "Summary", _cv_section_summary), ("data", "Data", _cv_section_data),
        ("audit", "Data audit", _cv_section_audit), ("metrics", "Metrics: mean and 95% CI over folds",
                                                     _cv_section_metrics),
        ("folds", "Per fold", _cv_section_folds), ("pooled", "Pooled out-of-fold metrics", _cv_section_pooled),
        ("confusion", "Pooled confusion matrix", _cv_section_confusion), ("roc", "Pooled ROC", _cv_section_roc),
        ("calibration", "Calibration (pooled out-of-fold)", _cv_section_calibration),
        ("labels", "Labels to check", _cv_section_labels),
        ("leakage", "Naive-split inflation", _cv_section_leakage), ("caveats", "Caveats", _cv_section_caveats)]
    page = _page(f"braintumor cross-validation: {root.name}",
                 f"{doc['config'].get('model')} on {doc['config'].get('data_dir')}", sections, _CVContext(root, doc))
    out = root / "report.html"
    _write_page(out, page)
    return out


@dataclass
class _SourceContext:
    """What the leave-one-source-out report's sections read: the folder, its ``cv.json`` and the number of
    Grad-CAM maps per held-out source."""

    root: Path
    doc: dict
    n_maps: int = 8

    @property
    def rows(self) -> list[dict]:
        return self.doc["rows"]

    @staticmethod
    def cell(row: dict, key: str) -> str:
        """One metric of a row of the table, with its CI when there is one."""
        return _ci_text(row.get("ci") or {}, key, row["metrics"].get(key))


def write_source_report(root: Path, doc: dict | None = None, n_maps: int = 8) -> Path:
    """``report.html`` of a leave-one-source-out folder (:mod:`braintumor.crossval_sources`) and return its path.

    Example:
        >>> from braintumor.report import write_source_report
        >>> write_source_report("runs/by-source")          # doctest: +SKIP
        PosixPath('runs/by-source/report.html')
    """
    root = Path(root)
    doc = doc or json.loads((root / "cv.json").read_text())
    sections: list[Section] = [
        ("summary", "Summary: on sources never seen", _source_section_summary),
        ("table", "Within and across sources", _source_section_table), ("data", "Sources", _source_section_data),
        ("errors", "Cross-source errors", _source_section_errors), ("caveats", "Caveats", _source_section_caveats)]
    page = _page(f"braintumor leave-one-source-out: {root.name}",
                 f"{doc['config'].get('model')} on {', '.join(doc.get('sources', []))}", sections,
                 _SourceContext(root, doc, n_maps))
    out = root / "report.html"
    _write_page(out, page)
    return out


# ----------------------------------------------------------------------------------------- run report sections


def _section_summary(ctx: _RunContext) -> str:
    from .preprocess import INTENSITY_PERCENTILES

    meta, c = ctx.meta, ctx.ci()
    unit = f"over {c.get('n_units')} {c.get('unit')}s" if c else ""
    pre = meta["preprocessing"]
    rows = [["model", f"{meta['model']} ({'ImageNet-pretrained' if meta.get('pretrained') else 'random init'})"],
            ["classes", ", ".join(ctx.classes) + (f" (positive: {meta['positive_class']})"
                                                  if meta.get("positive_class") else "")],
            ["input", f"{meta['img_size']} px, brain crop " + ("on" if pre.get("crop_brain") else "off")
             + (", intensities stretched to the head's {}-{}th percentiles".format(*INTENSITY_PERCENTILES)
                if pre.get("intensity") == "percentile" else "")],
            ["validation accuracy", _ci_text(c, "accuracy", ctx.metrics.get("accuracy"))],
            ["validation ROC-AUC", _ci_text(c, "roc_auc", ctx.metrics.get("roc_auc"))],
            ["validation images", ctx.data.get("n_val")], ["weights kept", _weights_text(meta)],
            ["wall time", f"{meta.get('wall_seconds', 0):.0f} s on {meta.get('device')}/{meta.get('precision')}"]]
    return (_table(["", ""], rows) + f'<p class="muted">Intervals: 95% percentile bootstrap {unit} of the '
            "validation split. The validation split also chose the best epoch and the calibration, so these "
            "numbers are optimistic; use <code>braintumor cv</code> or a separate test folder for an estimate "
            "you can quote.</p>")


def _section_data(ctx: _RunContext) -> str:
    d = ctx.data
    rows = [["data folder" + ("s" if isinstance(d.get("data_dir"), list) else ""), _folders(d.get("data_dir"))],
            ["training images", d.get("n_train")],
            ["validation images", d.get("n_val")],
            ["training per class", ", ".join(f"{k}: {v}" for k, v in d.get("train_counts", {}).items())],
            ["validation per class", ", ".join(f"{k}: {v}" for k, v in d.get("val_counts", {}).items())],
            ["duplicate groups", d.get("groups") if d.get("groups") else "not used (image-level split)"],
            ["unreadable files skipped", len(d.get("skipped", []))],
            ["fingerprint", (d.get("fingerprint") or "")[:16]]]
    out = _table(["", ""], rows)
    sources = d.get("sources") or {}
    if len(sources) > 1:
        classes = ctx.classes
        out += ("<p>Several sources. Images per source and class (training / validation); the validation split "
                "is stratified by source and class, duplicate groups span sources.</p>"
                + _table(["source", "folder", *classes],
                         [[name, v.get("path") or "-", *[f"{v.get('train_counts', {}).get(c, 0)} / "
                                                          f"{v.get('val_counts', {}).get(c, 0)}" for c in classes]]
                          for name, v in sources.items()]))
    if d.get("class_map"):
        out += "<p>Classes: " + "; ".join(f"{_esc(k)} = {_esc(', '.join(v))}"
                                          for k, v in d["class_map"].items()) + "</p>"
    if d.get("skipped"):
        out += _table(["skipped file", "reason"], [[s["path"], s["reason"]] for s in d["skipped"][:20]])
    return out


def _section_audit(ctx: _RunContext) -> str:
    d = ctx.data
    n = (d.get("n_train") or 0) + (d.get("n_val") or 0)
    return audit_html(ctx.meta.get("audit") or load_or_run_audit(ctx.run.root, d.get("data_dir"), n))


def _section_metrics(ctx: _RunContext) -> str:
    return _table(["metric (validation)", "estimate [95% CI]"], _metrics_rows(ctx.metrics, ctx.ci()))


def _section_curves(ctx: _RunContext) -> str:
    return _img_file(ctx.run.curves, "training curves")


def _section_confusion(ctx: _RunContext) -> str:
    return _img_file(ctx.run.confusion, "confusion matrix")


def _section_roc(ctx: _RunContext) -> str:
    return _img_file(ctx.run.roc, "ROC")


def _section_calibration(ctx: _RunContext) -> str:
    meta = ctx.meta
    cal = meta.get("calibration") or {}
    rows = [["temperature", _fmt(cal.get("temperature"))]]
    for k in ("ece_before", "ece_after", "nll_before", "nll_after"):
        if cal.get(k) is not None:
            rows.append([k.replace("_", " "), _fmt(cal[k])])
    th = meta.get("threshold_info")
    if th:
        rows += [["decision threshold", f"{th['threshold']:.4f} on p({meta.get('positive_class')})"],
                 ["target sensitivity", _fmt(th["target_sensitivity"])],
                 ["sensitivity / specificity at threshold (validation)",
                  f"{_fmt(th['sensitivity'])} / {_fmt(th.get('specificity'))}"],
                 ["sensitivity / specificity at argmax (validation)",
                  f"{_fmt(th.get('argmax_sensitivity'))} / {_fmt(th.get('argmax_specificity'))}"]]
    else:
        rows.append(["decision rule", "argmax" if meta.get("threshold") is None
                     else f"p({meta.get('positive_class')}) >= {meta['threshold']}"])
    return _table(["", ""], rows) + _img_file(ctx.run.root / "calibration.png", "reliability diagram")


def _section_per_class(ctx: _RunContext) -> str:
    c = ctx.ci().get("per_class", {})
    rows = []
    for cls in ctx.classes:
        pc = ctx.metrics.get("per_class", {}).get(cls, {})
        cc = c.get(cls, {})
        rows.append([cls, pc.get("support", "-")] + [_ci_text(cc, k, pc.get(k)) for k in
                                                     ("sensitivity", "specificity", "precision", "f1")])
    return _table(["class", "support", "sensitivity (recall)", "specificity", "precision", "F1"], rows)


def _section_samples(ctx: _RunContext) -> str:
    from .data.read import read_image
    from .preprocess import Preprocessor

    if not ctx.run.predictions.is_file():
        return '<p class="muted">No predictions.csv.</p>'
    paths, labels, preds, proba, _ = read_predictions(ctx.run.predictions)
    pre = Preprocessor.from_dict(ctx.meta["preprocessing"])
    conf = proba.max(axis=1) if len(proba) else np.zeros(0)
    n = ctx.n_samples
    wrong = [i for i in np.argsort(-conf) if labels[i] != preds[i]][:n]
    right = [i for i in np.argsort(-conf) if labels[i] == preds[i]]
    right = [right[j] for j in np.linspace(0, len(right) - 1, min(n, len(right))).astype(int)] if right else []
    out = []
    for title, idx in (("Correct (spread over confidence)", right), ("Wrong (most confident first)", wrong)):
        figs = []
        for i in idx:
            try:
                uri = _array_uri(pre.prepare(read_image(paths[i])))
            except Exception:  # noqa: BLE001 - a moved file just loses its thumbnail
                continue
            cls_ok = "ok" if labels[i] == preds[i] else "bad"
            name = Path(paths[i]).name
            figs.append(_figure(uri, name, f'{_esc(name)}<br>true {_esc(labels[i])}, <span class="{cls_ok}">'
                                           f"predicted {_esc(preds[i])}</span> ({conf[i]:.2f})"))
        out.append(f"<h3>{_esc(title)}: {len(idx)}</h3>" + (f'<div class="grid">{"".join(figs)}</div>'
                                                               if figs else '<p class="muted">none</p>'))
    return "".join(out) + '<p class="muted">Thumbnails show the prepared model input (crop, greyscale, resize).</p>'


def _section_gradcam(ctx: _RunContext) -> str:
    try:
        from .explanation import explain_batch
    except ImportError:
        return '<p class="muted">Grad-CAM is not available in this installation (braintumor.explanation).</p>'
    from .inference import Predictor

    if not ctx.run.predictions.is_file():
        return '<p class="muted">No predictions.csv.</p>'
    paths, labels, preds, _, _ = read_predictions(ctx.run.predictions)
    n = ctx.n_gradcam
    wrong = [i for i in range(len(paths)) if labels[i] != preds[i]][: n // 2]
    right = [i for i in range(len(paths)) if labels[i] == preds[i]][: n - len(wrong)]
    idx = right + wrong
    if not idx:
        return '<p class="muted">No validation images.</p>'
    pred = Predictor.from_run(ctx.run.root, device="cpu", allow_incomplete=True)  # written while train finalises
    exs = explain_batch(pred, [paths[i] for i in idx])
    figs = []
    for i, ex in zip(idx, exs, strict=True):
        cls_ok = "ok" if labels[i] == preds[i] else "bad"
        figs.append(f'<figure><img alt="Grad-CAM {_esc(Path(paths[i]).name)}" src="{_array_uri(ex.overlay())}">'
                    f"<figcaption>{_esc(Path(paths[i]).name)}<br>true {_esc(labels[i])}, "
                    f'<span class="{cls_ok}">predicted {_esc(ex.label)}</span> ({ex.probability:.2f})'
                    "</figcaption></figure>")
    return (f'<div class="grid">{"".join(figs)}</div><p class="muted">Grad-CAM at layer '
            f"{_esc(ctx.meta.get('gradcam_target_layer'))}: where the predicted class's evidence lies. A map on the "
            "skull, the background or text marks is a warning sign (shortcut learning), not an explanation of "
            "the tumour.</p>")


def _section_tumour_map(ctx: _RunContext) -> str:
    tm = ctx.meta.get("tumour_map") or {}
    rows = [[side, *[(tm.get(key) or {}).get(k, "-") for k in ("masked", "negative", "without", "problems")]]
            for side, key in (("training", "train"), ("validation", "val"))]
    out = (f"<p>A tumour-map decoder on {_esc(', '.join(map(str, tm.get('layers') or [])) or '?')} "
           f"(width {_esc(tm.get('width', '?'))}) was trained with the masks in <code>{_esc(tm.get('masks'))}"
           f"</code> (mask loss weight {_esc(tm.get('mask_weight', '?'))}). <code>braintumor predict --outline"
           "</code> and the API's <code>outline=true</code> turn its map into a tumour outline.</p>"
           + _table(["images", "with a lesion mask", "no-tumour (empty target)", "without a mask",
                     "masks left out"], rows))
    problems = tm.get("problems") or []
    if problems:
        out += _table(["mask left out", "reason"], [[q.get("path"), q.get("reason")] for q in problems[:10]])
        if len(problems) > 10:
            out += f'<p class="muted">... and {len(problems) - 10} more (metadata.json).</p>'
    uri = _dice_curve_uri(ctx.run.history)
    if uri:
        out += (f'<h3>Validation Dice per epoch</h3><img class="fig" alt="validation Dice" src="{uri}">'
                '<p class="muted">Dice of the map thresholded at 0.5 against the masks of validation tumour '
                "images; the dashed line is the highest tumour probability on no-tumour images (lower is "
                "better).</p>")
    return out + _map_examples(ctx.run, tm, ctx.n_maps)


def _section_input_check(ctx: _RunContext) -> str:
    return _input_check_html(ctx.run, ctx.meta)


def _section_caveats(ctx: _RunContext) -> str:
    d = ctx.data
    items = [f"The validation split is small ({d.get('n_val')} images): see the width of the intervals above. "
             "It also chose the best epoch, the temperature and any threshold, which makes it optimistic.",
             "Public brain-MRI sets contain exact and near duplicates (the same scan resized, re-encoded or "
             "flipped). " + ("This run kept duplicate groups on one side of the split."
                             if d.get("groups") else "This run did NOT group duplicates: copies of one scan may "
                             "sit on both sides of the split and inflate the numbers."),
             "Source confounding: tumour and non-tumour images often come from different scanners, hospitals or "
             "web sources (different sizes, borders, text marks, colour). A model can separate sources instead "
             "of pathology; check Grad-CAM maps and test on data from another source.",
             "Images are single 2-D slices of unknown plane and sequence, without patient identifiers: "
             "patient-level leakage cannot be ruled out.",
             "Research and education use only. Not a medical device; not for diagnosis or treatment decisions."]
    return _list(items)


# ------------------------------------------------------------------------------------------ cv report sections


def _cv_section_summary(ctx: _CVContext) -> str:
    doc, summary = ctx.doc, ctx.summary
    cfg = doc.get("config", {})
    sec = summary.get("seconds_per_fold", {})
    rows = [["split", f"{doc['repeats']} x {doc['n_folds']}-fold, "
             + ("group-aware (duplicate groups kept within one fold)" if doc["grouped"]
                else "image-level (no duplicate groups)")],
            ["model", f"{cfg.get('model')} at {cfg.get('img_size')} px, {cfg.get('epochs_frozen')} frozen + "
             f"{cfg.get('epochs')} epochs"],
            ["mean accuracy [95% CI]", ctx.mean_ci("accuracy") if "accuracy" in summary else "-"],
            ["mean ROC-AUC [95% CI]", ctx.mean_ci("roc_auc") if "roc_auc" in ctx.metrics else "-"],
            ["wall time per fold", f"{sec.get('mean') or 0:.0f} s (mean)"]]
    return _table(["", ""], rows) + ('<p class="muted">Means over folds with t-based 95% intervals; each fold\'s '
                                     "model never saw its test fold, and the test fold chose nothing (epoch, "
                                     "temperature and threshold came from an inner validation split).</p>")


def _cv_section_data(ctx: _CVContext) -> str:
    doc = ctx.doc
    rows = [["data folder", doc["config"].get("data_dir")], ["images", doc["n_images"]],
            ["duplicate groups", doc.get("n_groups") or "-"], ["classes", ", ".join(doc["classes"])],
            ["out-of-fold predictions", doc["n_oof"]]]
    return _table(["", ""], rows)


def _cv_section_audit(ctx: _CVContext) -> str:
    return audit_html(load_or_run_audit(ctx.root, ctx.doc["config"].get("data_dir"), ctx.doc["n_images"]))


def _cv_section_metrics(ctx: _CVContext) -> str:
    rows = [[k, ctx.mean_ci(k), _fmt(ctx.summary[k].get("std"))] for k in ctx.metrics]
    return _table(["metric", "mean over folds [95% CI]", "fold std"], rows)


def _cv_section_folds(ctx: _CVContext) -> str:
    keys = [k for k in ("accuracy", "roc_auc", "sensitivity", "specificity", "mcc") if k in ctx.metrics]
    rows = [[f"{f['repeat']}/{f['fold']}", f["n_train"], f["n_val"], f["n_test"], f"{f['seconds']:.0f}",
             _fmt(f.get("temperature"), 2)] + [_fmt(f.get(k)) for k in keys] for f in ctx.doc["folds"]]
    return _table(["repeat/fold", "train", "inner val", "test", "seconds", "T", *keys], rows)


def _cv_section_pooled(ctx: _CVContext) -> str:
    pooled, pci = ctx.doc["pooled"], ctx.doc.get("pooled_ci", {})
    rows = [[k, _ci_text(pci, k, pooled.get(k))] for k in ctx.metrics if pooled.get(k) is not None]
    unit = f"{pci.get('unit', 'image')}s" if pci else ""
    return (_table(["metric (pooled out-of-fold)", "estimate [95% bootstrap CI]"], rows)
            + f'<p class="muted">Pooled over every out-of-fold prediction; bootstrap resamples {unit}. '
              "Predictions: <code>oof_predictions.csv</code>.</p>")


def _cv_section_confusion(ctx: _CVContext) -> str:
    return _img_file(ctx.root / "confusion_matrix.png", "confusion")


def _cv_section_roc(ctx: _CVContext) -> str:
    return _img_file(ctx.root / "roc.png", "ROC")


def _cv_section_calibration(ctx: _CVContext) -> str:
    return _img_file(ctx.root / "calibration.png", "reliability diagram")


def _cv_section_labels(ctx: _CVContext) -> str:
    from .data.read import read_image

    check = ctx.doc.get("labels_to_check") or []
    if not check:
        return '<p class="muted">No image whose out-of-fold model confidently contradicts its label.</p>'
    figs = []
    for d in check[:40]:
        try:
            uri = _array_uri(read_image(d["path"]))
        except Exception:  # noqa: BLE001 - a moved file just loses its thumbnail
            uri = ""
        name = Path(d["path"]).name
        figs.append(_figure(uri, name, f'{_esc(Path(d["path"]).parent.name)}/{_esc(name)}<br>label '
                            f'{_esc(d["label"])}, p = {d["p_label"]:.2f}<br><span class="bad">predicted '
                            f'{_esc(d["predicted"])}</span>'))
    more = f" (the first 40 of {len(check)}; all in <code>cv.json</code>)" if len(check) > 40 else ""
    return (f'<p>{len(check)} image(s) whose out-of-fold model, which never trained on them, gives their own '
            f"label a probability below {LABEL_CHECK_BELOW}{more}. Most are hard cases; mislabelled images show "
            'up here too. Look at them before trusting the labels.</p><div class="grid">' + "".join(figs)
            + "</div>"
            '<p class="muted">Thumbnails show the original images.</p>')


def _cv_section_leakage(ctx: _CVContext) -> str:
    leak = ctx.doc.get("leakage")
    if not leak:
        return ('<p class="muted">Not measured: run with <code>--show-leakage</code> to repeat the '
                "cross-validation with a naive image-level split and see how much duplicates inflate it.</p>")
    rows = [[k, _fmt(v["group_aware"]), _fmt(v["naive"]), f"{v['inflation']:+.3f}", _fmt(v.get("group_aware_std")),
             _fmt(v.get("naive_std"))] for k, v in leak.items()]
    return (_table(["metric", "group-aware mean", "naive mean", "inflation", "group-aware std", "naive std"], rows)
            + '<p class="muted">Inflation = naive - group-aware. Fold noise is several points: small differences '
              "mean little, but a naive split also understates the spread.</p>")


def _cv_section_caveats(ctx: _CVContext) -> str:
    n_test = int(np.mean([f["n_test"] for f in ctx.doc["folds"]]))
    return _list([f"About {n_test} test images per fold: fold-to-fold noise is large, and folds share training "
                  "data, so the t-interval is somewhat optimistic.",
                  "Duplicate groups come from the image audit (exact and near copies); patient identity is unknown, "
                  "so leakage between slices of one patient cannot be ruled out.",
                  "Source confounding (different scanners / web sources per class) can inflate every number here; "
                  "only an external test set shows transfer.",
                  "Research and education use only. Not a medical device."])


# -------------------------------------------------------------------------------- leave-one-source-out sections


def _source_section_summary(ctx: _SourceContext) -> str:
    cross = [r for r in ctx.rows if r["kind"] == "cross"]
    text = "".join(f"<p class=\"warn\">{_esc(f)}</p>" if "overstates" in f else f"<p>{_esc(f)}</p>"
                   for f in ctx.doc.get("findings") or [])
    table = _table(["trained on", "tested on (never seen)", "images", *SOURCE_METRICS],
                   [[" + ".join(r["trained_on"]), r["tested_on"], r["n"], *[ctx.cell(r, k) for k in SOURCE_METRICS]]
                    for r in cross])
    return ("<p>Each model was trained on every source but one and tested on the source it never saw: the figure "
            "that tells whether a model finds the tumour or the data set an image came from.</p>" + table + text)


def _source_section_table(ctx: _SourceContext) -> str:
    body = _table(["trained on", "tested on", "kind", "images", "copies left out", *SOURCE_METRICS],
                  [[" + ".join(r["trained_on"]), r["tested_on"], r["kind"], r["n"],
                    r.get("copies_excluded", "-") if r["kind"] == "cross" else "-",
                    *[ctx.cell(r, k) for k in SOURCE_METRICS]] for r in ctx.rows])
    return ("<p>Cross-source rows test a model on the source left out of its training; within-source rows test "
            "the same model on its group-aware inner validation images of each training source (the usual "
            "single-data-set figure). 95% bootstrap intervals over images.</p>" + body
            + '<p class="muted">Also in <code>by_source.csv</code> and <code>cv.json</code>.</p>')


def _source_section_data(ctx: _SourceContext) -> str:
    doc = ctx.doc
    cfg = doc.get("config", {})
    srows = [[name, doc.get("source_roots", {}).get(name, "-"), n]
             for name, n in (doc.get("source_counts") or {}).items()]
    cmap = cfg.get("classes")
    text = "" if not cmap else "<p>Classes: " + "; ".join(
        f"{_esc(k)} = {_esc(', '.join(v))}" for k, v in cmap.items()) + "</p>"
    skipped = "".join(f"<p class=\"muted\">{_esc(s['held_out'])} not left out: {_esc(s['reason'])}</p>"
                      for s in doc.get("skipped") or [])
    return (_table(["source", "folder", "images"], srows) + text
            + f"<p>Model {_esc(cfg.get('model'))} at {_esc(cfg.get('img_size'))} px; balanced sources "
              f"{_esc(cfg.get('balance_sources'))}; MRI augmentation {_esc(cfg.get('mri_augment'))}; "
              f"intensity {_esc(cfg.get('intensity'))}.</p>" + skipped)


def _source_section_errors(ctx: _SourceContext) -> str:
    from .data.read import read_image
    from .inference import Predictor

    errs = ctx.doc.get("errors") or []
    if not errs:
        return '<p class="muted">No cross-source errors.</p>'
    figs = []
    by_run: dict[str, list[dict]] = {}
    for e in errs:
        by_run.setdefault(e["run"], []).append(e)
    for run_rel, items in by_run.items():
        shown = items[:ctx.n_maps]
        overlays = [None] * len(shown)
        try:
            from .explanation import explain_batch

            pred = Predictor.from_run(ctx.root / run_rel, device="cpu")
            exs = explain_batch(pred, [e["path"] for e in shown])
            overlays = [ex.overlay() for ex in exs]
        except Exception:  # noqa: BLE001 - without maps the thumbnails still help
            pass
        for e, ov in zip(shown, overlays, strict=True):
            try:
                uri = _array_uri(ov if ov is not None else read_image(e["path"]))
            except Exception:  # noqa: BLE001
                uri = ""
            name = Path(e["path"]).name
            figs.append(_figure(uri, name, f"{_esc(e['source'])}: {_esc(Path(e['path']).parent.name)}/"
                                f"{_esc(name)}<br>label {_esc(e['label'])}, p = {e['p_label']:.2f}<br>"
                                f"<span class=\"bad\">predicted {_esc(e['predicted'])}</span>"))
    return ("<p>The held-out sources' most confident mistakes, with the Grad-CAM of the model that never saw "
            "them (original image where no map could be made). A map on the skull, the background or the "
            "whole head rather than a lesion is a sign the model uses the source's look.</p>"
            f'<div class="grid">{"".join(figs)}</div>')


def _source_section_caveats(ctx: _SourceContext) -> str:
    return _list(["A source left out is one collection: its own mix of scanners and sequences. Cross-source figures "
                  "vary from one collection to the next; report every one.",
                  "Copies of training images (exact and near duplicates found by the audit) are left out of each "
                  "test source; patient identity across sources is unknown.",
                  "Within-source rows come from each model's inner validation split (chosen nothing but the epoch, "
                  "temperature and threshold), so they are slightly optimistic.",
                  "Research and education use only. Not a medical device."])


# --------------------------------------------------------------------------------------------------- the audit


def load_or_run_audit(root: Path, data_dir: str | None, n_images: int | None) -> dict | None:
    """The audit of the run's data: ``root/audit.json`` if present, else run it (small data sets only) and save.

    Raises:
        ValueError: ``root/audit.json`` is not JSON (the message names the file).
    """
    path = root / "audit.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not data_dir or isinstance(data_dir, list) or not Path(data_dir).is_dir() or (n_images or 0) > AUDIT_MAX_IMAGES:
        return None
    try:
        from .data.audit import audit
    except ImportError:
        return None
    doc = audit(data_dir).to_dict()
    RunDir(root).write_json(path, doc)
    return doc


def audit_findings(doc: dict) -> list[tuple[str, str]]:
    """The headline findings of an audit (:meth:`braintumor.data.audit.AuditReport.to_dict`) as ``(level,
    sentence)`` pairs, most serious first: duplicates (and label conflicts), copies in the ``against`` folder, the
    source check, class balance, unreadable and tiny files, misnamed formats. ``level`` is ``"warn"`` (act on it),
    ``"ok"`` (checked, nothing found) or ``"note"``. Keys the function does not know are left out.

    Example:
        >>> from braintumor.report import audit_findings
        >>> doc = {"n_images": 5, "n_readable": 5, "n_distinct": 4, "classes": ["no", "yes"],
        ...        "class_counts": {"no": 2, "yes": 3}, "byte_groups": [["yes/a.png", "yes/b.png"]],
        ...        "confounders": {"model": "random forest", "auc": 0.93, "warning": True,
        ...                        "top_features": [["is_png", 0.4], ["width", 0.2]]}}
        >>> findings = audit_findings(doc)
        >>> [level for level, _ in findings]
        ['note', 'warn', 'note', 'ok']
        >>> print(findings[1][1])                                  # doctest: +NORMALIZE_WHITESPACE
        Classes differ by source: a model could tell yes from no from image statistics alone
        (AUC 0.93, mostly from PNG format and width).
    """
    out: list[tuple[str, str]] = []
    groups = _duplicate_groups(doc)
    n_readable = _int(doc.get("n_readable"), _int(doc.get("n_images")))
    if groups:
        conflicts = sum(g["conflict"] for g in groups)
        n_files = sum(len(g["files"]) for g in groups)
        across = "none across classes" if not conflicts else (
            f"{conflicts} of them across classes (the same scan under two labels: fix or drop them)")
        distinct = doc.get("n_distinct")
        tail = f": {distinct} distinct scans among {n_readable} readable files" if isinstance(distinct, int) else ""
        out.append(("warn" if conflicts else "note",
                    f"{_plural(len(groups), 'group')} of duplicates ({_plural(n_files, 'image')}), {across}{tail}."))
    elif n_readable:
        out.append(("ok", f"No duplicates: all {n_readable} readable images are distinct scans."))
    leak = doc.get("leak_counts") or {}
    if doc.get("against") and isinstance(leak.get("files"), int):
        if leak["files"]:
            out.append(("warn", f"{leak['files']} of {doc.get('n_images')} images have a copy in {doc['against']} "
                                f"({leak.get('exact', 0)} exact): do not train on one folder and test on the other."))
        else:
            out.append(("ok", f"No image has a copy in {doc['against']}."))
    conf = _confounder_sentence(doc)
    if conf:
        out.append(conf)
    src = _source_sentence(doc)
    if src:
        out.append(src)
    balance = _balance_sentence(doc)
    if balance:
        out.append(balance)
    unreadable = [u for u in doc.get("unreadable") or [] if isinstance(u, dict)]
    if unreadable:
        names = ", ".join(str(u.get("file")) for u in unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
        out.append(("warn", f"{_plural(len(unreadable), 'unreadable file')} ({names}): training skips "
                            f"{'it' if len(unreadable) == 1 else 'them'}."))
    elif doc.get("n_images"):
        out.append(("ok", f"All {doc['n_images']} files are readable."))
    tiny = doc.get("tiny") or []
    if tiny:
        out.append(("note", f"{_plural(len(tiny), 'tiny image')} (shorter side under 64 px): little detail to learn "
                            "from."))
    mism = {c: s.get("name_mismatch") for c, s in (doc.get("class_stats") or {}).items()
            if isinstance(s, dict) and isinstance(s.get("name_mismatch"), int) and s["name_mismatch"]}
    if mism:
        where = ", ".join(f"{n} in {c}" for c, n in mism.items())
        out.append(("note", f"{_plural(sum(mism.values()), 'file')} in another format than the name says (e.g. a "
                            f"PNG named .jpg): {where}. A format that differs by class is a source cue."))
    return out


def audit_html(doc: dict | None, max_groups: int = AUDIT_GROUPS_SHOWN) -> str:
    """The "Data audit" section: the findings first (:func:`audit_findings`, one screen), then the details:
    duplicate groups with thumbnails (the first ``max_groups``: label conflicts, then the largest), copies in the
    ``against`` folder, the source check, class balance, per-class image statistics and unreadable files. Every
    part opens with a sentence saying what it shows; no raw dictionaries (unknown keys are left out). Thumbnails
    are read from the audit's ``data_dir`` when its files are still there.

    Example:
        >>> from braintumor.data.audit import audit
        >>> from braintumor.report import audit_html
        >>> page_part = audit_html(audit("data/brain_mri_yes_no").to_dict())     # doctest: +SKIP
    """
    if not isinstance(doc, dict):
        return ('<p class="muted">No audit available (run <code>braintumor audit DATA_DIR</code>; the duplicate audit '
                "needs the <code>audit</code> extra).</p>")
    items = "".join(f'<li class="{level}">{_esc(text)}</li>' for level, text in audit_findings(doc))
    out = ("<p>What the audit of the data folder found: copies of one scan, files that cannot be read, how the "
           "classes are balanced, and whether simple image statistics give the class away.</p>"
           f'<ul class="findings">{items}</ul>')
    out += _audit_duplicates(doc, max_groups)
    for part in (_audit_leaks, _audit_confounders, _audit_source_check, _audit_balance, _audit_class_stats,
                 _audit_unreadable):
        out += part(doc)
    return out + ('<p class="muted">Everything, with every file name: <code>audit.json</code>; '
                  "<code>braintumor audit DATA_DIR</code> prints it.</p>")


def _audit_duplicates(doc: dict, max_groups: int) -> str:
    groups = _duplicate_groups(doc)
    if not groups:
        return ""
    root = Path(str(doc["data_dir"])) if doc.get("data_dir") else None
    blocks = []
    for k, g in enumerate(groups[:max_groups], 1):
        what = (f"near copies (lowest match score {g['min_score']:.2f})" if g["near"] and g["min_score"] is not None
                else "near copies" if g["near"] else "identical images")
        labels = sorted(set(g["classes"]))
        head = (f"Group {k}: {len(g['files'])} files, {what}, "
                + (f'<span class="bad">labelled {_esc(" and ".join(labels))}</span>' if g["conflict"]
                   else f"all {_esc(labels[0] if labels else '?')}"))
        figs = []
        for f, c in list(zip(g["files"], g["classes"], strict=True))[:AUDIT_THUMBS_PER_GROUP]:
            figs.append(_figure(_thumb_uri(root, f), f, f"{_esc(f)}" + (f'<br><span class="bad">{_esc(c)}</span>'
                                                                        if g["conflict"] else "")))
        more = len(g["files"]) - AUDIT_THUMBS_PER_GROUP
        if more > 0:
            figs.append(f'<figure><figcaption class="muted">and {more} more</figcaption></figure>')
        blocks.append(f'<p>{head}</p><div class="grid small">{"".join(figs)}</div>')
    rest = len(groups) - max_groups
    return ("<h3>Duplicates</h3><p>Groups of files that show one scan: identical files, identical pixels, or near "
            "copies (resized, re-encoded, slightly cropped or brightened). Copies on both sides of a split inflate "
            "every metric, so training keeps each group on one side.</p>" + "".join(blocks)
            + (f'<p class="muted">{_plural(rest, "more group")} in <code>audit.json</code>.</p>' if rest > 0 else ""))


def _audit_leaks(doc: dict) -> str:
    leaks = [e for e in doc.get("leaks") or [] if isinstance(e, dict)]
    if not doc.get("against") or not leaks:
        return ""
    kinds = {"bytes": "identical file", "pixels": "identical pixels", "near": "near copy"}
    rows = []
    for e in leaks[:AUDIT_ROWS_SHOWN]:
        m = (e.get("matches") or [{}])[0]
        how = kinds.get(m.get("kind"), "copy") + (f" ({m['score']:.2f})" if m.get("kind") == "near"
                                                  and isinstance(m.get("score"), float) else "")
        rows.append([e.get("file"), e.get("class"), m.get("file"), m.get("class"), how])
    more = len(leaks) - AUDIT_ROWS_SHOWN
    return (f"<h3>Copies in {_esc(doc['against'])}</h3><p>Images of this folder that also appear in "
            f"{_esc(doc['against'])}: a model trained on one folder and tested on the other has seen them.</p>"
            + _table(["file", "class", "copy", "its class", "how alike"], rows)
            + (f'<p class="muted">{more} more in <code>audit.json</code>.</p>' if more > 0 else ""))


def _audit_confounders(doc: dict) -> str:
    conf = doc.get("confounders")
    if not isinstance(conf, dict) or not conf:
        return ""
    intro = ("<h3>Source check</h3><p>Whether simple image statistics that say nothing about anatomy (size, file "
             "format, colour, brightness) predict the class. If they do, the classes come from different sources "
             "(scanners, hospitals, web collections) and a model can learn the source instead of the tumour.</p>")
    if conf.get("skipped"):
        return intro + f'<p class="muted">Not run: {_esc(conf["skipped"])}.</p>'
    auc, acc = _num(conf.get("auc")), _num(conf.get("accuracy"))
    if auc is None:
        return ""
    chance = _num(conf.get("chance_accuracy"))
    folds = conf.get("folds")
    text = (f"A {_esc(conf.get('model') or 'model')} trained on these statistics alone"
            + (f", in {folds}-fold cross-validation that keeps duplicates in one fold," if isinstance(folds, int)
               else "")
            + f" predicts the class with ROC-AUC {auc:.2f}"
            + (f" and accuracy {acc:.2f}" if acc is not None else "")
            + (f" (always answering the largest class: {chance:.2f})" if chance is not None else "") + ". ")
    feats = _feature_words(conf.get("top_features"))
    if feats:
        text += f"The statistics it used most: {_esc(_and(feats))}. "
    warn = bool(conf.get("warning"))
    text += ("A model trained on this folder may learn these cues: check its Grad-CAM maps and test it on images "
             "from another source." if warn else "No strong sign that the classes come from different sources.")
    return intro + (f'<p class="warn">{text}</p>' if warn else f"<p>{text}</p>")


def _audit_source_check(doc: dict) -> str:
    src = doc.get("source_confounder")
    if not isinstance(src, dict) or not src or not doc.get("against"):
        return ""
    names = [str(s) for s in src.get("sources") or [doc.get("data_dir"), doc.get("against")]][:2]
    intro = (f"<h3>{_esc(names[0])} against {_esc(names[1])}</h3><p>Whether the same image statistics tell the "
             "two folders apart, overall and within each class they share: a model trained on one folder can "
             "learn its look instead of the tumour.</p>")
    if src.get("skipped"):
        return intro + f'<p class="muted">Not run: {_esc(src["skipped"])}.</p>'
    out = intro
    if _num(src.get("auc")) is not None:
        text = f"ROC-AUC {src['auc']:.2f} for all images ({_esc(src.get('model') or 'best model')})."
        out += f'<p class="warn">{text}</p>' if src.get("warning") else f"<p>{text}</p>"
    rows = []
    for key, v in (src.get("per_class") or {}).items():
        if isinstance(v, dict):
            rows.append([key, _fmt(_num(v.get("auc")), 2) if v.get("auc") is not None else
                         f"not measured: {v.get('skipped', '?')}"])
    if rows:
        out += _table(["within class", "ROC-AUC"], rows)
    feats = [f for f in src.get("top_features") or [] if isinstance(f, dict)]
    if feats:
        out += _table(["statistic", "ROC-AUC alone", "higher in", f"median in {names[0]}", f"median in {names[1]}"],
                      [[f.get("words") or f.get("feature"), _fmt(_num(f.get("auc")), 2), f.get("higher_in") or "-",
                        *[_fmt(_num(m), 3) for m in (list(f.get("median") or []) + [None, None])[:2]]]
                       for f in feats])
    return out


def _audit_balance(doc: dict) -> str:
    counts = {c: n for c, n in (doc.get("class_counts") or {}).items() if isinstance(n, int)}
    if not counts:
        return ""
    distinct = doc.get("distinct_per_class") or {}
    total = sum(counts.values()) or 1
    rows = [[c, n, distinct.get(c, "-"), f"{100 * n / total:.0f}%"] for c, n in counts.items()]
    return ("<h3>Class balance</h3><p>How many files, and how many distinct scans once copies are merged, each "
            "class has.</p>" + _table(["class", "files", "distinct scans", "share of files"], rows))


#: The per-class statistics shown, in order: (label, function of one class's statistics -> text or None).
_CLASS_STAT_ROWS: tuple[tuple[str, Callable[[dict], str | None]], ...] = (
    ("files", lambda s: None if s.get("n") is None else f"{s['n']}" + (
        f" ({s['readable']} readable)" if s.get("readable") not in (None, s["n"]) else "")),
    ("median size (width x height, px)", lambda s: _pair(s, "width", "height", "median", "{:.0f} x {:.0f}")),
    ("smallest / largest width (px)", lambda s: _pair(s, "width", "width", ("min", "max"), "{:.0f} / {:.0f}")),
    ("most common sizes", lambda s: ", ".join(f"{v[0]} ({v[1]})" for v in s.get("common_sizes") or []
                                              if isinstance(v, list | tuple) and len(v) == 2) or None),
    ("aspect ratio (median width / height)", lambda s: _sub(s, "aspect", "median", "{:.2f}")),
    ("colour images", lambda s: None if _num(s.get("colour_fraction")) is None
     else f"{100 * s['colour_fraction']:.0f}%"),
    ("file formats", lambda s: _counts(s.get("formats"))),
    ("named as another format", lambda s: None if not isinstance(s.get("name_mismatch"), int)
     else str(s["name_mismatch"])),
    ("mean grey level (median, 0-255)", lambda s: _sub(s, "mean_intensity", "median", "{:.0f}")),
    ("bright level, 95th percentile (median)", lambda s: _sub(s, "p95_intensity", "median", "{:.0f}")),
    ("share of dark pixels (median)", lambda s: _sub(s, "dark_fraction", "median", "{:.0%}")),
    ("brain box share of the image (median)", lambda s: _sub(s, "brain_fraction", "median", "{:.0%}")),
    ("file size (median KiB)", lambda s: _sub(s, "kib", "median", "{:.1f}")),
)


def _audit_class_stats(doc: dict) -> str:
    stats = {c: s for c, s in (doc.get("class_stats") or {}).items() if isinstance(s, dict)}
    if not stats:
        return ""
    rows = []
    for label, get in _CLASS_STAT_ROWS:
        cells = []
        for s in stats.values():
            try:
                cells.append(get(s))
            except (TypeError, ValueError, KeyError, IndexError):  # an odd value in someone's audit.json
                cells.append(None)
        if any(c is not None for c in cells):
            rows.append([label, *[c if c is not None else "-" for c in cells]])
    return ("<h3>Image statistics per class</h3><p>What each class's files look like (medians over the class): "
            "large differences between the classes are what the source check picks up.</p>"
            + _table(["", *stats], rows))


def _audit_unreadable(doc: dict) -> str:
    bad = [u for u in doc.get("unreadable") or [] if isinstance(u, dict)]
    tiny = [t for t in doc.get("tiny") or [] if isinstance(t, dict)]
    if not bad and not tiny:
        return ""
    rows = [[u.get("file"), u.get("reason")] for u in bad[:AUDIT_ROWS_SHOWN]]
    rows += [[t.get("file"), f"tiny: {t.get('width')} x {t.get('height')} px"] for t in tiny[:AUDIT_ROWS_SHOWN]]
    more = max(0, len(bad) - AUDIT_ROWS_SHOWN) + max(0, len(tiny) - AUDIT_ROWS_SHOWN)
    return ("<h3>Unreadable and tiny files</h3><p>Files that could not be decoded (training leaves them out) or "
            "whose shorter side is under 64 px.</p>" + _table(["file", "problem"], rows)
            + (f'<p class="muted">{more} more in <code>audit.json</code>.</p>' if more else ""))


def _duplicate_groups(doc: dict) -> list[dict]:
    """Every group of files that show one scan, merged over the audit's identical-bytes, identical-pixels and
    near-copy groups: ``{"files", "classes", "near", "min_score", "conflict"}``, label conflicts first, then the
    largest groups."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    cls_of: dict[str, str] = {}
    near_files: dict[str, float | None] = {}
    lists = [g for g in (doc.get("byte_groups") or []) + (doc.get("pixel_groups") or []) if isinstance(g, list)]
    for key in ("near_groups", "cross_class_groups"):
        for g in doc.get(key) or []:
            if not isinstance(g, dict) or not isinstance(g.get("files"), list):
                continue
            lists.append(g["files"])
            for f, c in zip(g["files"], g.get("classes") or [None] * len(g["files"]), strict=False):
                if c is not None:
                    cls_of[str(f)] = str(c)
                if key == "near_groups":
                    near_files[str(f)] = _num(g.get("min_score"))
    for files in lists:
        files = [str(f) for f in files]
        for f in files[1:]:
            parent[find(f)] = find(files[0])
    members: dict[str, list[str]] = {}
    for f in parent:
        members.setdefault(find(f), []).append(f)
    out = []
    for files in members.values():
        if len(files) < 2:
            continue
        files = sorted(files)
        classes = [cls_of.get(f) or (f.split("/")[0] if "/" in f else "?") for f in files]
        scores = [near_files[f] for f in files if near_files.get(f) is not None]
        out.append({"files": files, "classes": classes, "near": any(f in near_files for f in files),
                    "min_score": min(scores) if scores else None, "conflict": len(set(classes)) > 1})
    out.sort(key=lambda g: (not g["conflict"], -len(g["files"]), g["files"][0]))
    return out


def _confounder_sentence(doc: dict) -> tuple[str, str] | None:
    conf = doc.get("confounders")
    if not isinstance(conf, dict) or not conf:
        return None
    if conf.get("skipped"):
        return "note", f"Source check not run: {conf['skipped']}."
    auc = _num(conf.get("auc"))
    if auc is None:
        return None
    classes = [str(c) for c in doc.get("classes") or []]
    feats = _feature_words(conf.get("top_features"))[:3]
    cues = f", mostly from {_and(feats)}" if feats else ""
    if conf.get("warning"):
        who = f"tell {classes[1]} from {classes[0]}" if len(classes) == 2 else "tell the classes apart"
        return "warn", (f"Classes differ by source: a model could {who} from image statistics alone "
                        f"(AUC {auc:.2f}{cues}).")
    if auc < 0.6:
        return "ok", f"Image statistics alone do not predict the class (AUC {auc:.2f}; 0.5 is chance): no sign of " \
                     "a source difference between the classes."
    return "note", f"Image statistics alone predict the class only weakly (AUC {auc:.2f}; 0.5 is chance{cues})."


def _source_sentence(doc: dict) -> tuple[str, str] | None:
    src = doc.get("source_confounder")
    if not isinstance(src, dict) or not doc.get("against") or src.get("skipped") or _num(src.get("auc")) is None:
        return None
    names = [str(s) for s in src.get("sources") or [doc.get("data_dir"), doc.get("against")]][:2]
    feats = [str(f.get("words") or f.get("feature")) for f in src.get("top_features") or [] if isinstance(f, dict)]
    cues = f", mostly from {_and(feats[:3])}" if feats else ""
    if src.get("warning"):
        return "warn", (f"Image statistics alone tell {names[0]} from {names[1]} (AUC {src['auc']:.2f}{cues}): a "
                        "model trained on one can learn the source instead of the tumour.")
    return "ok", f"Image statistics do not tell {names[0]} from {names[1]} reliably (AUC {src['auc']:.2f})."


def _balance_sentence(doc: dict) -> tuple[str, str] | None:
    counts = {str(c): n for c, n in (doc.get("class_counts") or {}).items() if isinstance(n, int)}
    if not counts:
        return None
    order = sorted(counts, key=lambda c: -counts[c])
    text = "Class balance: " + " / ".join(f"{counts[c]} {c}" for c in order)
    distinct = doc.get("distinct_per_class") or {}
    if all(isinstance(distinct.get(c), int) for c in order) and [distinct[c] for c in order] != \
            [counts[c] for c in order]:
        text += " (" + " / ".join(str(distinct[c]) for c in order) + " distinct scans)"
    hi, lo = counts[order[0]], counts[order[-1]]
    if len(order) > 1 and lo and hi > 2 * lo:
        return "warn", text + f": imbalanced, {order[0]} has {hi / lo:.1f} times the images of {order[-1]}."
    return "note", text + "."


def _feature_words(top) -> list[str]:
    """The names in words of the confounder check's top features (``[[name, importance], ...]``)."""
    try:
        from .data.audit import FEATURE_WORDS
    except ImportError:
        FEATURE_WORDS = {}  # noqa: N806
    out = []
    for f in top or []:
        name = f[0] if isinstance(f, list | tuple) and f else f.get("feature") if isinstance(f, dict) else None
        if isinstance(name, str):
            out.append(FEATURE_WORDS.get(name, name.replace("_", " ")))
    return out


def _thumb_uri(root: Path | None, rel: str, size: int = 96) -> str:
    """A small thumbnail of ``root/rel`` as a data URI; ``""`` when the file is gone or unreadable, or when ``rel``
    (from an audit.json, which may come from someone else) points outside ``root``."""
    if root is None or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return ""
    try:
        from .data.read import read_image

        return _array_uri(read_image(root / rel), size)
    except Exception:  # noqa: BLE001 - a moved or broken file just loses its thumbnail
        return ""


def _num(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v, default: int = 0) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _sub(s: dict, key: str, stat: str, fmt: str) -> str | None:
    v = _num((s.get(key) or {}).get(stat)) if isinstance(s.get(key), dict) else None
    return None if v is None else fmt.format(v)


def _pair(s: dict, key_a: str, key_b: str, stat, fmt: str) -> str | None:
    sa, sb = (stat, stat) if isinstance(stat, str) else stat
    a = _num((s.get(key_a) or {}).get(sa)) if isinstance(s.get(key_a), dict) else None
    b = _num((s.get(key_b) or {}).get(sb)) if isinstance(s.get(key_b), dict) else None
    return None if a is None or b is None else fmt.format(a, b)


def _counts(d) -> str | None:
    if not isinstance(d, dict) or not d:
        return None
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -_int(kv[1])))


def _plural(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else word + 's'}"


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1] if words else ""


# --------------------------------------------------------------------------------------- input check section
def abstention_curve(proba: np.ndarray, labels: list[str], predicted: list[str], classes: list[str],
                     limits) -> dict:
    """Coverage (share answered) and accuracy on the answered images for each abstention limit, as predictions
    apply it: an image is answered when the calibrated probability of its *predicted* class (after any decision
    threshold) reaches the limit (:func:`braintumor.ood.coverage_curve` on class names).

    Example:
        >>> import numpy as np
        >>> c = abstention_curve(np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]]), ["no", "yes", "yes"],
        ...                      ["no", "no", "yes"], ["no", "yes"], [0.5, 0.6])
        >>> c["coverage"], c["accuracy"]
        ([1.0, 0.6667], [0.6667, 1.0])
    """
    from .ood import coverage_curve

    idx = [classes.index(c) for c in predicted]
    proba = np.asarray(proba, dtype=np.float64).reshape(len(idx), len(classes))
    truth = [classes.index(c) if c in classes else -1 for c in labels]
    return coverage_curve(proba, truth, limits, predicted=idx)


def _coverage_plot(curve: dict, min_confidence: float | None, path: Path) -> Path:
    from .plots import _save, plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(curve["limit"], curve["coverage"], "-", label="coverage (share answered)")
    acc = [(t, a) for t, a in zip(curve["limit"], curve["accuracy"], strict=True) if a is not None]
    if acc:
        ax.plot(*zip(*acc, strict=True), "-", label="accuracy on the answered images")
    if min_confidence is not None:
        ax.axvline(min_confidence, color="C3", ls="--", lw=1, label=f"min_confidence {min_confidence:g}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("abstention limit (probability of the predicted class)")
    ax.set_title("Validation split: coverage and accuracy", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def _quantile_rows(summary: dict) -> list[list]:
    keys = ("p1", "p5", "p25", "p50", "p75", "p95", "p99", "max")
    rows = []
    for name, key, n in (("training", "train_score", "n_train"), ("validation", "val_score", "n_val")):
        q = summary.get(key)
        if isinstance(q, dict) and q:
            rows.append([name, summary.get(n, "-"), *[_fmt(q.get(k)) for k in keys]])
    return rows


def _share(v) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def _input_check_html(run: RunDir, meta: dict) -> str:
    """The "Input check" section of a run report (see :func:`write_report`)."""
    entry = meta.get("input_check")
    fit = f"<code>braintumor fit-input-check {_esc(run.root)}</code>"
    if not isinstance(entry, dict):
        return ('<p class="warn">This run has no input check: it was made before the check existed, or trained '
                "without it. Every input gets a class, a photograph, a CT slice or a blank image included, and "
                f"predictions have no <code>verdict</code>. Fit one from the run's own split with {fit}.</p>")
    summary = entry.get("summary") if isinstance(entry.get("summary"), dict) else {}
    threshold, min_conf = entry.get("threshold"), entry.get("min_confidence")
    out = ("<p>Before the model's class is given, the input check asks whether the model should answer at all. "
           "Rules on the decoded image turn away what is not a brain-MRI slice (colour, odd aspect ratio, no "
           "contrast, no dark background around a head): <code>not_brain_mri</code>. Then the distance of the "
           "image's pooled backbone features to the nearest class mean (Mahalanobis, fitted on the training split) "
           "is divided by a threshold fitted on the validation split: this <code>ood_score</code> above 1 means "
           "the model never saw anything like the image (<code>unfamiliar</code>). An image that passes both but "
           "whose predicted class has a calibrated probability below <code>min_confidence</code> is "
           "<code>uncertain</code>. Only the rest get a class as their verdict.</p>")
    rules = entry.get("rules") or {}
    rows = [["method", entry.get("method", "-")],
            ["threshold (feature distance)", _fmt(threshold, 4) if threshold is not None else
             "none (rules and abstention only)"],
            ["threshold quantile of the validation distances", _fmt(entry.get("quantile"))],
            ["abstention limit (min_confidence)", _fmt(min_conf)],
            ["feature dimension", entry.get("feature_dim") or "-"],
            ["rules", ", ".join(f"{k} {_fmt(v, 2)}" for k, v in rules.items()) or "-"]]
    out += _table(["", ""], rows)
    qrows = _quantile_rows(summary)
    if qrows:
        out += ("<h3>ood_score on the run's own splits</h3>"
                + _table(["split", "images", "1%", "5%", "25%", "median", "75%", "95%", "99%", "max"], qrows)
                + '<p class="muted">Scores are distances divided by the threshold: the validation split is at or '
                  "below 1 by construction (the threshold is never below its largest distance); the training split "
                  "usually sits lower, since the class means and covariance were fitted on it.</p>")
    vrows = [["flagged unfamiliar (ood_score > 1)", _share(summary.get("val_flagged_unfamiliar"))]]
    if summary.get("val_flagged_not_brain") is not None:
        vrows.append(["flagged not_brain_mri (rules)", _share(summary["val_flagged_not_brain"])])
    out += "<h3>Validation split</h3>" + _table(["", ""], vrows)
    out += _coverage_html(run, meta, min_conf)
    out += _evaluations_html(run)
    return out


def _coverage_html(run: RunDir, meta: dict, min_conf) -> str:
    if not run.predictions.is_file():
        return '<p class="muted">No predictions.csv: the abstention trade-off cannot be shown.</p>'
    _, labels, preds, proba, pcls = read_predictions(run.predictions)
    if not labels:
        return '<p class="muted">No validation predictions.</p>'
    classes = pcls or list(meta["classes"])
    floor = min(0.5, 1.0 / max(len(classes), 1), float(min_conf) if min_conf is not None else 1.0)
    start = np.floor(floor * 20) / 20
    dense = np.round(np.arange(start, 0.995, 0.01), 3)
    curve = abstention_curve(proba, labels, preds, classes, dense)
    _coverage_plot(curve, None if min_conf is None else float(min_conf), run.root / COVERAGE_FILE)
    limits = sorted({*np.round(np.arange(max(start, 0.5), 0.96, 0.05), 2).tolist(),
                     *([round(float(min_conf), 4)] if min_conf is not None else [])})
    table = abstention_curve(proba, labels, preds, classes, limits)
    rows = []
    for t, c, a in zip(table["limit"], table["coverage"], table["accuracy"], strict=True):
        mark = min_conf is not None and abs(t - float(min_conf)) < 1e-9
        rows.append([f"{t:g}" + (" (this run's min_confidence)" if mark else ""), _share(c), _fmt(a)])
    return ("<h3>Abstention: coverage and accuracy on the validation split</h3>"
            + _img_file(run.root / COVERAGE_FILE, "coverage and accuracy by abstention limit")
            + _table(["limit", "coverage (answered)", "accuracy on the answered"], rows)
            + '<p class="muted">An image is answered when the calibrated probability of its predicted class '
              "reaches the limit; the others are <code>uncertain</code>. The validation split also chose the "
              "temperature, so this trade-off is optimistic; <code>braintumor predict --min-confidence</code> "
              "changes the limit at prediction time. Images the feature check flags are not removed here.</p>")


def _evaluations_html(run: RunDir) -> str:
    rows = []
    for path in sorted((run.root / "evaluations").glob("*/metrics.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        ic = m.get("input_check") if isinstance(m, dict) else None
        if not isinstance(ic, dict):
            continue
        rows.append([path.parent.name, ic.get("n"), _share(ic.get("not_brain_mri")), _share(ic.get("unfamiliar")),
                     _share(ic.get("uncertain")), _fmt((ic.get("all") or {}).get("accuracy")),
                     _fmt((ic.get("answered") or {}).get("accuracy")),
                     f"{(ic.get('errors') or {}).get('flagged', '-')} of {(ic.get('errors') or {}).get('total', '-')}"])
    if not rows:
        return ""
    return ("<h3>Evaluated folders</h3>"
            + _table(["folder", "images", "not_brain_mri", "unfamiliar", "uncertain", "accuracy (all)",
                      "accuracy (answered)", "errors among the flagged"], rows)
            + '<p class="muted">From <code>braintumor evaluate</code> (<code>evaluations/*/metrics.json</code>, '
              "block <code>input_check</code>).</p>")



# ------------------------------------------------------------------------------------------ run report helpers


def _metrics_rows(metrics: dict, ci: dict) -> list[list]:
    from .evaluation import HEADLINE

    rows = []
    for k in HEADLINE:
        if metrics.get(k) is not None:
            rows.append([k, _ci_text(ci, k, metrics[k])])
    for k in ("log_loss", "n"):
        if metrics.get(k) is not None:
            rows.append([k, _fmt(metrics[k])])
    return rows


def _val_groups(paths: list[str]) -> list[str] | None:
    try:
        from .data.audit import duplicate_groups
    except ImportError:
        return None
    try:
        return list(duplicate_groups(paths))
    except Exception:  # noqa: BLE001 - CIs fall back to image-level resampling
        return None


def _dice_curve_uri(history: Path) -> str:
    """The validation Dice (and mean highest tumour probability on no-tumour images) per epoch, as a PNG data URI;
    ``""`` when ``history.csv`` has no ``val_dice``."""
    if not history.is_file():
        return ""
    with open(history, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (r.get("val_dice") or "") != ""]
    if not rows:
        return ""
    from .plots import plt

    ep = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(ep, [float(r["val_dice"]) for r in rows], "o-", ms=3, label="validation Dice (map >= 0.5)")
    neg = [(e, float(r["val_negative_max"])) for e, r in zip(ep, rows, strict=True)
           if (r.get("val_negative_max") or "") != ""]
    if neg:
        ax.plot(*zip(*neg, strict=True), "s--", ms=3, label="no-tumour images: highest probability (mean)")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return _png_uri(buf.getvalue())


def _map_examples(run: RunDir, tm: dict, n: int) -> str:
    """Validation images with their predicted tumour outline (green) and the true mask's (red); ``""`` when the
    mask folder or the validation images are gone."""
    from .data.masks import find_mask, load_mask, prepare_mask
    from .data.read import read_image
    from .inference import Predictor
    from .outline import draw_outline, mask_outline, outline, prepare_with_geometry

    masks_dir = tm.get("masks")
    if not masks_dir or not Path(masks_dir).is_dir() or not (run.root / "split.csv").is_file() or n <= 0:
        return ""
    from .data.split import read_split_file

    paths = [r["path"] for r in read_split_file(run.root) if r["subset"] == "val"]
    pred = Predictor.from_run(run.root, device="cpu", allow_incomplete=True)  # written while train finalises
    pre = pred.preprocessor
    items = []
    for p in paths[:400]:
        mpath = find_mask(p, masks_dir)
        if mpath is None:
            continue
        try:
            raw = read_image(p)
            prepared, geo = prepare_with_geometry(pre, raw)
            true = prepare_mask(pre, raw, load_mask(mpath))
        except Exception:  # noqa: BLE001 - a moved or broken file just loses its figure
            continue
        if true.any():
            items.append((p, raw, prepared, geo, true))
        if len(items) >= n:
            break
    if not items:
        return ""
    _, maps = pred.proba_and_maps_prepared(np.stack([it[2] for it in items]))
    figs = []
    for (p, raw, _, geo, true), m in zip(items, maps, strict=True):
        got, ref = outline(m, geo), mask_outline(true, geo)
        hit = m >= got["threshold"]
        dice = 2 * float((hit & true).sum()) / max(1, int(hit.sum() + true.sum()))
        top, left, bottom, right = geo.box
        crop = raw[top:bottom, left:right]
        k = max(1, int(np.ceil(280 / max(crop.shape[:2]))))  # small images: enlarge, so the lines stay thin
        big = np.repeat(np.repeat(crop, k, axis=0), k, axis=1)
        img = draw_outline(big, ref, (230, 40, 40), scale=k, offset=(left, top))
        img = draw_outline(img, got, (40, 220, 80), scale=k, offset=(left, top))
        name = Path(p).name
        figs.append(_figure(_array_uri(img), name, f"{_esc(name)}<br>Dice {dice:.2f}; predicted "
                                                   f"{got['area_px']:.0f} px, true {ref['area_px']:.0f} px"))
    return (f'<h3>Validation images: predicted outline (green) and true mask (red)</h3><div class="grid">'
            f'{"".join(figs)}</div><p class="muted">Outlines on the original image (cropped to the brain), '
            f"tumour map thresholded at 0.5; Dice on the model's input grid.</p>")


# --------------------------------------------------------------------------------------------- building blocks
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.muted{color:#777}.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em 1em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0;width:140px;font-size:12px}
.grid img{width:140px;height:140px;object-fit:contain;background:#000}
.ok{color:#1a7f37}.bad{color:#c62828}img.fig{max-width:100%}nav a{margin-right:.8em}
.grid figcaption{overflow-wrap:anywhere}.grid.small figure{width:96px}.grid.small img{width:96px;height:96px}
ul.findings{padding-left:1.2em}ul.findings li{margin:.3em 0}ul.findings li.warn{padding:.2em .6em}
"""



def _esc(x) -> str:
    """HTML-escaped text; a file name that is not UTF-8 shows its odd bytes as ``\\xNN``
    (:func:`braintumor.display.printable`)."""
    from .display import printable

    return html.escape(printable(x))


def _write_page(path: Path, page: str) -> None:
    """Write the page atomically; any text that escaped :func:`_esc` cannot make it fail (``\\udcff``)."""
    atomic_write_text(path, page.encode("utf-8", "backslashreplace").decode("utf-8"))


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _img_file(path: Path, alt: str) -> str:
    if not Path(path).is_file():
        return f'<p class="muted">{_esc(Path(path).name)} not available.</p>'
    return f'<img class="fig" alt="{_esc(alt)}" src="{_png_uri(Path(path).read_bytes())}">'


def _array_uri(img: np.ndarray, size: int = 140) -> str:
    from PIL import Image

    im = Image.fromarray(np.asarray(img, dtype=np.uint8))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def _figure(uri: str, name: str, caption: str) -> str:
    """One thumbnail of a ``.grid`` (none when ``uri`` is empty); ``caption`` is HTML (escape what goes in)."""
    img = f'<img alt="{_esc(name)}" src="{uri}">' if uri else ""
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def _section(sid: str, title: str, build: Callable, ctx) -> str:
    try:
        body = build(ctx)
    except Exception as exc:  # noqa: BLE001 - one broken section must not lose the page
        body = f'<p class="warn">This section could not be built: {_esc(type(exc).__name__)}: {_esc(exc)}</p>'
    return f'<section id="{sid}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>\n'


def _page(title: str, subtitle: str, sections: list[Section], ctx) -> str:
    """The whole page: title, navigation, and each section built by its function of ``ctx``."""
    nav = " ".join(f'<a href="#{sid}">{_esc(t)}</a>' for sid, t, _ in sections)
    body = "".join(_section(sid, t, build, ctx) for sid, t, build in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n<p class=\"muted\">{_esc(subtitle)}</p>\n"
            f"<nav>{nav}</nav>\n{body}<p class=\"muted\">braintumor {__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Research use only.</p>\n</body></html>\n")


def _table(header: list[str], rows: list[list]) -> str:
    """A table; a header of empty strings is left out (a two-column "name | value" table)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if any(header) else ''}{body}</table>"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in items) + "</ul>"

def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _weights_text(meta: dict) -> str:
    """'average of epochs 13-18 (SWA)' or 'epoch 10 (lowest validation loss)'; older runs: their best epoch."""
    w = meta.get("weights") or {}
    eps = w.get("epochs") or [meta.get("best_epoch")]
    if w.get("kind", "").startswith("weight average"):
        return f"average of epochs {eps[0]}-{eps[-1]} (SWA)"
    return f"epoch {eps[-1]} (lowest validation loss)"


def _ci_text(ci: dict, key: str, point=None) -> str:
    c = ci.get(key)
    if c:
        return format_ci(c["estimate"], c["low"], c["high"])
    return _fmt(point)


def _folders(data_dir) -> str:
    return ", ".join(map(str, data_dir)) if isinstance(data_dir, list) else str(data_dir)
