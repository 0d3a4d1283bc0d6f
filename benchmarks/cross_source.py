"""Which levers make a tumour detector hold up on a source it never saw? Leave-one-source-out, lever by lever.

    python benchmarks/cross_source.py SOURCE [SOURCE...] [--levers none,mri,percentile,balance] [--out DIR]
        [--img-size 128] [--epochs-frozen 1] [--epochs 7] [--lr 3e-4] [--model efficientnet-lite0]

Every lever runs the package's :func:`braintumor.crossval.cv` with ``by_source=True`` over the same sources, folds and
seeds, so each comparison with ``none`` (the plain recipe) is paired. The class map is the tumour-detector recipe's
(``glioma, meningioma, pituitary, yes`` -> tumour; ``notumor, no`` -> no_tumour). Levers: ``mri``
(``mri_augment``), ``percentile`` (``intensity="percentile"``), ``balance`` (``balance_sources``: a no-op with two
sources, where every model trains on one), ``lite2`` (``model="efficientnet-lite2"``), ``224`` (``img_size=224``).

Prints one JSON object: per lever and held-out source, n, balanced accuracy (95% CI), sensitivity, specificity and
ROC-AUC, and each lever's difference from ``none``. Each lever's folder (runs, ``cv.json``, ``report.html``) stays
under ``--out`` (default: a temporary folder, removed).

Measured (README "Across sources"; 2-core CPU with bf16, ~10-25 min per lever for Nickparvar Training + Navoneel):
``python benchmarks/cross_source.py ../shared/data/brain_tumor_mri_4class/Training ../shared/data/brain_mri_yes_no``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, machine  # noqa: E402

from braintumor.config import TrainConfig  # noqa: E402
from braintumor.crossval import cv  # noqa: E402

LEVERS = {"none": {}, "mri": {"mri_augment": True}, "percentile": {"intensity": "percentile"},
          "balance": {"balance_sources": True}, "lite2": {"model": "efficientnet-lite2"}, "224": {"img_size": 224}}


def summarise(res) -> dict:
    out = {}
    for r in res.rows:
        if r["kind"] != "cross":
            continue
        m, ci = r["metrics"], r["ci"].get("balanced_accuracy") or {}
        out[r["tested_on"]] = {"n": r["n"], "balanced_accuracy": m["balanced_accuracy"],
                               "ba_low": ci.get("low"), "ba_high": ci.get("high"),
                               "sensitivity": m.get("sensitivity"), "specificity": m.get("specificity"),
                               "roc_auc": m.get("roc_auc"), "copies_excluded": r.get("copies_excluded"),
                               "copies_excluded_from": r.get("copies_excluded_from")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--levers", default="none,mri,percentile")
    ap.add_argument("--out", default=None)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs-frozen", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--model", default="efficientnet-lite0")
    args = ap.parse_args()
    missing = [s for s in args.sources if not Path(s).is_dir()]
    if missing:
        emit({"skipped": f"no such folder: {missing}"})
        return
    levers = [x.strip() for x in args.levers.split(",") if x.strip()]
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        ap.error(f"unknown lever(s) {unknown}; known: {', '.join(LEVERS)}")
    base = TrainConfig.recipe("tumour-detector", img_size=args.img_size, epochs_frozen=args.epochs_frozen,
                              epochs=args.epochs, lr=args.lr, model=args.model)
    tmp = tempfile.TemporaryDirectory() if args.out is None else None
    root = Path(args.out or tmp.name)
    results, seconds = {}, {}
    for lever in levers:
        t0 = time.time()
        res = cv(list(args.sources), by_source=True, config=base, out=root / lever, **LEVERS[lever])
        results[lever] = summarise(res)
        seconds[lever] = round(time.time() - t0)
    diff = {lever: {src: {k: round(v[k] - results["none"][src][k], 4) for k in ("balanced_accuracy", "sensitivity",
                                                                              "specificity", "roc_auc")
                          if v.get(k) is not None and results["none"][src].get(k) is not None}
                    for src, v in res_.items() if src in results.get("none", {})}
            for lever, res_ in results.items() if lever != "none" and "none" in results}
    emit({"machine": machine(), "sources": args.sources, "recipe": {"img_size": args.img_size, "model": args.model,
          "epochs_frozen": args.epochs_frozen, "epochs": args.epochs, "lr": args.lr},
          "cross_source": results, "difference_from_none": diff, "seconds": seconds})
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
