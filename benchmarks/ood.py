"""The input check (``braintumor.ood``) measured: non-brain images flagged, brain MRI let through, latency.

Prints one JSON object. For a run folder (its own input check, fitted at training):

* ``non_brain``: the folder-free corpus of :mod:`braintumor.data.nonbrain` (photos, documents, CT, other
  modalities, microscopy, synthetic, odd phantoms): share flagged (``not_brain_mri`` or ``unfamiliar``), per kind,
  and the items that got through;
* ``brain``: each ``--brain NAME=DIR`` folder (labelled ``DIR/<class>/...`` or not): share flagged by the rules and by
  the feature distance, share ``uncertain``; with ``--classes`` (a class map, as ``evaluate --classes``) also the
  accuracy and balanced accuracy on all images and on the ones the check lets through;
* ``validation``: the same on the run's own validation split (``split.csv``);
* ``latency_ms``: median per-image time of ``predict_paths`` with and without the check (batch 1, torch and
  onnxruntime when installed), and the check's share of it.

Example:
    python benchmarks/ood.py runs/navoneel --brain nick=../shared/data/brain_tumor_mri_4class/Training \\
        --brain figshare=../shared/data/figshare_dev/images --limit 600 > ood.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _assess(pred, paths, batch_size=32):
    rows = pred.predict_paths(paths, batch_size=batch_size)
    return [r for r in rows if r.ok]


def _shares(rows) -> dict:
    n = len(rows)
    v = [r.verdict for r in rows]
    flagged = sum(x in ("not_brain_mri", "unfamiliar") for x in v)
    return {"n": n, "flagged": round(flagged / max(n, 1), 4),
            "not_brain_mri": round(v.count("not_brain_mri") / max(n, 1), 4),
            "unfamiliar": round(v.count("unfamiliar") / max(n, 1), 4),
            "uncertain": round(v.count("uncertain") / max(n, 1), 4)}


def _accuracy(rows, truth, mapping) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    y = [truth[r.path] for r in rows]
    p = [mapping.get(r.label, r.label) for r in rows]
    keep = [r.in_distribution and r.verdict != "uncertain" for r in rows]
    out = {"accuracy_all": round(float(np.mean([a == b for a, b in zip(y, p, strict=True)])), 4),
           "balanced_accuracy_all": round(float(balanced_accuracy_score(y, p)), 4)}
    yk = [a for a, k in zip(y, keep, strict=True) if k]
    pk = [b for b, k in zip(p, keep, strict=True) if k]
    if yk:
        out.update(answered=round(len(yk) / len(y), 4),
                   accuracy_answered=round(float(np.mean([a == b for a, b in zip(yk, pk, strict=True)])), 4),
                   balanced_accuracy_answered=round(float(balanced_accuracy_score(yk, pk)), 4))
    yf = [a for a, r in zip(y, rows, strict=True) if not r.in_distribution]
    pf = [b for b, r in zip(p, rows, strict=True) if not r.in_distribution]
    if yf:
        out["accuracy_flagged"] = round(float(np.mean([a == b for a, b in zip(yf, pf, strict=True)])), 4)
    return out


def _split_half(rows, quantile: float, seed: int, repeats: int = 50) -> dict:
    """The validation share flagged unfamiliar when the threshold is fitted on a random half of the validation
    split and applied to the other half (the threshold of the run saw every validation image, so its own
    validation share is not a measure)."""
    from braintumor.ood import threshold_from

    s = np.array([r.ood_score for r in rows if r.ood_score is not None])
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(repeats):
        idx = rng.permutation(len(s))
        a, b = s[idx[: len(s) // 2]], s[idx[len(s) // 2:]]
        shares.append(float(np.mean(b > threshold_from(a, quantile))))
    return {"flagged_mean": round(float(np.mean(shares)), 4), "flagged_p90": round(float(np.quantile(shares, 0.9)), 4),
            "repeats": repeats}


def _files(folder: Path, limit: int | None, seed: int) -> list[Path]:
    from braintumor.data.discover import IMAGE_SUFFIXES

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if limit and len(files) > limit:
        idx = np.random.default_rng(seed).choice(len(files), limit, replace=False)
        files = [files[i] for i in sorted(idx)]
    return files


def _latency(pred, paths, repeats: int) -> dict:
    """Median ms of a one-image ``predict_paths`` with and without the check, interleaved image by image (the two
    settings see the same machine state: timing them in two blocks let a busy or cooling core favour one)."""
    times = {True: [], False: []}
    for on in (True, False):
        pred.check_inputs = on
        pred.predict_paths(paths[:2], batch_size=1)  # warm-up
    for _ in range(repeats):
        for p in paths:
            for on in (True, False):
                pred.check_inputs = on
                t = time.perf_counter()
                pred.predict_paths([p], batch_size=1)
                times[on].append(time.perf_counter() - t)
    pred.check_inputs = True
    out = {"with_check": round(1000 * float(np.median(times[True])), 2),
           "without_check": round(1000 * float(np.median(times[False])), 2)}
    out["check_share"] = round((out["with_check"] - out["without_check"]) / out["without_check"], 4)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--brain", action="append", default=[], help="NAME=DIR of brain-MRI images (class sub-folders)")
    ap.add_argument("--classes", action="append", default=[],
                    help="CLASS=NAME[,NAME...]: map model classes and folder classes onto common classes")
    ap.add_argument("--limit", type=int, default=None, help="at most this many images per brain folder (random)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-images", type=int, default=20)
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args(argv)

    from braintumor.backends import load_predictor
    from braintumor.data.nonbrain import non_brain_corpus, write_corpus

    pred = load_predictor(args.run, backend="torch", device="cpu")
    if not pred.has_input_check:
        print(json.dumps({"error": f"{args.run}: no input check"}))
        return 2
    mapping = {}
    for spec in args.classes:
        name, _, members = spec.partition("=")
        for m in members.split(","):
            mapping[m.strip()] = name.strip()
    res: dict = {"run": str(args.run), "threshold": pred.input_check.threshold,
                 "min_confidence": pred.input_check.min_confidence}
    with tempfile.TemporaryDirectory() as tmp:
        items = non_brain_corpus(seed=args.seed)
        paths = write_corpus(items, tmp)
        kind = {str(p): it.kind for p, it in zip(paths, items, strict=True)}
        name = {str(p): it.name for p, it in zip(paths, items, strict=True)}
        rows = _assess(pred, paths)
        by_kind = {}
        for k in sorted(set(kind.values())):
            by_kind[k] = _shares([r for r in rows if kind[r.path] == k])
        missed = [{"name": name[r.path], "kind": kind[r.path], "ood_score": r.ood_score, "label": r.label}
                  for r in rows if r.verdict not in ("not_brain_mri", "unfamiliar")]
        res["non_brain"] = dict(_shares(rows), by_kind=by_kind, missed=missed,
                                unreadable=len(paths) - len(rows),
                                score_quantiles=np.percentile([r.ood_score for r in rows],
                                                              [1, 5, 50]).round(3).tolist())
    split = Path(args.run) / "split.csv"
    if split.is_file():
        val = [r for r in csv.DictReader(split.open()) if r.get("subset") not in ("train",)]
        truth = {r["path"]: r["label"] for r in val}
        rows = _assess(pred, [r["path"] for r in val])
        res["validation"] = dict(_shares(rows), **_accuracy(rows, truth, {}),
                                 held_out_half=_split_half(rows, pred.input_check.quantile, args.seed))
    res["brain"] = {}
    for spec in args.brain:
        nm, _, folder = spec.partition("=")
        files = _files(Path(folder), args.limit, args.seed)
        rows = _assess(pred, files)
        entry = _shares(rows)
        truth = {str(p): mapping.get(p.parent.name, p.parent.name) for p in files}
        classes_known = set(mapping.values()) | set(pred.classes)
        if all(t in classes_known for t in truth.values()):
            entry.update(_accuracy(rows, truth, mapping))
        entry["score_quantiles"] = np.percentile([r.ood_score for r in rows if r.ood_score is not None],
                                                 [50, 95, 99]).round(3).tolist()
        res["brain"][nm] = entry
    lat_paths = [Path(r) for r in list(truth)[: args.latency_images]] if split.is_file() else []
    if lat_paths:
        res["latency_ms"] = {"torch": _latency(pred, lat_paths, 3)}
        if not args.no_onnx:
            try:
                onnx = load_predictor(args.run, backend="onnx")
                res["latency_ms"]["onnxruntime"] = _latency(onnx, lat_paths, 3)
            except Exception as exc:  # noqa: BLE001 - the benchmark reports what it could not measure
                res["latency_ms"]["onnxruntime"] = f"not measured: {exc}"
    json.dump(res, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
