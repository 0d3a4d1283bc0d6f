"""Which weights to keep from a run: lowest validation loss, last epoch, or averages (SWA), with and without flip TTA.

    python benchmarks/weights_kept.py DATA_DIR [--folds 5] [--seed 0] [--epochs 12] [--epochs-frozen 6]
                                      [--img-size 224] [--model efficientnet-lite0] [--init-from RUN]

Runs the package's group-aware cross-validation (:func:`braintumor.crossval.cv`) once, keeping every epoch's weights of
every fold, then scores each choice of weights on the same test folds: ``lowest_val_loss`` (the epoch picked on the
inner validation split; the choice with ``swa=False``), ``last``, ``frozen_end``, ``swa_second_half`` (the default
since 0.2.0: the mean of the second half of the last phase), ``swa_all``, ``swa_last3``, each also with horizontal
flip test-time augmentation (``+flip``: the mean of the probabilities of the image and its mirror). One training per
fold serves all choices, so the comparison is paired.

Prints one JSON object (per choice: accuracy mean and sd over folds, ROC-AUC mean, log-loss mean, pooled accuracy)
and writes nothing else (the folds live in a temporary folder).

Measured on Navoneel's set (defaults, 2 cores, 22 min): lowest_val_loss 0.850 (sd 0.052), last 0.866,
swa_second_half 0.877 (sd 0.017), flip TTA within +/-0.008 of each.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit, machine  # noqa: E402

from braintumor.crossval import cv  # noqa: E402
from braintumor.data.cache import load_images  # noqa: E402
from braintumor.inference import Predictor  # noqa: E402
from braintumor.rundir import RunDir  # noqa: E402
from braintumor.training import add_to_average, averaged_state  # noqa: E402


def keep_every_epoch() -> None:
    """Also write each epoch's weights next to last.pt (``ep01.pt``...)."""
    orig = RunDir.save_checkpoint

    def save(self, path, state):
        orig(self, path, state)
        if path == self.last:
            torch.save(state["model"], Path(path).parent / f"ep{len(state['history']):02d}.pt")

    RunDir.save_checkpoint = save


def mean_state(states: list[dict]) -> dict:
    """The training loop's own weight average (``swa``) of these state dicts."""
    swa = None
    for i, state in enumerate(states):
        swa = add_to_average(swa, state, i)
    return averaged_state(swa, states[-1])


def choices(fold: Path) -> dict[str, dict]:
    hist = list(csv.DictReader(open(fold / "history.csv")))
    last_phase = hist[-1]["phase"]
    main = [int(h["epoch"]) for h in hist if h["phase"] == last_phase]
    first = [int(h["epoch"]) for h in hist if h["phase"] != last_phase]
    ck = fold / "checkpoints"

    def load(e: int) -> dict:
        return torch.load(ck / f"ep{e:02d}.pt", map_location="cpu")

    # best.pt: the lowest-validation-loss epoch (the cross-validation below runs with swa=False)
    out = {"lowest_val_loss": RunDir(fold).load_checkpoint("best")["model"], "last": load(main[-1])}
    if first:
        out["frozen_end"] = load(first[-1])
    out["swa_second_half"] = mean_state([load(e) for e in main[len(main) // 2:]])
    out["swa_all"] = mean_state([load(e) for e in main])
    out["swa_last3"] = mean_state([load(e) for e in main[-3:]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="labelled folder (one sub-folder per class)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--epochs-frozen", type=int, default=6)
    ap.add_argument("--init-from", default=None)
    args = ap.parse_args()
    from sklearn.metrics import log_loss, roc_auc_score

    keep_every_epoch()
    t0 = time.time()
    scores: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cv(args.data, folds=args.folds, seed=args.seed, out=Path(tmp) / "cv", report=False, model=args.model,
           img_size=args.img_size, epochs=args.epochs, epochs_frozen=args.epochs_frozen, init_from=args.init_from,
           swa=False)
        for fold in sorted((Path(tmp) / "cv" / "folds").iterdir()):
            pred = Predictor.from_run(fold)
            rows = list(csv.DictReader(open(fold / "test" / "predictions.csv")))
            y = np.array([pred.classes.index(r["label"]) for r in rows])
            x = load_images([r["path"] for r in rows], pred.preprocessor).images
            mirrored = np.ascontiguousarray(x[:, :, ::-1])
            for name, state in choices(fold).items():
                pred.model.load_state_dict(state)
                p = pred.proba_prepared(x)
                scores.setdefault(name, []).append((y, p))
                scores.setdefault(name + "+flip", []).append((y, (p + pred.proba_prepared(mirrored)) / 2))
    result = {}
    for name, folds in scores.items():
        acc = [float(np.mean(p.argmax(1) == y)) for y, p in folds]
        auc = [float(roc_auc_score(y, p[:, 1])) if p.shape[1] == 2 else
               float(roc_auc_score(y, p, multi_class="ovr")) for y, p in folds]
        ys, ps = np.concatenate([y for y, _ in folds]), np.concatenate([p for _, p in folds])
        result[name] = {"accuracy_mean": round(float(np.mean(acc)), 4),
                        "accuracy_sd": round(float(np.std(acc, ddof=1)), 4) if len(acc) > 1 else None,
                        "roc_auc_mean": round(float(np.mean(auc)), 4),
                        "log_loss_mean": round(float(np.mean([log_loss(y, p, labels=list(range(p.shape[1])))
                                                              for y, p in folds])), 4),
                        "pooled_accuracy": round(float(np.mean(ps.argmax(1) == ys)), 4)}
    emit({"benchmark": "weights_kept", "data": str(args.data), "folds": args.folds, "seed": args.seed,
          "model": args.model, "img_size": args.img_size, "seconds": round(time.time() - t0, 1),
          "machine": machine(), "results": result})


if __name__ == "__main__":
    main()
