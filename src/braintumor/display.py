"""Rich display in Jupyter: HTML for metrics tables and figures, shared by the result objects' ``_repr_html_``.

Result objects (:class:`~braintumor.train.TrainResult`, :class:`~braintumor.evaluate.EvaluationResult`,
:class:`~braintumor.cv.CVResult`, :class:`~braintumor.explain.Explanation`) render themselves as a table (metrics
with their 95% intervals where known, the confusion matrix) or a figure when they are the last expression of a
notebook cell. Everything is self-contained HTML (figures are embedded PNGs), so it survives ``nbconvert``.

Example:
    >>> from braintumor.display import metrics_html
    >>> html = metrics_html({"n": 4, "accuracy": 0.75, "classes": ["no", "yes"],
    ...                      "confusion_matrix": [[1, 1], [0, 2]]}, title="validation")
    >>> "<table" in html and "0.750" in html
    True
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

#: Metrics shown in tables, in this order (those missing or ``None`` are left out).
HEADLINE = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "macro_f1", "roc_auc",
            "pr_auc", "mcc", "log_loss")

_STYLE = "border-collapse:collapse;margin:4px 0;font-size:90%"
_CELL = "padding:2px 8px;border:1px solid #ddd;text-align:right"
_HEAD = "padding:2px 8px;border:1px solid #ddd;text-align:left;background:#f4f4f4"


def esc(x) -> str:
    """HTML-escape anything (via ``str``)."""
    return html.escape(str(x))


def fmt(v, digits: int = 3) -> str:
    """A number for a table: ``0.912``; ``None``/``nan`` -> an en dash; ints stay ints."""
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return esc(v)
    return "&ndash;" if f != f else f"{f:.{digits}f}"


def table_html(header: list[str], rows: list[list[str]], caption: str = "") -> str:
    """A small HTML table; cells are used as given (escape them first)."""
    cap = f"<caption style='text-align:left;font-weight:bold'>{esc(caption)}</caption>" if caption else ""
    head = "".join(f"<th style='{_HEAD}'>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='{_HEAD if i == 0 else _CELL}'>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table style='{_STYLE}'>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics_rows(metrics: dict, keys=HEADLINE) -> list[list[str]]:
    """``[name, value, 95% interval]`` rows; the interval comes from ``metrics["ci"]`` when it is there."""
    ci = metrics.get("ci") or {}
    rows = []
    for k in keys:
        v = metrics.get(k)
        if v is None or isinstance(v, (dict, list)):
            continue
        c = ci.get(k) if isinstance(ci, dict) else None
        interval = f"[{fmt(c.get('low'))}, {fmt(c.get('high'))}]" if isinstance(c, dict) else ""
        rows.append([esc(k), fmt(v), interval])
    return rows


def confusion_html(cm, classes) -> str:
    """The confusion matrix as a table (rows: true class, columns: predicted class)."""
    classes = [esc(c) for c in classes]
    rows = [[f"true {c}", *[str(int(v)) for v in r]] for c, r in zip(classes, cm, strict=False)]
    return table_html(["", *[f"pred {c}" for c in classes]], rows, "confusion matrix")


def metrics_html(metrics: dict, title: str = "", extra: list[tuple[str, str]] | None = None) -> str:
    """Headline metrics (with 95% intervals where ``metrics["ci"]`` has them) and the confusion matrix."""
    rows = metrics_rows(metrics)
    has_ci = any(r[2] for r in rows)
    header = ["metric", "value", "95% CI"] if has_ci else ["metric", "value"]
    rows = [r if has_ci else r[:2] for r in rows]
    info = [(k, v) for k, v in (extra or [])]
    if metrics.get("n") is not None:
        info.append(("n", str(metrics["n"])))
    if metrics.get("positive_class"):
        info.append(("positive class", esc(metrics["positive_class"])))
    if metrics.get("threshold") is not None:
        info.append(("threshold", fmt(metrics["threshold"])))
    lines = "".join(f"<div><b>{esc(k)}</b>: {v}</div>" for k, v in info)
    parts = [f"<div><b>{esc(title)}</b></div>" if title else "", lines, table_html(header, rows)]
    if metrics.get("confusion_matrix") and metrics.get("classes"):
        parts.append(confusion_html(metrics["confusion_matrix"], metrics["classes"]))
    return "<div>" + "".join(parts) + "</div>"


def png_html(data: bytes, alt: str = "", width: int | None = None) -> str:
    """An ``<img>`` with the PNG bytes embedded (base64)."""
    w = f" width='{int(width)}'" if width else ""
    return f"<img alt='{esc(alt)}'{w} src='data:image/png;base64,{base64.b64encode(data).decode()}'/>"


def figure_png(fig, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure_html(fig, dpi: int = 90) -> str:
    """A matplotlib figure as an embedded ``<img>``."""
    return png_html(figure_png(fig, dpi), alt=fig.get_suptitle() if hasattr(fig, "get_suptitle") else "")


def file_html(path: str | Path, width: int | None = None) -> str:
    """An image file (e.g. a run's ``curves.png``) embedded as ``<img>``; empty when the file is missing."""
    p = Path(path)
    return png_html(p.read_bytes(), p.name, width) if p.is_file() else ""


def cv_html(result) -> str:
    """A :class:`~braintumor.cv.CVResult` as a table: per metric the fold mean +/- std with its 95% CI, and the
    pooled out-of-fold value with its bootstrap CI; the leakage comparison when it was run."""
    rows = []
    pooled_ci = result.pooled_ci or {}
    for k in HEADLINE:
        s = (result.summary or {}).get(k) or {}
        if s.get("mean") is None:
            continue
        pc = pooled_ci.get(k) if isinstance(pooled_ci.get(k), dict) else {}
        rows.append([esc(k), f"{fmt(s['mean'])} &plusmn; {fmt(s.get('std'))}",
                     f"[{fmt(s.get('low'))}, {fmt(s.get('high'))}]", fmt((result.pooled or {}).get(k)),
                     f"[{fmt(pc.get('low'))}, {fmt(pc.get('high'))}]" if pc else ""])
    kind = "group-aware" if result.grouped else "image-level"
    groups = f", {result.n_groups} groups" if result.n_groups else ""
    parts = [f"<div><b>CVResult</b>: {len(result.folds)} folds, {kind}{groups}; outputs in {esc(result.out_dir)}</div>",
             table_html(["metric", "fold mean &plusmn; std", "95% CI of the mean", "pooled", "pooled 95% CI"], rows)]
    if result.leakage:
        lrows = [[esc(k), fmt(v.get("group_aware")), fmt(v.get("naive")), fmt(v.get("inflation"))]
                 for k, v in result.leakage.items()]
        parts.append(table_html(["metric", "group-aware", "naive", "inflation"], lrows,
                                "leakage: what a naive image-level split would have reported"))
    return "<div>" + "".join(parts) + "</div>"
