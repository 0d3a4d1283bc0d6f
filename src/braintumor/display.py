"""Rich display in Jupyter: HTML for metrics tables and figures, shared by the result objects' ``_repr_html_``.

Result objects (:class:`~braintumor.training.TrainResult`, :class:`~braintumor.evaluation.EvaluationResult`,
:class:`~braintumor.crossval.CVResult`, :class:`~braintumor.explanation.Explanation`) render themselves as a table
(metrics with their 95% intervals where known, the confusion matrix) or a figure when they are the last expression of a
notebook cell. Everything is self-contained HTML (figures are embedded PNGs), so it survives ``nbconvert``.

File names come from outside and may be any bytes (Linux allows names that are not UTF-8) or hold rich markup
(``[bold]``) or mathtext (``$``). :func:`printable` turns one into text any output can hold, :func:`exact_name`
keeps its exact bytes (the ``path_bytes`` column of CSV files, read back by :func:`name_from_row`),
:func:`csv_text` and :func:`json_names` apply both to whole tables, :func:`markup` escapes it for the terminal
and :func:`plot_text` for matplotlib.

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
import math
import os
import re
from pathlib import Path

#: Metrics shown in tables, in this order (those missing or ``None`` are left out).
HEADLINE = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "macro_f1", "roc_auc",
            "pr_auc", "mcc", "log_loss")

_STYLE = "border-collapse:collapse;margin:4px 0;font-size:90%"
_CELL = "padding:2px 8px;border:1px solid #ddd;text-align:right"
_HEAD = "padding:2px 8px;border:1px solid #ddd;text-align:left;background:#f4f4f4"


def esc(x) -> str:
    """HTML-escape anything (via ``str``, then :func:`printable`: a file name that is not UTF-8 cannot break it)."""
    return html.escape(printable(x))


# ------------------------------------------------------------------------------------ names from outside

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(name) -> str:
    if isinstance(name, bytes):
        return os.fsdecode(name)
    return os.fspath(name) if isinstance(name, os.PathLike) and isinstance(os.fspath(name), str) else str(name)


def finite_number(v) -> float | None:
    """``v`` as a float when it is a finite real number (bools excluded), else ``None``: numbers read from files
    others wrote (metrics, metadata) are untrusted.

    Example:
        >>> from braintumor.display import finite_number
        >>> finite_number(3), finite_number(True), finite_number(float("nan")), finite_number("0.9")
        (3.0, None, None, None)
    """
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def printable(name) -> str:
    """A file name (or any text) as text every terminal, CSV, JSON, HTML page and figure can show.

    Linux file names are bytes: one that is not UTF-8 reaches Python with "surrogate escapes"
    (``os.fsdecode(b"scan\\xff.png") == "scan\\udcff.png"``), which cannot be written as UTF-8. Here such bytes
    become the four characters ``\\xff``, and control characters (newline, escape sequences that would drive a
    terminal) become ``\\x0a``, ``\\x1b``... Everything else is unchanged, so ordinary names stay exactly as they
    are. Where the exact name matters (a CSV that is read back), :func:`exact_name` goes beside it.

    Example:
        >>> import os
        >>> printable(os.fsdecode(b"scan\\xff.png")), printable("a\\nb.png"), printable("plain [x].png")
        ('scan\\\\xff.png', 'a\\\\x0ab.png', 'plain [x].png')
    """
    s = _text(name)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        try:
            s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # surrogates that are not escaped bytes (from JSON, say): their code point
            s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s) if _CONTROL.search(s) else s


def exact_name(name) -> str:
    """The exact bytes of a file name, as hex, when :func:`printable` had to change it; ``""`` when it did not.

    What ``path_bytes`` columns of CSV files hold (:func:`name_from_row` reads it back).

    Example:
        >>> import os
        >>> exact_name(os.fsdecode(b"scan\\xff.png")), exact_name("scan.png")
        ('7363616eff2e706e67', '')
    """
    s = _text(name)
    if printable(s) == s:
        return ""
    try:
        return os.fsencode(s).hex()
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass").hex()


def name_from_row(row: dict, key: str = "path") -> str:
    """The exact file name of a CSV row written with :func:`exact_name` beside :func:`printable`.

    Example:
        >>> import os
        >>> row = {"path": "scan\\\\xff.png", "path_bytes": "7363616eff2e706e67"}
        >>> name_from_row(row) == os.fsdecode(b"scan\\xff.png")
        True
    """
    raw = row.get(f"{key}_bytes") or ""
    if raw:
        try:
            return os.fsdecode(bytes.fromhex(raw))
        except ValueError:
            pass
    return row.get(key) or ""


def csv_text(header: list[str], rows, name_columns=("path",), lineterminator: str = "\r\n") -> str:
    """CSV text whose text cells are :func:`printable`, with ``<column>_bytes`` (:func:`exact_name`) added as the last
    columns when a name of ``name_columns`` needed it; the text is always valid UTF-8.

    Example:
        >>> import os
        >>> csv_text(["path", "label"], [[os.fsdecode(b"a\\xff.png"), "yes"], ["b.png", "no"]], lineterminator="\\n")
        'path,label,path_bytes\\na\\\\xff.png,yes,61ff2e706e67\\nb.png,no,\\n'
    """
    import csv

    rows = [list(r) for r in rows]
    cols = [header.index(c) for c in name_columns if c in header]
    extra = [i for i in cols if any(exact_name(r[i]) for r in rows)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=lineterminator)
    w.writerow([*header, *[f"{header[i]}_bytes" for i in extra]])
    for r in rows:
        w.writerow([*[printable(c) if isinstance(c, str | Path) else c for c in r], *[exact_name(r[i]) for i in extra]])
    return buf.getvalue()


def json_names(obj, name_keys=("path", "source", "file")):
    """A copy of JSON-ready data whose strings are :func:`printable`; a name under ``name_keys`` that had to change
    gets its exact bytes beside it as ``<key>_bytes`` (:func:`exact_name`).

    Example:
        >>> import os
        >>> json_names({"path": os.fsdecode(b"a\\xff.png"), "label": "yes"})
        {'path': 'a\\\\xff.png', 'path_bytes': '61ff2e706e67', 'label': 'yes'}
    """
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k] = json_names(v, name_keys)
            if k in name_keys and isinstance(v, str | Path) and exact_name(v):
                out[f"{k}_bytes"] = exact_name(v)
        return out
    if isinstance(obj, list | tuple):
        return [json_names(v, name_keys) for v in obj]
    return printable(obj) if isinstance(obj, str | Path) else obj


def markup(name) -> str:
    """:func:`printable`, with rich's markup escaped: ``[bold]`` in a file name prints literally.

    Example:
        >>> markup("[bold]x.png")
        '\\\\[bold]x.png'
    """
    from rich.markup import escape

    return escape(printable(name))


def plot_text(name) -> str:
    """:func:`printable`, safe in a matplotlib title: a ``$`` would start mathtext (and a bad formula fails).

    Example:
        >>> plot_text("cost$5.png")
        'cost\\\\$5.png'
    """
    return printable(name).replace("$", r"\$")


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
    """A :class:`~braintumor.crossval.CVResult` as a table: per metric the fold mean +/- std with its 95% CI, and the
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
