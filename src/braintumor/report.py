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

The "Data audit" section of the run and cross-validation pages is :func:`braintumor.audit_report.audit_html`: the
findings of :func:`braintumor.data.audit.audit` in sentences, then duplicate groups with thumbnails,
the source check, class balance and per-class image statistics as small tables.

Example:
    >>> from braintumor.report import write_report
    >>> write_report("runs/demo")                # doctest: +SKIP
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audit_report import audit_html, load_or_run_audit
from .htmlpage import (
    Section,
    _array_uri,
    _esc,
    _figure,
    _fmt,
    _img_file,
    _list,
    _page,
    _png_uri,
    _table,
    _write_page,
)
from .rundir import RunDir, read_predictions
from .stats import bootstrap_ci, format_ci

RUN_SECTIONS = ("summary", "data", "audit", "metrics", "curves", "confusion", "roc", "calibration", "per-class",
                "samples", "gradcam", "int8", "input-check", "caveats")
CV_SECTIONS = ("summary", "data", "audit", "metrics", "folds", "pooled", "confusion", "roc", "calibration", "leakage",
               "caveats")
#: The extra section of runs trained with tumour masks (``metadata.json`` ``tumour_map``).
MAP_SECTION = "tumour-map"
#: The section on the input check (:mod:`braintumor.ood`): its settings and scores, or how to fit one.
CHECK_SECTION = "input-check"
#: The section on the 8-bit copy of the model (``braintumor export RUN --int8``; ``metadata.json`` ``int8``).
INT8_SECTION = "int8"
#: The figure of the abstention limit's coverage / accuracy trade-off on the validation split (in the run folder).
COVERAGE_FILE = "coverage.png"
#: ``labels_to_check`` of a cross-validation (:mod:`braintumor.crossval`) lists images whose out-of-fold probability
#: of their own label is below this (defined here so that this module imports no training code).
LABEL_CHECK_BELOW = 0.2
#: The metrics of the leave-one-source-out table (:mod:`braintumor.crossval_sources`).
SOURCE_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc")



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
    shown as findings in sentences (:func:`~braintumor.audit_report.audit_html`). A run trained with tumour masks
    gets a "Tumour map" section: the mask summary, the validation Dice per epoch and ``n_maps`` validation images
    with the predicted and the true outline (when the mask folder is still there). Every run gets an "Input check"
    section (:mod:`braintumor.ood`): the check's settings, its score quantiles on the training and validation
    splits, the coverage / accuracy trade-off of the abstention limit on the validation split (also saved as
    ``coverage.png``) and the input-check figures of the run's evaluations; for a run without a check, how to fit
    one.

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
    sections += [(INT8_SECTION, INT8_TITLE, _section_int8), (CHECK_SECTION, "Input check", _section_input_check),
                 ("caveats", "Caveats", _section_caveats)]
    page = _page(f"braintumor run report: {run.root.name}", f"{meta['model']} on {ctx.data.get('data_dir')}",
                 sections, ctx)
    _write_page(run.report, page)
    return run.report


def refresh_report_section(run_dir: str | Path, sid: str) -> Path | None:
    """Build one section of a run's ``report.html`` again, in place, after the run changed (``export --int8``
    writes :data:`INT8_SECTION`, ``fit-input-check`` :data:`CHECK_SECTION`); the other sections, Grad-CAM samples
    included, are kept as they are. A report written before the section existed gets it before "Caveats" (and a
    link to it). No report (or one that cannot be read or written) is left alone: ``None``.

    Example:
        >>> from braintumor.report import INT8_SECTION, refresh_report_section
        >>> refresh_report_section("runs/demo", INT8_SECTION)        # doctest: +SKIP
        PosixPath('runs/demo/report.html')
    """
    from .errors import BrainTumorError
    from .htmlpage import _section

    builders = {INT8_SECTION: (INT8_TITLE, _section_int8), CHECK_SECTION: ("Input check", _section_input_check)}
    if sid not in builders:
        raise ValueError(f"unknown report section '{sid}': choose {', '.join(builders)}")
    run = RunDir(run_dir)
    try:
        page = run.report.read_text(encoding="utf-8")
        title, build = builders[sid]
        ctx = _RunContext(run, run.read_metadata(), {})
        new = _section(sid, title, build, ctx)
        start = page.find(f'<section id="{sid}">')
        if start >= 0:
            end = page.find("</section>", start)
            if end < 0:
                return None
            page = page[:start] + new + page[end + len("</section>"):].removeprefix("\n")
        else:
            at = page.find('<section id="caveats">')
            if at < 0:
                return None
            page = page[:at] + new + page[at:]
            page = page.replace('<a href="#caveats">', f'<a href="#{sid}">{_esc(title)}</a> <a href="#caveats">', 1)
        _write_page(run.report, page)
    except (BrainTumorError, OSError, UnicodeDecodeError):
        return None
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
        ("input-check", "Input check on held-out folds", _cv_section_input_check),
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
    return (f'<div class="grid">{"".join(figs)}</div><p class="muted">Maps by <code>{_esc(exs[0].method)}</code> '
            "(the default explanation method, see docs/guide/explain.md): where the predicted class's evidence "
            "lies. A map on the skull, the background or text marks is a warning sign (shortcut learning), not an "
            "explanation of the tumour.</p>")


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


#: The title of :data:`INT8_SECTION`.
INT8_TITLE = "8-bit inference"


def _section_int8(ctx: _RunContext) -> str:
    return _int8_html(ctx.run, ctx.meta)


def _int8_html(run: RunDir, meta: dict) -> str:
    """The "8-bit inference" section: what ``export --int8`` measured and decided, or how to make a copy."""
    q = meta.get("int8")
    cmd = f"<code>braintumor export {_esc(run.root)} --int8</code>"
    if not isinstance(q, dict):
        return (f"<p>No 8-bit copy of this model: prediction on onnxruntime uses FP32. {cmd} makes one, calibrated "
                "on the run's training images, and keeps it only when its labels agree with FP32's on the "
                "validation split (the bar is stored with the decision).</p>")
    bar = q.get("bar") if isinstance(q.get("bar"), dict) else {}
    guarded = bool(q.get("guard_band"))
    verdict = ("kept: <code>predict</code> and <code>serve</code> on onnxruntime use <code>model.int8.onnx</code>"
               + (", with FP32 deciding the images near a label change" if guarded else "")
               if q.get("passed") is True else
               f"not kept: {_esc(q.get('reason') or 'the check failed')}. Prediction uses FP32")
    rows = [["identical labels with FP32 (validation)", _share(q.get("label_agreement"))],
            ["accuracy, INT8 (FP32)", f"{_fmt(q.get('int8_accuracy'))} ({_fmt(q.get('fp32_accuracy'))})"],
            ["validation images", q.get("n_validation", "-")],
            ["bar", f"identical labels >= {_share(bar.get('min_label_agreement'))}, accuracy drop <= "
                    f"{_fmt(bar.get('max_accuracy_drop'))}" if bar else "-"],
            ["largest probability difference", _fmt(q.get("max_abs_diff"))],
            ["recipe (calibration)", f"{q.get('recipe', '-')} ({q.get('method', '-')}), "
                                     f"{q.get('n_calibration', '-')} training images"]]
    if guarded:
        rows += [["INT8 alone: identical labels", _share(q.get("raw_label_agreement"))],
                 ["FP32 guard: band of the decision margin", _fmt(q.get("guard_band"))],
                 ["validation images decided by FP32", _share(q.get("guarded_share"))]]
    return (f"<p>The 8-bit copy made by {cmd}: {verdict}.</p>" + _table(["", ""], rows)
            + '<p class="muted">Explanations (Grad-CAM), evaluations and <code>--precision fp32</code> use the '
              "full-precision model.</p>")


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


def _cv_section_input_check(ctx: _CVContext) -> str:
    ic = ctx.doc.get("input_check")
    if not ic:
        return ('<p class="muted">Not measured: the folds\' runs have no input check (trained with '
                "<code>--no-ood-check</code>, or before it existed).</p>")
    c = ic["counts"]
    lo, hi = ic["flagged_ci"]
    rows = [["held-out images", ic["n"]], ["flagged (not_brain_mri or unfamiliar)",
                                           f"{c['flagged']} ({_share(ic['flagged'])}, 95% CI {_share(lo)} to "
                                           f"{_share(hi)})"],
            ["of which not_brain_mri (rules)", c.get("not_brain_mri", 0)],
            ["of which unfamiliar (feature distance)", c.get("unfamiliar", 0)],
            ["uncertain (answered with no class)", f"{c.get('uncertain', 0)} ({_share(ic.get('uncertain'))})"]]
    per_fold = [_share(f.get("flagged")) for f in ctx.doc["folds"] if "flagged" in f]
    return (_table(["", ""], rows)
            + f'<p class="muted">Each image was checked by the input check of the fold that never saw it (its '
              "threshold came from that fold's inner validation split), so the share flagged is the check's "
              "false-alarm rate on images like these: brain MRI the model was made for. Per fold: "
              f"{', '.join(per_fold)}.</p>")


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
            "that tells whether a model finds the tumour or the data set an image came from.</p>" + table
            + _source_map_table(cross) + text)


def _source_map_table(cross: list[dict]) -> str:
    """Runs trained with masks: their tumour map as a detector on the source never seen, alone and with the head."""
    rows = []
    for r in cross:
        det, either = r.get("map_detector"), r.get("head_or_map") or {}
        if det:
            rows.append([" + ".join(r["trained_on"]), r["tested_on"], _fmt(det.get("sensitivity")),
                         _fmt(det.get("specificity")), _fmt(det.get("roc_auc")), _fmt(either.get("sensitivity")),
                         _fmt(either.get("specificity")), _fmt(either.get("balanced_accuracy"))])
    if not rows:
        return ""
    return ("<p>Tumour map as a detector (runs trained with masks): a region of the map &ge; 0.5 found, as "
            "<code>predict --outline</code> would outline it; and the fixed rule <em>head or map</em> (tumour if "
            "the class head says a tumour class or the map outlines a region).</p>"
            + _table(["trained on", "tested on", "map: sensitivity", "map: specificity", "map: ROC-AUC",
                      "head or map: sensitivity", "head or map: specificity", "head or map: balanced accuracy"],
                     rows))


def _source_section_table(ctx: _SourceContext) -> str:
    body = _table(["trained on", "tested on", "kind", "images", "copies left out", *SOURCE_METRICS, "flagged"],
                  [[" + ".join(r["trained_on"]), r["tested_on"], r["kind"], r["n"],
                    r.get("copies_excluded", "-") if r["kind"] == "cross" else "-",
                    *[ctx.cell(r, k) for k in SOURCE_METRICS],
                    _share(r.get("flagged"))] for r in ctx.rows])
    return ("<p>Cross-source rows test a model on the source left out of its training; within-source rows test "
            "the same model on its group-aware inner validation images of each training source (the usual "
            "single-data-set figure). 95% bootstrap intervals over images. <em>flagged</em>: the share of the "
            "held-out source that the model's input check calls unfamiliar or not brain MRI.</p>" + body
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
