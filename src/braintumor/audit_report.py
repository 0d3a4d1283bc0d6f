"""The data audit (:func:`braintumor.data.audit.audit`) for a reader: findings in sentences, then small tables.

:func:`audit_findings` gives the headline findings a new user reads in one screen (duplicates and whether any
cross classes, whether image statistics alone tell the classes apart, class balance, unreadable and misnamed
files); :func:`audit_html` is the "Data audit" section of the run and cross-validation reports: those findings,
then duplicate groups with thumbnails, copies in another folder, the source check, class balance and per-class
image statistics. Keys of the audit it does not know are left out, never dumped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .htmlpage import _array_uri, _esc, _figure, _fmt, _table
from .rundir import RunDir

AUDIT_MAX_IMAGES = 3000  # run the duplicate audit from the report only when the data set is this small
#: Duplicate groups shown with thumbnails in the audit section (label conflicts first, then the largest groups),
#: and thumbnails per group.
AUDIT_GROUPS_SHOWN, AUDIT_THUMBS_PER_GROUP = 4, 4
#: Rows of the audit's file lists (copies in another folder, unreadable files) shown in the page.
AUDIT_ROWS_SHOWN = 10




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
        >>> from braintumor.audit_report import audit_findings
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
