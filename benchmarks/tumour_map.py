"""Tumour-map quality on expert outlines, and the fixed held-out split it is measured on.

    # 1. the split (symlinks; nothing is copied): per figshare class the last 20% of ids are the test block, the
    #    25 ids before it are left out (a patient straddling the boundary is on neither side), the rest trains;
    #    Nickparvar's notumor images are split 75/25 by duplicate group (Br35H holds many near-copies)
    python benchmarks/tumour_map.py split OUT --figshare ../shared/data/figshare_dev \
        --notumor ../shared/data/brain_tumor_mri_4class/Training/notumor
    #    -> OUT/train/{glioma,meningioma,pituitary,notumor}, OUT/test/{glioma,meningioma,pituitary}, OUT/negatives

    # 2. train with masks (or without, for the post-hoc maps), then measure on the test block
    braintumor train OUT/train --masks ../shared/data/figshare_dev/masks --group-by id-blocks:40 --img-size 224 \
        --epochs-frozen 2 --epochs 16 --lr 3e-4 --mask-weight 2 --out runs/figshare-seg
    python benchmarks/tumour_map.py measure runs/figshare-seg OUT/test --masks ../shared/data/figshare_dev/masks \
        --negatives OUT/negatives

``measure`` prints one JSON object: classification accuracy on the test block (a model with a no-tumour class may
call a tumour "notumor": counted wrong), the tumour map's Dice at 0.5 (mean and median), Dice at each image's best
threshold, the pointing game (map maximum strictly inside the outline, and within 15/224 of the side), per class;
on the no-tumour images, the mean of each map's maximum and the share whose maximum reaches 0.5; milliseconds per
image for the class + map pass.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


def split(args) -> None:
    from braintumor.data.audit import duplicate_groups
    from braintumor.data.split import train_val_split

    fig, out = Path(args.figshare).resolve(), Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    rows = list(csv.DictReader(open(fig / "index.csv")))
    counts: dict = {}
    for c in sorted({r["cls"] for r in rows}):
        ids = sorted(int(r["id"]) for r in rows if r["cls"] == c)
        cut = ids[-round(0.2 * len(ids))]
        for i in ids:
            part = "test" if i >= cut else "buffer" if i >= cut - args.buffer else "train"
            d = out / part / c
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.jpg").symlink_to(fig / "images" / c / f"{i}.jpg")
            counts[f"{part}/{c}"] = counts.get(f"{part}/{c}", 0) + 1
    if args.notumor:
        paths = sorted(Path(args.notumor).resolve().iterdir())
        tr, te = train_val_split([0] * len(paths), duplicate_groups(paths), 0.25, 7)
        for name, idx in (("train/notumor", tr), ("negatives", te)):
            (out / name).mkdir(parents=True, exist_ok=True)
            for i in idx:
                (out / name / paths[i].name).symlink_to(paths[i])
            counts[name] = len(idx)
    print(json.dumps(counts))


def measure(args) -> None:
    from braintumor.data.masks import find_mask, load_mask, prepare_mask
    from braintumor.data.read import read_image
    from braintumor.explanation.metrics import pointing_game, standard_tolerance
    from braintumor.inference import Predictor
    from braintumor.models.segmentation import dice_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    pred = Predictor.from_run(args.run)
    paths = sorted(p for p in Path(args.images).glob("*/*") if find_mask(p, args.masks) is not None)
    raws = [read_image(p) for p in paths]
    prep = np.stack([pred.preprocessor.prepare(r) for r in raws])
    gt = np.stack([prepare_mask(pred.preprocessor, r, load_mask(find_mask(p, args.masks)))
                   for p, r in zip(paths, raws, strict=True)])
    t0 = time.perf_counter()
    proba, maps = pred.proba_and_maps_prepared(prep)
    ms = (time.perf_counter() - t0) / len(paths) * 1000
    tm, tg = torch.from_numpy(maps), torch.from_numpy(gt)
    dice = dice_scores(tm, tg).numpy()
    best = np.max([dice_scores(tm, tg, t).numpy() for t in np.arange(0.05, 1.0, 0.05)], axis=0)
    tol = standard_tolerance(maps.shape[1])
    pg = np.array([pointing_game(m, g) for m, g in zip(maps, gt, strict=True)])
    pgt = np.array([pointing_game(m, g, tol) for m, g in zip(maps, gt, strict=True)])
    cls = np.array([p.parent.name for p in paths])
    right = np.array([pred.classes[i] == c for i, c in zip(proba.argmax(1), cls, strict=True)])

    def block(sel) -> dict:
        r4 = lambda v: round(float(v), 4)  # noqa: E731
        return {"n": int(sel.sum()), "accuracy": r4(right[sel].mean()), "dice_0.5": r4(dice[sel].mean()),
                "dice_0.5_median": r4(np.median(dice[sel])), "dice_best_threshold": r4(best[sel].mean()),
                "pointing_game": r4(pg[sel].mean()), "pointing_game_tolerant": r4(pgt[sel].mean())}

    out = {"run": str(args.run), "images": str(args.images), **block(np.ones(len(paths), bool)),
           "ms_per_image": round(ms, 1), "per_class": {c: block(cls == c) for c in sorted(set(cls))}}
    if args.negatives:
        negs = sorted(p for p in Path(args.negatives).iterdir() if p.is_file())
        nmax = pred.tumour_maps_prepared(np.stack([pred.preprocessor.prepare(read_image(p)) for p in negs]))
        mx = nmax.max(axis=(1, 2))
        out["negatives"] = {"n": len(negs), "mean_max": round(float(mx.mean()), 4),
                            "share_max_at_least_0.5": round(float((mx >= 0.5).mean()), 4)}
    print(json.dumps(out, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="write the fixed held-out split (symlinks)")
    s.add_argument("out")
    s.add_argument("--figshare", required=True, help="figshare_dev folder (images/, masks/, index.csv)")
    s.add_argument("--notumor", help="a folder of no-tumour images to split 75/25 by duplicate group")
    s.add_argument("--buffer", type=int, default=25, help="ids left out before each test block")
    m = sub.add_parser("measure", help="tumour-map quality of a run with a decoder")
    m.add_argument("run")
    m.add_argument("images", help="<class>/<image> folder with masks")
    m.add_argument("--masks", required=True)
    m.add_argument("--negatives", help="a folder of no-tumour images")
    m.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    split(args) if args.cmd == "split" else measure(args)


if __name__ == "__main__":
    main()
