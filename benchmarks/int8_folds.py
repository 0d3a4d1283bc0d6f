"""INT8 against FP32 on the held-out folds of a ``braintumor cv`` run: every image judged by the fold that never saw it.

    python benchmarks/int8_folds.py CV_DIR

A run's own INT8 bar (``braintumor export RUN --int8``) is measured on its validation split; on a small data set
that is a few dozen images, and one flipped label decides it. Here each fold's run is copied to a temporary folder,
quantised exactly as ``export --int8`` does (same calibration and recipe choice; the bar set aside so that the
INT8 file is always kept), and both models predict the fold's held-out images (``folds/*/test/predictions.csv``).
Prints one JSON object: per fold and pooled, identical labels, accuracy FP32 and INT8, the largest probability
difference, the recipe chosen, and what the run's own bar saw on its validation split. Nothing is written to
``CV_DIR``.
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
    out, tot = [], {"n": 0, "agree": 0, "ok32": 0, "ok8": 0}
    for fold in folds:
        paths, truth = fold_rows(fold)
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / fold.name
            shutil.copytree(fold, run)
            q = quantize_run(run, bar={"min_label_agreement": 0.0, "max_accuracy_drop": 1.0})
            p32 = load_predictor(run, device="cpu", backend="onnx", precision="fp32").predict_paths(paths)
            p8 = load_predictor(run, device="cpu", backend="onnx", precision="int8").predict_paths(paths)
        l32, l8 = [r.label for r in p32], [r.label for r in p8]
        n = len(paths)
        agree = sum(a == b for a, b in zip(l32, l8, strict=True))
        ok32 = sum(a == t for a, t in zip(l32, truth, strict=True))
        ok8 = sum(a == t for a, t in zip(l8, truth, strict=True))
        diff = max((abs(a.probabilities[c] - b.probabilities[c]) for a, b in zip(p32, p8, strict=True) if a.ok and b.ok
                    for c in a.probabilities), default=0.0)
        out.append({"fold": fold.name, "images": n, "identical_labels": round(agree / n, 4),
                    "accuracy_fp32": round(ok32 / n, 4), "accuracy_int8": round(ok8 / n, 4),
                    "max_abs_diff": round(diff, 4), "recipe": q.recipe,
                    "own_bar": {"validation_images": q.n_validation, "identical_labels": round(q.label_agreement, 4)}})
        for k, v in (("n", n), ("agree", agree), ("ok32", ok32), ("ok8", ok8)):
            tot[k] += v
    n = tot["n"]
    emit({"benchmark": "int8_folds", "machine": machine(), "cv_dir": args.cv_dir, "folds": out,
          "pooled": {"images": n, "identical_labels": round(tot["agree"] / n, 4),
                     "flipped": n - tot["agree"], "accuracy_fp32": round(tot["ok32"] / n, 4),
                     "accuracy_int8": round(tot["ok8"] / n, 4)}})


if __name__ == "__main__":
    main()
