"""INT8 against FP32 on the held-out folds of a ``braintumor cv`` run: every image judged by the fold that never saw it.

    python benchmarks/int8_folds.py CV_DIR

A run's own INT8 bar (``braintumor export RUN --int8``) is measured on its validation split; on a small data set
that is a few dozen images, and one flipped label decides it. Here each fold's run is copied to a temporary folder
and quantised twice: exactly as ``export --int8`` does (``product``: what ``predict`` then uses: INT8, INT8 with
its FP32 guard, or FP32 when the check failed) and with the bar set aside so that INT8 alone is always kept
(``raw``). Each predicts the fold's held-out images (``folds/*/test/predictions.csv``) beside FP32. Prints one JSON
object: per fold and pooled, identical labels and accuracy of each, the largest raw probability difference, the
recipe, the guard's band and the share of images it sent to FP32, and what the run's own bar saw on its validation
split. Nothing is written to ``CV_DIR``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, machine  # noqa: E402

from braintumor.backends import load_predictor  # noqa: E402
from braintumor.quantize import quantize_run  # noqa: E402


def fold_rows(fold: Path) -> tuple[list[str], list[str]]:
    rows = list(csv.DictReader(open(fold / "test" / "predictions.csv", newline="")))
    return [r["path"] for r in rows], [r["label"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cv_dir")
    args = ap.parse_args()
    folds_dir = Path(args.cv_dir) / "folds"
    folds = sorted(p for p in folds_dir.iterdir() if (p / "test" / "predictions.csv").is_file()) \
        if folds_dir.is_dir() else []
    if not folds:
        raise SystemExit(f"{args.cv_dir}: no folds/*/test/predictions.csv (a finished `braintumor cv` run?)")
    out, tot = [], {"n": 0, "raw": 0, "product": 0, "ok32": 0, "ok_raw": 0, "ok_product": 0, "guarded": 0}
    for fold in folds:
        paths, truth = fold_rows(fold)
        with tempfile.TemporaryDirectory() as tmp:
            run, raw_run = Path(tmp) / fold.name, Path(tmp) / "raw"
            shutil.copytree(fold, run)
            shutil.copytree(fold, raw_run)
            q = quantize_run(run)  # as `braintumor export RUN --int8`
            qr = quantize_run(raw_run, bar={"min_label_agreement": 0.0, "max_accuracy_drop": 1.0})
            p32 = load_predictor(run, device="cpu", backend="onnx", precision="fp32").predict_paths(paths)
            product = load_predictor(run, device="cpu", backend="onnx")  # INT8 (maybe guarded) or FP32
            pp = product.predict_paths(paths)
            p8 = load_predictor(raw_run, device="cpu", backend="onnx", precision="int8").predict_paths(paths)
        l32, l8, lp = [r.label for r in p32], [r.label for r in p8], [r.label for r in pp]
        n = len(paths)
        counts = {"n": n, "raw": sum(a == b for a, b in zip(l32, l8, strict=True)),
                  "product": sum(a == b for a, b in zip(l32, lp, strict=True)),
                  "ok32": sum(a == t for a, t in zip(l32, truth, strict=True)),
                  "ok_raw": sum(a == t for a, t in zip(l8, truth, strict=True)),
                  "ok_product": sum(a == t for a, t in zip(lp, truth, strict=True)),
                  "guarded": getattr(product, "guarded", 0)}
        diff = max((abs(a.probabilities[c] - b.probabilities[c]) for a, b in zip(p32, p8, strict=True) if a.ok and b.ok
                    for c in a.probabilities), default=0.0)
        used = (getattr(product, "precision", "fp32") + (" + FP32 guard" if getattr(product, "guard", None) else ""))
        out.append({"fold": fold.name, "images": n, "accuracy_fp32": round(counts["ok32"] / n, 4),
                    "raw": {"identical_labels": round(counts["raw"] / n, 4),
                            "accuracy_int8": round(counts["ok_raw"] / n, 4), "max_abs_diff": round(diff, 4),
                            "recipe": qr.recipe},
                    "product": {"uses": used, "identical_labels": round(counts["product"] / n, 4),
                                "accuracy": round(counts["ok_product"] / n, 4), "guard_band": q.guard_band,
                                "guarded_share": round(counts["guarded"] / n, 4)},
                    "own_bar": {"validation_images": q.n_validation, "passed": q.passed,
                                "identical_labels_raw": q.raw_label_agreement,
                                "identical_labels": round(q.label_agreement, 4)}})
        for k, v in counts.items():
            tot[k] += v
    n = tot["n"]
    emit({"benchmark": "int8_folds", "machine": machine(), "cv_dir": args.cv_dir, "folds": out,
          "pooled": {"images": n, "accuracy_fp32": round(tot["ok32"] / n, 4),
                     "raw": {"identical_labels": round(tot["raw"] / n, 4), "flipped": n - tot["raw"],
                             "accuracy_int8": round(tot["ok_raw"] / n, 4)},
                     "product": {"identical_labels": round(tot["product"] / n, 4), "flipped": n - tot["product"],
                                 "accuracy": round(tot["ok_product"] / n, 4),
                                 "guarded_share": round(tot["guarded"] / n, 4)}}})


if __name__ == "__main__":
    main()
