"""Explanation quality on synthetic phantoms, per registered model: localisation, faithfulness, sanity.

    python benchmarks/explain_quality.py [--models cnn,resnet18] [--size 96] [--train 320] [--test 100]
                                         [--epochs 12] [--methods gradcam,gradcam++] [--threads 2]

For every model: write phantoms (with lesion masks) into a temporary folder, train briefly with the package's own
``train`` (random init for the MONAI nets, which have no offline weights; efficientnet-lite0 fine-tunes its bundled
ImageNet weights in two phases), then explain the tumour phantoms of an independent test set for the class
``yes`` at the registry's Grad-CAM layer and report:

* ``pointing_game``: map peak strictly inside the lesion mask, over correctly classified tumour phantoms
  (``pointing_game_tolerant``: within 15/224 of the side; ``chance``: mean lesion area fraction);
* ``iou``: the map thresholded at 0.5 against the mask;
* ``deletion_auc`` vs ``random_deletion_auc`` (lower = more faithful) and the insertion AUCs;
* ``randomisation_spearman``: mean |Spearman| between the maps of the trained model and of a copy with every layer
  re-initialised (Adebayo et al. 2018; lower = the map depends on what the model learned), plus the signed mean and
  the number of randomised maps that came out constant (counted as 0).

Prints one JSON object and writes nothing else (everything lives in a temporary folder).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit, machine  # noqa: E402

from braintumor.config import TrainConfig  # noqa: E402
from braintumor.data.discover import list_images  # noqa: E402
from braintumor.data.read import read_image  # noqa: E402
from braintumor.data.synthetic import mask_path, write_phantoms  # noqa: E402
from braintumor.explain import (  # noqa: E402
    deletion_insertion,
    heatmap_iou,
    heatmaps,
    load_mask,
    pointing_game,
    prepare_mask,
    random_maps,
    randomisation_check,
    target_layer,
)
from braintumor.explain.metrics import standard_tolerance  # noqa: E402
from braintumor.explain.saliency import feature_grid  # noqa: E402
from braintumor.models import available_models, get_spec  # noqa: E402
from braintumor.train import train  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_test_set(predictor, folder: Path) -> dict:
    yes_paths, no_paths = list_images(folder / "yes"), list_images(folder / "no")
    raws = [read_image(p) for p in yes_paths]
    prepared = np.stack([predictor.preprocessor.prepare(r) for r in raws])
    masks = np.stack([prepare_mask(predictor.preprocessor, r, load_mask(mask_path(p)))
                      for p, r in zip(yes_paths, raws, strict=True)])
    no_prepared = np.stack([predictor.preprocessor.prepare(read_image(p)) for p in no_paths])
    yes_labels = predictor.labels_from_proba(predictor.proba_prepared(prepared))
    no_labels = predictor.labels_from_proba(predictor.proba_prepared(no_prepared))
    correct = np.array([lab == "yes" for lab in yes_labels])
    accuracy = (correct.sum() + sum(lab == "no" for lab in no_labels)) / (len(yes_labels) + len(no_labels))
    return dict(prepared=prepared, masks=masks, correct=correct, accuracy=float(accuracy))


def method_scores(predictor, ts: dict, method: str, steps: int, n_deletion: int, n_random: int, seed: int) -> dict:
    yes = predictor.classes.index("yes")
    sel = np.flatnonzero(ts["correct"])
    out: dict = {"n": int(len(sel))}
    if len(sel) == 0:
        return out
    x, masks = ts["prepared"][sel], ts["masks"][sel]
    maps = heatmaps(predictor, x, [yes] * len(sel), method)
    side = x.shape[1]
    out["pointing_game"] = float(np.mean([pointing_game(m, k) for m, k in zip(maps, masks, strict=True)]))
    out["pointing_game_tolerant"] = float(np.mean([pointing_game(m, k, standard_tolerance(side))
                                                   for m, k in zip(maps, masks, strict=True)]))
    out["chance"] = float(masks.mean())
    out["iou"] = float(np.mean([heatmap_iou(m, k) for m, k in zip(maps, masks, strict=True)]))
    d = slice(0, n_deletion)
    n = len(maps[d])
    cam = deletion_insertion(predictor.proba_prepared, x[d], maps[d], [yes] * n, steps=steps, seed=seed)
    rnd = deletion_insertion(predictor.proba_prepared, x[d], random_maps(n, side, seed + 1), [yes] * n,
                             steps=steps, seed=seed)
    out.update(deletion_auc=float(cam["deletion"].mean()), random_deletion_auc=float(rnd["deletion"].mean()),
               insertion_auc=float(cam["insertion"].mean()), random_insertion_auc=float(rnd["insertion"].mean()),
               deletion_n=n)
    r = slice(0, n_random)
    rho, constant = randomisation_check(predictor, x[r], [yes] * len(maps[r]), method, maps=maps[r], seed=seed,
                                        return_constant=True)
    out.update(randomisation_spearman=float(np.mean(np.abs(rho))), randomisation_spearman_signed=float(rho.mean()),
               randomised_constant_maps=int(constant.sum()), randomisation_n=int(len(rho)))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(available_models()))
    ap.add_argument("--size", type=int, default=96, help="phantom side and model input size (px)")
    ap.add_argument("--train", type=int, default=400, help="training phantoms (20%% of them validate)")
    ap.add_argument("--test", type=int, default=100, help="independent test phantoms (half with a tumour)")
    ap.add_argument("--epochs", type=int, default=24, help="epochs from scratch (pretrained: 2 frozen + half)")
    ap.add_argument("--methods", default="gradcam,gradcam++")
    ap.add_argument("--steps", type=int, default=10, help="deletion/insertion steps")
    ap.add_argument("--deletion-images", type=int, default=24)
    ap.add_argument("--randomisation-images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="explain_quality_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_phantoms(tmp / "train", n=args.train, size=args.size, seed=args.seed)
        write_phantoms(tmp / "test", n=args.test, size=args.size, seed=args.seed + 123)
        phantom_s = time.perf_counter() - t0
        for name in args.models.split(","):
            spec = get_spec(name)
            pretrained = spec.pretrained_default
            epochs = dict(epochs_frozen=2, epochs=max(1, args.epochs // 2)) if pretrained else dict(epochs=args.epochs)
            cfg = TrainConfig(data_dir=str(tmp / "train"), model=name, img_size=args.size, batch_size=32,
                              seed=args.seed, num_threads=args.threads, **epochs)
            t0, c0 = time.perf_counter(), cpu_seconds()
            result = train(cfg, out=tmp / "runs" / name)
            row = {"model": name, "pretrained": bool(pretrained), **epochs,
                   "train_seconds": round(time.perf_counter() - t0, 1),
                   "train_cpu_seconds": round(cpu_seconds() - c0, 1),
                   "val_accuracy": round(float(result.metrics.get("accuracy", float("nan"))), 4)}
            predictor = result.predictor()
            layer = target_layer(predictor)
            row["target_layer"] = layer
            row["map_grid"] = list(feature_grid(predictor.model, layer, args.size))
            t0, c0 = time.perf_counter(), cpu_seconds()
            ts = load_test_set(predictor, tmp / "test")
            row["test_accuracy"] = round(ts["accuracy"], 4)
            row["tumour_correct"] = f"{int(ts['correct'].sum())}/{len(ts['correct'])}"
            for method in args.methods.split(","):
                row[method] = method_scores(predictor, ts, method, args.steps, args.deletion_images,
                                            args.randomisation_images, args.seed)
            row["eval_seconds"] = round(time.perf_counter() - t0, 1)
            row["eval_cpu_seconds"] = round(cpu_seconds() - c0, 1)
            rows.append(row)
            print(f"{name}: done", file=sys.stderr, flush=True)
    emit({"benchmark": "explain_quality", "machine": machine(),
          "settings": {k: getattr(args, k) for k in ("size", "train", "test", "epochs", "steps", "deletion_images",
                                                     "randomisation_images", "seed")},
          "phantom_seconds": round(phantom_s, 1), "results": rows})


if __name__ == "__main__":
    main()
