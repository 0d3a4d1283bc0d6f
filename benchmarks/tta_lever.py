"""Mirror test-time augmentation as a cross-source lever, paired: each held-out source of a ``cv --by-source`` run
scored by the same fold model with and without ``--tta``.

    python benchmarks/tta_lever.py CV_DIR

For every ``CV_DIR/folds/<fold>/test/predictions.csv`` (the images that fold's model never saw, cross-source copies
already removed) the fold's model predicts the same images twice, plain and with mirror TTA
(:attr:`braintumor.inference.Predictor.tta`), on onnxruntime FP32 where installed. Prints one JSON object: per fold,
balanced accuracy, sensitivity, specificity and ROC-AUC of the class head, and for runs trained with masks the tumour
map as a detector and the "head or map" rule (``evaluate``'s ``tumour_map`` block), each plain and with TTA.
Nothing is written to ``CV_DIR``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, machine  # noqa: E402


def _scores(pred, loaded, y, tta: bool) -> dict:
    from braintumor.evaluation import _predicted, checks_and_maps, map_detection_metrics, model_pass
    from braintumor.metrics import classification_metrics

    pred.tta = tta
    _, mapped = checks_and_maps(pred)
    got = model_pass(pred, loaded, checked=False, mapped=mapped)
    m = classification_metrics(y, got.proba, pred.classes, pred.positive_class, pred.threshold)
    out = {k: None if m.get(k) is None else round(float(m[k]), 4)
           for k in ("balanced_accuracy", "sensitivity", "specificity", "roc_auc", "accuracy")}
    if len(set(y)) < 2:  # a one-class source (figshare: tumours only) has no specificity, as in cv.json
        out["specificity"] = out["balanced_accuracy"] = out["roc_auc"] = None
    if mapped:
        tm = map_detection_metrics(y, pred.classes, got.map_max, got.found,
                                   _predicted(m, got.proba, pred.classes, pred.threshold))
        out["map"] = tm.get("detector") or tm["per_class"]
        out["head_or_map"] = tm.get("head_or_map")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cv_dir")
    args = ap.parse_args()
    from braintumor.backends import load_predictor
    from braintumor.data.cache import load_images

    folds = sorted(p.parent.parent for p in Path(args.cv_dir).glob("folds/*/test/predictions.csv"))
    if not folds:
        raise SystemExit(f"{args.cv_dir}: no folds/*/test/predictions.csv (a finished `braintumor cv` run?)")
    out = []
    for fold in folds:
        rows = list(csv.DictReader(open(fold / "test" / "predictions.csv", newline="")))
        pred = load_predictor(fold, device="cpu", backend="auto", precision="fp32")
        loaded = load_images([r["path"] for r in rows], pred.preprocessor)
        y = [pred.classes.index(rows[i]["label"]) for i in loaded.kept]
        out.append({"fold": fold.name, "images": len(y), "plain": _scores(pred, loaded, y, False),
                    "tta": _scores(pred, loaded, y, True)})
    emit({"benchmark": "tta_lever", "machine": machine(), "cv_dir": args.cv_dir, "folds": out})


if __name__ == "__main__":
    main()
