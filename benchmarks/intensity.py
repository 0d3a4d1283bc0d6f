"""Does per-image intensity standardisation (``intensity="percentile"``) help? Frozen features, then fine-tuning.

    python benchmarks/intensity.py DATA_DIR [--repeats 10] [--folds 5] [--seed 0] [--finetune]

1. Frozen ImageNet features (~2 min): the backbone's pooled features of every image, prepared without and with
   :func:`braintumor.preprocess.standardise_intensity`; a standardised logistic regression scored by repeated
   group-aware stratified k-fold (the package's :func:`braintumor.data.split.kfold` over the audit's duplicate
   groups). The same folds for both, so the comparison is paired; per fold, how often each one wins.
2. ``--finetune`` (~40 min on 2 cores): the package's :func:`braintumor.crossval.cv` of the full default recipe, once
   with each setting, same folds and seeds.

Prints one JSON object; writes nothing else (cross-validation folds live in a temporary folder).

Measured on Navoneel's set (2 cores, 33 s): frozen features, accuracy 0.855 (none) vs 0.866 (percentile), ROC-AUC
0.917 vs 0.934, better in 52% of 50 folds and worse in 20%; fine-tuned (5-fold CV, seed 0), accuracy 0.877 vs 0.877,
ROC-AUC 0.932 vs 0.938: what helps a linear read-out of frozen features, the fine-tuned network learns on its own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit, machine  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from braintumor.config import TrainConfig  # noqa: E402
from braintumor.crossval import cv  # noqa: E402
from braintumor.data.cache import load_images  # noqa: E402
from braintumor.data.discover import discover  # noqa: E402
from braintumor.data.split import kfold  # noqa: E402
from braintumor.models import build_model, get_spec  # noqa: E402
from braintumor.preprocess import Preprocessor  # noqa: E402
from braintumor.training import group_folder  # noqa: E402

MODES = ("none", "percentile")


def frozen_features(paths, model_name: str, img_size: int, intensity: str) -> np.ndarray:
    spec = get_spec(model_name)
    model = build_model(model_name, 2).eval().to(memory_format=torch.channels_last)
    pre = Preprocessor(img_size=img_size, mean=spec.mean, std=spec.std, crop_detect_side=256, intensity=intensity)
    x = load_images(paths, pre).images
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), 32):
            f = model.backbone(pre.normalise(x[i:i + 32]).contiguous(memory_format=torch.channels_last))
            out.append(f.mean((2, 3)))
    return torch.cat(out).numpy()


def linear_cv(feats: np.ndarray, y: np.ndarray, groups, folds: int, repeats: int, seed: int):
    accs, aucs = [], []
    for _r, _f, tr, te in kfold(y, groups, folds, repeats, seed):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.03, max_iter=2000)).fit(feats[tr], y[tr])
        p = clf.predict_proba(feats[te])[:, 1]
        accs.append(float(np.mean((p > 0.5) == y[te])))
        aucs.append(float(roc_auc_score(y[te], p)))
    return np.array(accs), np.array(aucs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="labelled folder with two classes (one sub-folder each)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10, help="repeats of the k-fold for the frozen-feature part")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--finetune", action="store_true", help="also cross-validate the full recipe with each setting")
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    ds = group_folder(discover(args.data), TrainConfig(data_dir=args.data))
    if len(ds.classes) != 2:
        sys.exit(f"{args.data}: this benchmark needs two classes, found {len(ds.classes)}")
    y = np.asarray(ds.labels)
    t0 = time.time()
    frozen = {}
    scores = {m: linear_cv(frozen_features(ds.paths, args.model, args.img_size, m), y, ds.groups, args.folds,
                           args.repeats, args.seed) for m in MODES}
    for m, (acc, auc) in scores.items():
        frozen[m] = {"accuracy": round(acc.mean(), 4), "accuracy_sd": round(acc.std(ddof=1), 4),
                     "roc_auc": round(auc.mean(), 4)}
    d = scores["percentile"][0] - scores["none"][0]
    frozen["paired"] = {"accuracy_gain": round(d.mean(), 4), "folds_better": round(float(np.mean(d > 0)), 3),
                        "folds_worse": round(float(np.mean(d < 0)), 3), "n_folds": len(d)}
    result = {"benchmark": "intensity", "data": str(args.data), "model": args.model, "img_size": args.img_size,
              "machine": machine(), "frozen_features": frozen, "frozen_seconds": round(time.time() - t0, 1)}
    if args.finetune:
        tuned = {}
        with tempfile.TemporaryDirectory() as tmp:
            for m in MODES:
                t1 = time.time()
                res = cv(args.data, folds=args.folds, seed=args.seed, out=Path(tmp) / m, report=False,
                         model=args.model, img_size=args.img_size, intensity=m)
                tuned[m] = {k: round(res.summary[k]["mean"], 4) for k in ("accuracy", "roc_auc", "sensitivity",
                                                                           "specificity")}
                tuned[m]["accuracy_per_fold"] = [round(f["accuracy"], 4) for f in res.folds]
                tuned[m]["seconds"] = round(time.time() - t1, 1)
        result["finetuned_cv"] = tuned
    emit(result)


if __name__ == "__main__":
    main()
