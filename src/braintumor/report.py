"""One self-contained HTML page per run (``report.html``): every figure embedded, no network, no CDN.

:func:`write_report` documents a training run (data and audit, curves, metrics with bootstrap CIs, confusion
matrix, ROC, calibration, per-class metrics, sample predictions, Grad-CAM, input check, caveats);
:func:`write_cv_report` documents a cross-validation folder written by :func:`braintumor.crossval.cv`. Each section is
built on its own: a section that fails says so in the page instead of losing the report (or the training run that
called it).

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
from pathlib import Path

import numpy as np

from . import __version__
from .rundir import RunDir, atomic_write_text
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
"""


# ------------------------------------------------------------------------------------------------ helpers


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


def _section(sid: str, title: str, build: Callable[[], str]) -> str:
    try:
        body = build()
    except Exception as exc:  # noqa: BLE001 - one broken section must not lose the page
        body = f'<p class="warn">This section could not be built: {_esc(type(exc).__name__)}: {_esc(exc)}</p>'
    return f'<section id="{sid}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>\n'


def _page(title: str, subtitle: str, sections: list[tuple[str, str, Callable[[], str]]]) -> str:
    nav = " ".join(f'<a href="#{sid}">{_esc(t)}</a>' for sid, t, _ in sections)
    body = "".join(_section(sid, t, b) for sid, t, b in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n<p class=\"muted\">{_esc(subtitle)}</p>\n"
            f"<nav>{nav}</nav>\n{body}<p class=\"muted\">braintumor {__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Research use only.</p>\n</body></html>\n")


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


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


def read_predictions(path: Path) -> tuple[list[str], list[str], list[str], np.ndarray, list[str]]:
    """``predictions.csv`` -> paths, true labels, predicted labels, probabilities, class names."""
    from .display import name_from_row

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.DictReader(fh))
    classes = [k[2:] for k in (rows[0].keys() if rows else []) if k.startswith("p_")]
    proba = np.asarray([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64)
    return ([name_from_row(r) for r in rows], [r["label"] for r in rows], [r["predicted"] for r in rows],
            proba.reshape(len(rows), len(classes)), classes)


# -------------------------------------------------------------------------------------------- audit section


def load_or_run_audit(root: Path, data_dir: str | None, n_images: int | None) -> dict | None:
    """The audit of the run's data: ``root/audit.json`` if present, else run it (small data sets only) and save."""
    path = root / "audit.json"
    if path.is_file():
        return json.loads(path.read_text())
    if not data_dir or isinstance(data_dir, list) or not Path(data_dir).is_dir() or (n_images or 0) > AUDIT_MAX_IMAGES:
        return None
    try:
        from .data.audit import audit
    except ImportError:
        return None
    doc = audit(data_dir).to_dict()
    RunDir(root).write_json(path, doc)
    return doc


def _render_value(v, depth: int = 0) -> str:
    if isinstance(v, dict):
        if depth >= 2:
            return _esc(json.dumps(v, default=str)[:300])
        rows = "".join(f"<tr><td>{_esc(k)}</td><td style='text-align:left'>{_render_value(x, depth + 1)}</td></tr>"
                       for k, x in v.items())
        return f"<table>{rows}</table>"
    if isinstance(v, list):
        if not v:
            return "none"
        shown = ", ".join(_esc(json.dumps(x, default=str)[:160]) for x in v[:5])
        more = f" ... ({len(v)} in all)" if len(v) > 5 else ""
        return f"{len(v)}: {shown}{more}"
    if isinstance(v, float):
        return _fmt(v)
    return _esc(v)


def _audit_html(doc: dict | None) -> str:
    if doc is None:
        return ('<p class="muted">No audit available (run <code>braintumor audit DATA_DIR</code>; the duplicate audit '
                "needs the <code>audit</code> extra).</p>")
    return _render_value(doc)


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



# ------------------------------------------------------------------------------------------------ run report


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


def write_report(run_dir: str | Path, n_samples: int = 8, n_gradcam: int = 4, n_boot: int = 1000,
                 n_maps: int = 6) -> Path:
    """Write ``RUN/report.html`` for a training run folder and return its path.

    Bootstrap CIs of the validation metrics are computed from ``predictions.csv`` (over duplicate groups when the
    audit is available). The audit is read from ``RUN/audit.json`` or run on small data sets and saved there.
    A run trained with tumour masks gets a "Tumour map" section: the mask summary, the validation Dice per epoch
    and ``n_maps`` validation images with the predicted and the true outline (when the mask folder is still there).
    Every run gets an "Input check" section (:mod:`braintumor.ood`): the check's settings, its score quantiles on
    the training and validation splits, the coverage / accuracy trade-off of the abstention limit on the validation
    split (also saved as ``coverage.png``) and the input-check figures of the run's evaluations; for a run without
    a check, how to fit one.
    """
    run = RunDir(run_dir)
    meta = run.read_metadata()
    metrics = json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}
    classes = meta["classes"]
    state: dict = {}

    def ci() -> dict:
        if "ci" not in state:
            state["ci"] = {}
            if metrics.get("ci"):
                state["ci"] = metrics["ci"]
            elif run.predictions.is_file():
                paths, labels, _, proba, _ = read_predictions(run.predictions)
                y = [classes.index(lab) for lab in labels]
                groups = _val_groups(paths)
                state["ci"] = bootstrap_ci(y, proba, classes, meta.get("positive_class"), meta.get("threshold"),
                                           groups=groups, n_boot=n_boot, seed=int(meta.get("seed", 0)))
        return state["ci"]

    def summary() -> str:
        from .preprocess import INTENSITY_PERCENTILES

        d = meta.get("data", {})
        c = ci()
        unit = f"over {c.get('n_units')} {c.get('unit')}s" if c else ""
        rows = [["model", f"{meta['model']} ({'ImageNet-pretrained' if meta.get('pretrained') else 'random init'})"],
                ["classes", ", ".join(classes) + (f" (positive: {meta['positive_class']})"
                                                  if meta.get("positive_class") else "")],
                ["input", f"{meta['img_size']} px, brain crop " + ("on" if meta["preprocessing"].get("crop_brain")
                                                                     else "off")
                 + (", intensities stretched to the head's {}-{}th percentiles".format(*INTENSITY_PERCENTILES)
                    if meta["preprocessing"].get("intensity") == "percentile" else "")],
                ["validation accuracy", _ci_text(c, "accuracy", metrics.get("accuracy"))],
                ["validation ROC-AUC", _ci_text(c, "roc_auc", metrics.get("roc_auc"))],
                ["validation images", d.get("n_val")], ["weights kept", _weights_text(meta)],
                ["wall time", f"{meta.get('wall_seconds', 0):.0f} s on {meta.get('device')}/{meta.get('precision')}"]]
        return (_table(["", ""], rows) + f'<p class="muted">Intervals: 95% percentile bootstrap {unit} of the '
                "validation split. The validation split also chose the best epoch and the calibration, so these "
                "numbers are optimistic; use <code>braintumor cv</code> or a separate test folder for an estimate "
                "you can quote.</p>")

    def data() -> str:
        d = meta.get("data", {})
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
            classes = meta.get("classes", [])
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

    def audit_section() -> str:
        d = meta.get("data", {})
        n = (d.get("n_train") or 0) + (d.get("n_val") or 0)
        return _audit_html(meta.get("audit") or load_or_run_audit(run.root, d.get("data_dir"), n))

    def metrics_section() -> str:
        return _table(["metric (validation)", "estimate [95% CI]"], _metrics_rows(metrics, ci()))

    def calibration() -> str:
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
        return _table(["", ""], rows) + _img_file(run.root / "calibration.png", "reliability diagram")

    def per_class() -> str:
        c = ci().get("per_class", {})
        rows = []
        for cls in classes:
            pc = metrics.get("per_class", {}).get(cls, {})
            cc = c.get(cls, {})
            rows.append([cls, pc.get("support", "-")] + [_ci_text(cc, k, pc.get(k)) for k in
                                                         ("sensitivity", "specificity", "precision", "f1")])
        return _table(["class", "support", "sensitivity (recall)", "specificity", "precision", "F1"], rows)

    def samples() -> str:
        from .data.read import read_image
        from .preprocess import Preprocessor

        if not run.predictions.is_file():
            return '<p class="muted">No predictions.csv.</p>'
        paths, labels, preds, proba, pcls = read_predictions(run.predictions)
        pre = Preprocessor.from_dict(meta["preprocessing"])
        conf = proba.max(axis=1) if len(proba) else np.zeros(0)
        wrong = [i for i in np.argsort(-conf) if labels[i] != preds[i]][:n_samples]
        right = [i for i in np.argsort(-conf) if labels[i] == preds[i]]
        right = [right[j] for j in np.linspace(0, len(right) - 1, min(n_samples, len(right))).astype(int)] \
            if right else []
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

    def gradcam() -> str:
        try:
            from .explanation import explain_batch
        except ImportError:
            return '<p class="muted">Grad-CAM is not available in this installation (braintumor.explanation).</p>'
        from .inference import Predictor

        if not run.predictions.is_file():
            return '<p class="muted">No predictions.csv.</p>'
        paths, labels, preds, _, _ = read_predictions(run.predictions)
        wrong = [i for i in range(len(paths)) if labels[i] != preds[i]][: n_gradcam // 2]
        right = [i for i in range(len(paths)) if labels[i] == preds[i]][: n_gradcam - len(wrong)]
        idx = right + wrong
        if not idx:
            return '<p class="muted">No validation images.</p>'
        pred = Predictor.from_run(run.root, device="cpu", allow_incomplete=True)  # written while train finalises
        exs = explain_batch(pred, [paths[i] for i in idx])
        figs = []
        for i, ex in zip(idx, exs, strict=True):
            cls_ok = "ok" if labels[i] == preds[i] else "bad"
            figs.append(f'<figure><img alt="Grad-CAM {_esc(Path(paths[i]).name)}" src="{_array_uri(ex.overlay())}">'
                        f"<figcaption>{_esc(Path(paths[i]).name)}<br>true {_esc(labels[i])}, "
                        f'<span class="{cls_ok}">predicted {_esc(ex.label)}</span> ({ex.probability:.2f})'
                        "</figcaption></figure>")
        return (f'<div class="grid">{"".join(figs)}</div><p class="muted">Grad-CAM at layer '
                f"{_esc(meta.get('gradcam_target_layer'))}: where the predicted class's evidence lies. A map on the "
                "skull, the background or text marks is a warning sign (shortcut learning), not an explanation of "
                "the tumour.</p>")

    def curves() -> str:
        return _img_file(run.curves, "training curves")

    def tumour_map() -> str:
        tm = meta.get("tumour_map") or {}
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
        uri = _dice_curve_uri(run.history)
        if uri:
            out += (f'<h3>Validation Dice per epoch</h3><img class="fig" alt="validation Dice" src="{uri}">'
                    '<p class="muted">Dice of the map thresholded at 0.5 against the masks of validation tumour '
                    "images; the dashed line is the highest tumour probability on no-tumour images (lower is "
                    "better).</p>")
        return out + _map_examples(run, tm, n_maps)

    def caveats() -> str:
        d = meta.get("data", {})
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
        return "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in items) + "</ul>"

    sections = [("summary", "Summary", summary), ("data", "Data", data), ("audit", "Data audit", audit_section),
                ("metrics", "Metrics with 95% CIs", metrics_section), ("curves", "Training curves", curves),
                ("confusion", "Confusion matrix", lambda: _img_file(run.confusion, "confusion matrix")),
                ("roc", "ROC curve", lambda: _img_file(run.roc, "ROC")),
                ("calibration", "Calibration", calibration), ("per-class", "Per-class metrics", per_class),
                ("samples", "Sample predictions", samples), ("gradcam", "Grad-CAM", gradcam),
                ("caveats", "Caveats", caveats)]
    if isinstance(meta.get("tumour_map"), dict):
        sections.insert(-1, (MAP_SECTION, "Tumour map", tumour_map))
    sections.insert(-1, (CHECK_SECTION, "Input check", lambda: _input_check_html(run, meta)))
    page = _page(f"braintumor run report: {run.root.name}",
                 f"{meta['model']} on {meta.get('data', {}).get('data_dir')}", sections)
    _write_page(run.report, page)
    return run.report


# ------------------------------------------------------------------------------------------------- cv report


def write_cv_report(cv_dir: str | Path) -> Path:
    """Write ``CV/report.html`` for a cross-validation folder (``cv.json`` and its figures) and return its path."""
    root = Path(cv_dir)
    doc = json.loads((root / "cv.json").read_text())
    if doc.get("kind") == "by-source":
        return write_source_report(root, doc)
    summary, folds, pooled, pci = doc["summary"], doc["folds"], doc["pooled"], doc.get("pooled_ci", {})
    metrics = [k for k in ("accuracy", "balanced_accuracy", "f1", "macro_f1", "roc_auc", "pr_auc", "sensitivity",
                           "specificity", "mcc") if summary.get(k, {}).get("mean") is not None]

    def s(k: str) -> str:
        v = summary[k]
        return format_ci(v["mean"], v.get("low"), v.get("high"))

    def summary_section() -> str:
        cfg = doc.get("config", {})
        sec = summary.get("seconds_per_fold", {})
        rows = [["split", f"{doc['repeats']} x {doc['n_folds']}-fold, "
                 + ("group-aware (duplicate groups kept within one fold)" if doc["grouped"]
                    else "image-level (no duplicate groups)")],
                ["model", f"{cfg.get('model')} at {cfg.get('img_size')} px, {cfg.get('epochs_frozen')} frozen + "
                 f"{cfg.get('epochs')} epochs"],
                ["mean accuracy [95% CI]", s("accuracy") if "accuracy" in summary else "-"],
                ["mean ROC-AUC [95% CI]", s("roc_auc") if "roc_auc" in metrics else "-"],
                ["wall time per fold", f"{sec.get('mean') or 0:.0f} s (mean)"]]
        return _table(["", ""], rows) + ('<p class="muted">Means over folds with t-based 95% intervals; each fold\'s '
                                         "model never saw its test fold, and the test fold chose nothing (epoch, "
                                         "temperature and threshold came from an inner validation split).</p>")

    def data_section() -> str:
        rows = [["data folder", doc["config"].get("data_dir")], ["images", doc["n_images"]],
                ["duplicate groups", doc.get("n_groups") or "-"], ["classes", ", ".join(doc["classes"])],
                ["out-of-fold predictions", doc["n_oof"]]]
        return _table(["", ""], rows)

    def audit_section() -> str:
        return _audit_html(load_or_run_audit(root, doc["config"].get("data_dir"), doc["n_images"]))

    def metrics_section() -> str:
        rows = [[k, s(k), _fmt(summary[k].get("std"))] for k in metrics]
        return _table(["metric", "mean over folds [95% CI]", "fold std"], rows)

    def folds_section() -> str:
        keys = [k for k in ("accuracy", "roc_auc", "sensitivity", "specificity", "mcc") if k in metrics]
        rows = [[f"{f['repeat']}/{f['fold']}", f["n_train"], f["n_val"], f["n_test"], f"{f['seconds']:.0f}",
                 _fmt(f.get("temperature"), 2)] + [_fmt(f.get(k)) for k in keys] for f in folds]
        return _table(["repeat/fold", "train", "inner val", "test", "seconds", "T", *keys], rows)

    def pooled_section() -> str:
        rows = [[k, _ci_text(pci, k, pooled.get(k))] for k in metrics if pooled.get(k) is not None]
        unit = f"{pci.get('unit', 'image')}s" if pci else ""
        return (_table(["metric (pooled out-of-fold)", "estimate [95% bootstrap CI]"], rows)
                + f'<p class="muted">Pooled over every out-of-fold prediction; bootstrap resamples {unit}. '
                  "Predictions: <code>oof_predictions.csv</code>.</p>")

    def leakage_section() -> str:
        leak = doc.get("leakage")
        if not leak:
            return ('<p class="muted">Not measured: run with <code>--show-leakage</code> to repeat the '
                    "cross-validation with a naive image-level split and see how much duplicates inflate it.</p>")
        rows = [[k, _fmt(v["group_aware"]), _fmt(v["naive"]), f"{v['inflation']:+.3f}", _fmt(v.get("group_aware_std")),
                 _fmt(v.get("naive_std"))] for k, v in leak.items()]
        return (_table(["metric", "group-aware mean", "naive mean", "inflation", "group-aware std", "naive std"], rows)
                + '<p class="muted">Inflation = naive - group-aware. Fold noise is several points: small differences '
                  "mean little, but a naive split also understates the spread.</p>")

    def label_check() -> str:
        from .crossval import LABEL_CHECK_BELOW
        from .data.read import read_image

        check = doc.get("labels_to_check") or []
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

    def caveats() -> str:
        items = ["About " + str(int(np.mean([f["n_test"] for f in folds]))) + " test images per fold: fold-to-fold "
                 "noise is large, and folds share training data, so the t-interval is somewhat optimistic.",
                 "Duplicate groups come from the image audit (exact and near copies); patient identity is unknown, "
                 "so leakage between slices of one patient cannot be ruled out.",
                 "Source confounding (different scanners / web sources per class) can inflate every number here; "
                 "only an external test set shows transfer.",
                 "Research and education use only. Not a medical device."]
        return "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in items) + "</ul>"

    sections = [("summary", "Summary", summary_section), ("data", "Data", data_section),
                ("audit", "Data audit", audit_section), ("metrics", "Metrics: mean and 95% CI over folds",
                                                          metrics_section),
                ("folds", "Per fold", folds_section), ("pooled", "Pooled out-of-fold metrics", pooled_section),
                ("confusion", "Pooled confusion matrix", lambda: _img_file(root / "confusion_matrix.png", "confusion")),
                ("roc", "Pooled ROC", lambda: _img_file(root / "roc.png", "ROC")),
                ("calibration", "Calibration (pooled out-of-fold)",
                 lambda: _img_file(root / "calibration.png", "reliability diagram")),
                ("labels", "Labels to check", label_check),
                ("leakage", "Naive-split inflation", leakage_section), ("caveats", "Caveats", caveats)]
    page = _page(f"braintumor cross-validation: {root.name}", f"{doc['config'].get('model')} on "
                 f"{doc['config'].get('data_dir')}", sections)
    out = root / "report.html"
    _write_page(out, page)
    return out


def write_source_report(root: Path, doc: dict | None = None, n_maps: int = 8) -> Path:
    """``report.html`` of a leave-one-source-out folder (:mod:`braintumor.crossval_sources`) and return its path."""
    from .crossval_sources import SOURCE_METRICS

    root = Path(root)
    doc = doc or json.loads((root / "cv.json").read_text())
    rows = doc["rows"]

    def cell(r: dict, k: str) -> str:
        return _ci_text(r.get("ci") or {}, k, r["metrics"].get(k))

    def summary_section() -> str:
        cross = [r for r in rows if r["kind"] == "cross"]
        text = "".join(f"<p class=\"warn\">{_esc(f)}</p>" if "overstates" in f else f"<p>{_esc(f)}</p>"
                       for f in doc.get("findings") or [])
        table = _table(["trained on", "tested on (never seen)", "images", *SOURCE_METRICS],
                       [[" + ".join(r["trained_on"]), r["tested_on"], r["n"], *[cell(r, k) for k in SOURCE_METRICS]]
                        for r in cross])
        return ("<p>Each model was trained on every source but one and tested on the source it never saw: the figure "
                "that tells whether a model finds the tumour or the data set an image came from.</p>" + table + text)

    def table_section() -> str:
        body = _table(["trained on", "tested on", "kind", "images", "copies left out", *SOURCE_METRICS],
                      [[" + ".join(r["trained_on"]), r["tested_on"], r["kind"], r["n"],
                        r.get("copies_excluded", "-") if r["kind"] == "cross" else "-",
                        *[cell(r, k) for k in SOURCE_METRICS]] for r in rows])
        return ("<p>Cross-source rows test a model on the source left out of its training; within-source rows test "
                "the same model on its group-aware inner validation images of each training source (the usual "
                "single-data-set figure). 95% bootstrap intervals over images.</p>" + body
                + '<p class="muted">Also in <code>by_source.csv</code> and <code>cv.json</code>.</p>')

    def data_section() -> str:
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

    def errors_section() -> str:
        from .data.read import read_image
        from .inference import Predictor

        errs = doc.get("errors") or []
        if not errs:
            return '<p class="muted">No cross-source errors.</p>'
        figs = []
        by_run: dict[str, list[dict]] = {}
        for e in errs:
            by_run.setdefault(e["run"], []).append(e)
        for run_rel, items in by_run.items():
            shown = items[:n_maps]
            overlays = [None] * len(shown)
            try:
                from .explanation import explain_batch

                pred = Predictor.from_run(root / run_rel, device="cpu")
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

    def caveats() -> str:
        items = ["A source left out is one collection: its own mix of scanners and sequences. Cross-source figures "
                 "vary from one collection to the next; report every one.",
                 "Copies of training images (exact and near duplicates found by the audit) are left out of each "
                 "test source; patient identity across sources is unknown.",
                 "Within-source rows come from each model's inner validation split (chosen nothing but the epoch, "
                 "temperature and threshold), so they are slightly optimistic.",
                 "Research and education use only. Not a medical device."]
        return "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in items) + "</ul>"

    sections = [("summary", "Summary: on sources never seen", summary_section),
                ("table", "Within and across sources", table_section), ("data", "Sources", data_section),
                ("errors", "Cross-source errors", errors_section), ("caveats", "Caveats", caveats)]
    page = _page(f"braintumor leave-one-source-out: {root.name}",
                 f"{doc['config'].get('model')} on {', '.join(doc.get('sources', []))}", sections)
    out = root / "report.html"
    _write_page(out, page)
    return out
