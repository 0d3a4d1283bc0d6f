"""The tumour map's threshold as a cross-source lever: chosen on the run's own validation split, scored on another
source.

    python benchmarks/map_threshold.py RUN --data ../shared/data/brain_mri_yes_no [--tta]

``evaluate`` scores a masked run's map as a detector at a fixed threshold (0.5: a connected region of the map at or
above it, specks dropped, as ``predict --outline``). Here the threshold on the map's maximum is instead chosen
on the run's validation split (``split.csv``, its ``val`` rows: the training sources, never the data scored), by
two rules: the one that maximises balanced accuracy there (Youden), and the lowest one that keeps validation
specificity >= ``--val-specificity`` (default 0.99). Both are then applied to every image under ``--data``
(labelled by folder: a folder named like a negative, e.g. ``no``, ``notumor``, ``no_tumour``, is no tumour; any
other is a tumour), beside the fixed rule. Nothing is chosen on ``--data``. Prints one JSON object; writes nothing
but the run's ONNX export, made on demand as ``evaluate`` makes it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, machine  # noqa: E402


def _maps(pred, paths, batch_size: int = 32) -> tuple[list[int], np.ndarray, np.ndarray]:
    from braintumor.data.cache import load_images
    from braintumor.evaluation import model_pass

    kept, mx, found = [], [], []
    for start in range(0, len(paths), 256):
        loaded = load_images(paths[start:start + 256], pred.preprocessor)
        got = model_pass(pred, loaded, checked=False, mapped=True, batch_size=batch_size)
        kept += [start + i for i in loaded.kept]
        mx += got.map_max
        found += got.found
    return kept, np.asarray(mx), np.asarray(found, bool)


def _rates(is_tumour: np.ndarray, said: np.ndarray) -> dict:
    sens = float(said[is_tumour].mean()) if is_tumour.any() else None
    spec = float((~said[~is_tumour]).mean()) if (~is_tumour).any() else None
    bal = None if sens is None or spec is None else (sens + spec) / 2
    return {k: None if v is None else round(v, 4) for k, v in
            (("sensitivity", sens), ("specificity", spec), ("balanced_accuracy", bal))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run folder trained with --masks")
    ap.add_argument("--data", type=Path, required=True, help="folder of class folders to score (another source)")
    ap.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    ap.add_argument("--val-specificity", type=float, default=0.99, help="the second rule's validation specificity")
    args = ap.parse_args()

    from braintumor.backends import load_predictor
    from braintumor.data.classes import NEGATIVE_NAMES
    from braintumor.data.discover import list_images
    from braintumor.outline import THRESHOLD

    pred = load_predictor(args.run)
    if not getattr(pred, "has_tumour_map", False):
        sys.exit(f"{args.run}: not trained with --masks (no tumour map)")
    pred.tta = args.tta
    negative = {c for c in pred.classes if c.lower() in NEGATIVE_NAMES}

    with open(args.run / "split.csv", newline="") as f:
        val = [r for r in csv.DictReader(f) if r["subset"] == "val"]
    vkept, vmax, vfound = _maps(pred, [r["path"] for r in val])
    vy = np.asarray([val[i]["label"] not in negative for i in vkept])

    folders = sorted(p for p in args.data.iterdir() if p.is_dir())
    paths, ty = [], []
    for d in folders:
        files = list_images(d)
        paths += files
        ty += [d.name.lower() not in NEGATIVE_NAMES] * len(files)
    tkept, tmax, tfound = _maps(pred, paths)
    ty = np.asarray(ty)[tkept]

    cands = np.unique(np.r_[vmax, THRESHOLD])
    youden = max(cands, key=lambda t: (_rates(vy, vmax >= t)["balanced_accuracy"], -abs(t - THRESHOLD)))
    ok = [t for t in cands if _rates(vy, vmax >= t)["specificity"] >= args.val_specificity]
    at_spec = float(min(ok)) if ok else None
    rules = {
        f"fixed {THRESHOLD} (region, specks dropped: evaluate's rule)": (THRESHOLD, vfound, tfound),
        f"fixed {THRESHOLD} on the map's maximum": (THRESHOLD, vmax >= THRESHOLD, tmax >= THRESHOLD),
        "validation Youden": (float(youden), vmax >= youden, tmax >= youden),
    }
    if at_spec is not None:
        rules[f"validation specificity >= {args.val_specificity}"] = (at_spec, vmax >= at_spec, tmax >= at_spec)
    out = {}
    for name, (t, v_said, t_said) in rules.items():
        out[name] = {"threshold": round(float(t), 4), "validation": _rates(vy, v_said),
                     args.data.name: _rates(ty, t_said)}
    emit({"benchmark": "map_threshold", "machine": machine(), "run": str(args.run), "data": str(args.data),
          "tta": args.tta, "n_validation": int(len(vy)), "n_data": int(len(ty)), "rules": out})


if __name__ == "__main__":
    main()
