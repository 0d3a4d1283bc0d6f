"""Explanation quality: localisation, faithfulness and sanity of heatmaps, on phantoms or on real outlines.

    python benchmarks/explain_quality.py [--models cnn,resnet18] [--size 96] [--train 320] [--test 100]
                                         [--epochs 12] [--methods gradcam,gradcam++] [--threads 2]
    python benchmarks/explain_quality.py --real IMAGES --run RUN [--masks MASKS] [--methods ...] [--target true]

Real mode (``--real``): the images of ``IMAGES/<class>/`` (never used to train ``RUN``), their expert lesion
outlines in ``MASKS`` (``<class>/<stem>.*`` or ``<stem>.*``; default ``IMAGES/_masks``), explained for the
predicted class (``--target true``: the folder's class). Per method, overall and per class:

* ``pointing`` / ``pointing_tolerant``: map peak strictly inside the outline / within 15/224 of the side of it
  (``chance``: mean lesion area fraction, what a random peak scores strictly), each with a 95% bootstrap interval
  (``pointing_ci``) that resamples whole patients (``--ci-groups``, default ``id-blocks:40``: figshare's slices are
  numbered consecutively per patient; ``ci_units`` says how many units there were);
* ``iou`` (map >= 0.5), ``dice_best`` (each image at its own best threshold in 0.05..0.95: an upper bound),
  ``dice_fixed`` (the one threshold best on average, given), ``dice_05`` (threshold 0.5);
* ``peak_outside_brain``: share of maps whose peak is off the head (background, frame, text);
* ``deletion_auc`` vs ``random_deletion_auc`` (lower = more faithful), ``insertion_auc`` vs its random baseline;
* ``randomisation_spearman``: mean |Spearman| against a weight-randomised copy (lower = passes);
* ``ms_per_image``: wall-clock of the maps alone, batches of 16 (noisy on a shared machine).

Once per run, ``lesion_reliance``: the drop of the explained class's probability when the lesion (dilated by 3 px)
is blurred, against the same shape blurred elsewhere in the head; a model that does not use the lesion cannot be
explained by a faithful map pointing at it.

``--methods`` (real mode's default: the comparison in ``benchmarks/README.md``, occlusion on 24 images) takes
the package's names (``gradcam``, ``gradcam++``, ``hirescam``, ``layercam``, ``layercam-last``, ``layercam-tta``,
``occlusion``, ``seg``) and benchmark-only layer variants ``RULE@LAYERS[/FUSION]``: RULE one of ``gradcam``,
``hirescam``, ``layercam``; LAYERS ``s4+s8+s16+s32`` (strides of the registry's ``feature_layers``) or ``all``;
FUSION ``max`` (default), ``mean`` or ``product``. E.g. ``layercam@s16+s32/max``.

Phantom mode (default):

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
import json
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
from braintumor.explanation import (  # noqa: E402
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
from braintumor.explanation.metrics import (  # noqa: E402
    DICE_THRESHOLDS,
    dice_curve,
    find_mask,
    head_masks,
    heatmap_dice,
    peak_outside_brain,
    randomised_predictor,
    spearman,
    standard_tolerance,
)
from braintumor.explanation.saliency import (  # noqa: E402
    FUSIONS,
    LAYER_RULES,
    check_method,
    feature_grid,
    fuse_maps,
    layer_maps,
    layer_strides,
)
from braintumor.models import available_models, get_spec  # noqa: E402
from braintumor.training import train  # noqa: E402


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


# ------------------------------------------------------------------------------------------------ real mode


#: real mode's default comparison (the table in benchmarks/README.md)
REAL_METHODS = ("layercam,gradcam,gradcam++,hirescam,layercam-last,layercam@s8+s16+s32/max,layercam@s8+s16+s32/mean,"
                "layercam@s16/max,occlusion")


def parse_variant(spec: str) -> tuple[str, str, str] | None:
    """``RULE@LAYERS[/FUSION]`` -> ``(rule, layers, fusion)``; ``None`` for a package method name."""
    if "@" not in spec:
        return None
    rule, rest = spec.split("@", 1)
    layers, _, fusion = rest.partition("/")
    fusion = fusion or "max"
    if rule not in LAYER_RULES or fusion not in FUSIONS:
        raise SystemExit(f"bad variant '{spec}': RULE in {LAYER_RULES}, FUSION in {FUSIONS}")
    return rule, layers, fusion


def variant_layers(predictor, layers: str) -> list[str]:
    from braintumor.explanation.core import feature_layers

    stack = list(feature_layers(predictor))
    if layers == "all":
        return stack
    strides = layer_strides(predictor.model, stack, predictor.preprocessor.img_size)
    out = []
    for tok in layers.split("+"):
        want = float(tok.lstrip("s"))
        hit = [n for n in stack if abs(strides[n] - want) < 1e-6 and n not in out]
        if not hit:
            raise SystemExit(f"no feature layer of stride {want:g} in {stack} ({strides})")
        out.append(hit[-1] if want == max(strides.values()) else hit[0])
    return out


def compute_maps(predictor, prepared: np.ndarray, idx, spec: str, batch_size: int = 16, originals=None) -> np.ndarray:
    v = parse_variant(spec)
    if v is None:
        return heatmaps(predictor, prepared, idx, spec, batch_size, originals=originals)
    rule, layers, fusion = v
    names = variant_layers(predictor, layers)
    out = []
    for i in range(0, len(prepared), batch_size):
        x = predictor.preprocessor.normalise(prepared[i:i + batch_size]).to(predictor.device)
        x = x.contiguous(memory_format=torch.channels_last)
        raw = layer_maps(predictor.model, x, names, list(idx[i:i + batch_size]), rule)
        out.append(fuse_maps(raw, prepared.shape[1], fusion))
    return np.concatenate(out)


def _m(values) -> float | None:
    v = [float(x) for x in values if x is not None and np.isfinite(x)]
    return round(float(np.mean(v)), 4) if v else None


def real_summary(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for k in ("pointing", "pointing_tolerant", "chance", "iou", "dice_best", "dice_05", "peak_outside_brain",
              "deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"):
        out[k] = _m(r.get(k) for r in rows)
    curves = [r["_curve"] for r in rows]
    if curves:
        mc = np.mean(curves, axis=0)
        k = int(np.argmax(mc))
        out["dice_fixed"], out["dice_fixed_threshold"] = round(float(mc[k]), 4), float(DICE_THRESHOLDS[k])
    correct = [r for r in rows if r["correct"]]
    out["n_correct"] = len(correct)
    out["pointing_correct"] = _m(r["pointing"] for r in correct)
    out["pointing_tolerant_correct"] = _m(r["pointing_tolerant"] for r in correct)
    rho = [r["rho"] for r in rows if r.get("rho") is not None]
    if rho:
        out["randomisation_spearman"] = round(float(np.mean(np.abs(rho))), 4)
        out["randomisation_n"] = len(rho)
    return out


def load_real(predictor, folder: Path, masks_dir: Path, limit: int | None) -> dict:
    paths = [p for p in list_images(folder) if not any(part.startswith("_") for part in p.relative_to(folder).parts)]
    paths = [p for p in paths if find_mask(p, masks_dir) is not None]
    if limit:
        paths = paths[::max(1, len(paths) // limit)][:limit]
    if not paths:
        raise SystemExit(f"no image in {folder} has a mask in {masks_dir}")
    raws = [read_image(p) for p in paths]
    prepared = np.stack([predictor.preprocessor.prepare(r) for r in raws])
    masks = np.stack([prepare_mask(predictor.preprocessor, r, load_mask(find_mask(p, masks_dir)))
                      for p, r in zip(paths, raws, strict=True)])
    proba = predictor.proba_prepared(prepared)
    labels = predictor.labels_from_proba(proba)
    classes = [p.parent.name for p in paths]
    return dict(paths=paths, raws=raws, prepared=prepared, masks=masks, heads=head_masks(prepared), classes=classes,
                predicted=[predictor.classes.index(lab) for lab in labels],
                truth=[predictor.classes.index(c) if c in predictor.classes else -1 for c in classes])


def lesion_reliance(predictor, ds: dict, idx, seed: int = 0) -> dict:
    """How much the model uses the lesion at all: the drop of the explained class's probability when the lesion
    (dilated by 3 px) is replaced by its blurred copy, against the same shape blurred elsewhere in the head. A
    faithful map cannot point at a lesion the model does not use."""
    from scipy import ndimage

    from braintumor.explanation.saliency import blur_baseline

    rng = np.random.default_rng(seed)
    x = ds["prepared"]
    base = blur_baseline(x)
    p0 = predictor.proba_prepared(x)
    rows = []
    for i in range(len(x)):
        m = ndimage.binary_dilation(ds["masks"][i], iterations=3)
        head = ds["heads"][i]
        ys, xs = np.nonzero(m)
        hy, hx = np.nonzero(head)
        shifted = None
        for _ in range(100):  # the same shape moved inside the head, off the lesion
            j = rng.integers(len(hy))
            cand = np.roll(np.roll(m, int(hy[j] - ys.mean()), 0), int(hx[j] - xs.mean()), 1)
            if (cand & head).sum() >= 0.9 * cand.sum() and not (cand & m).any():
                shifted = cand
                break
        a, b = x[i].copy(), x[i].copy()
        a[m] = base[i][m]
        if shifted is not None:
            b[shifted] = base[i][shifted]
        p = predictor.proba_prepared(np.stack([a, b]))[:, idx[i]]
        rows.append((ds["classes"][i], p0[i, idx[i]] - p[0], p0[i, idx[i]] - p[1] if shifted is not None else None))

    def summ(rs):
        les = np.array([r[1] for r in rs])
        ctl = np.array([r[2] for r in rs if r[2] is not None])
        paired = [r for r in rs if r[2] is not None]
        return {"n": len(rs), "lesion_blurred_drop": round(float(les.mean()), 4),
                "elsewhere_blurred_drop": round(float(ctl.mean()), 4) if len(ctl) else None,
                "lesion_drop_larger": round(float(np.mean([r[1] > r[2] for r in paired])), 3) if paired else None}

    out = summ(rows)
    out["per_class"] = {c: summ([r for r in rows if r[0] == c]) for c in sorted({r[0] for r in rows})}
    return out


def ci_groups(rule: str, paths: list[Path]) -> list[str] | None:
    """The bootstrap's resampling units: ``rule`` applied to the file names (``"none"``: each image; a file
    the rule cannot place is its own unit)."""
    if rule == "none":
        return None
    from braintumor.data.groups import patient_groups

    return [g if g is not None else f"file:{p}" for g, p in zip(patient_groups(rule, paths), paths, strict=True)]


def pointing_intervals(rows: list[dict], groups: list[str] | None) -> dict:
    """95% bootstrap intervals of the strict and tolerant pointing game, resampling ``groups`` (patients)."""
    from braintumor.stats import bootstrap_mean_ci

    g = None if groups is None else [groups[r["k"]] for r in rows]
    out = {}
    for key in ("pointing", "pointing_tolerant"):
        ci = bootstrap_mean_ci([r[key] for r in rows], g)
        out[f"{key}_ci"] = [round(ci["low"], 4), round(ci["high"], 4)] if ci["n"] else None
    out["ci_units"] = len(set(g)) if g is not None else len(rows)
    return out


def real_mode(args) -> None:
    from braintumor.inference import Predictor

    predictor = Predictor.from_run(args.run, device="cpu")
    folder = Path(args.real)
    masks_dir = Path(args.masks) if args.masks else folder / "_masks"
    t0 = time.perf_counter()
    ds = load_real(predictor, folder, masks_dir, args.limit)
    n = len(ds["paths"])
    idx = ds["predicted"] if args.target == "predicted" else ds["truth"]
    if min(idx) < 0:
        raise SystemExit("--target true needs class folders named like the model's classes")
    side = ds["prepared"].shape[1]
    tol = standard_tolerance(side)
    # subsets spread evenly over the (class-sorted) list, so that every class is in them
    def spread(m: int) -> np.ndarray:
        return np.unique(np.round(np.linspace(0, n - 1, min(m, n))).astype(int)) if m > 0 else np.zeros(0, int)

    rand_sel = spread(args.randomisation_images)
    del_sel = np.arange(n) if args.deletion_images <= 0 else spread(args.deletion_images)
    di_idx = [idx[k] for k in del_sel]
    rnd = deletion_insertion(predictor.proba_prepared, ds["prepared"][del_sel], random_maps(len(del_sel), side, 1),
                             di_idx, steps=args.steps, seed=args.seed)
    rnd_pred = randomised_predictor(predictor, seed=args.seed) if args.randomisation_images else None
    groups = ci_groups(args.ci_groups, ds["paths"])
    print(f"loaded {n} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    results = {}
    for spec in args.methods.split(","):
        spec = spec.strip()
        name = spec if parse_variant(spec) else check_method(spec)
        t0 = time.perf_counter()
        sel = np.arange(n)
        if name == "occlusion" and args.occlusion_images:
            sel = spread(args.occlusion_images)
        tm = time.perf_counter()
        maps = compute_maps(predictor, ds["prepared"][sel], [idx[k] for k in sel], name,
                            originals=[ds["raws"][k] for k in sel])
        ms = (time.perf_counter() - tm) / len(sel) * 1000
        rows = []
        for j, k in enumerate(sel):
            m, mask = maps[j], ds["masks"][k]
            curve = dice_curve(m, mask)
            rows.append({"k": int(k), "class": ds["classes"][k], "correct": ds["predicted"][k] == ds["truth"][k],
                         "pointing": float(pointing_game(m, mask)),
                         "pointing_tolerant": float(pointing_game(m, mask, tol)), "chance": float(mask.mean()),
                         "iou": heatmap_iou(m, mask), "dice_best": float(curve.max()),
                         "dice_05": heatmap_dice(m, mask, 0.5), "_curve": curve,
                         "peak_outside_brain": peak_outside_brain(m, ds["heads"][k])})
        pos = {int(k): j for j, k in enumerate(sel)}
        d_in = [k for k in del_sel if int(k) in pos]
        if d_in:
            di = deletion_insertion(predictor.proba_prepared, ds["prepared"][d_in], maps[[pos[int(k)] for k in d_in]],
                                    [idx[k] for k in d_in], steps=args.steps, seed=args.seed)
            where = {int(k): q for q, k in enumerate(del_sel)}
            for q, k in enumerate(d_in):
                r = rows[pos[int(k)]]
                r.update(deletion_auc=float(di["deletion"][q]), insertion_auc=float(di["insertion"][q]),
                         random_deletion_auc=float(rnd["deletion"][where[int(k)]]),
                         random_insertion_auc=float(rnd["insertion"][where[int(k)]]))
        r_in = [k for k in rand_sel if int(k) in pos] if rnd_pred is not None and name != "occlusion" else []
        if r_in:
            try:
                rmaps = compute_maps(rnd_pred, ds["prepared"][r_in], [idx[k] for k in r_in], name,
                                     originals=[ds["raws"][k] for k in r_in])
                for k, rm in zip(r_in, rmaps, strict=True):
                    rows[pos[int(k)]]["rho"] = spearman(maps[pos[int(k)]], rm)
            except Exception as exc:  # noqa: BLE001 - e.g. seg on a copy without the decoder
                print(f"{name}: randomisation check skipped ({exc})", file=sys.stderr)
        res = real_summary(rows)
        res.update(pointing_intervals(rows, groups))
        res["ms_per_image"] = round(ms, 1)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["per_class"] = {c: {**real_summary(rs), **pointing_intervals(rs, groups)}
                            for c in sorted(set(ds["classes"])) for rs in [[r for r in rows if r["class"] == c]]}
        results[name] = res
        print(f"{name}: {json.dumps({k: v for k, v in res.items() if k != 'per_class'})}", file=sys.stderr,
              flush=True)
    reliance = lesion_reliance(predictor, ds, idx, args.seed)
    truth_ok = [p == t for p, t in zip(ds["predicted"], ds["truth"], strict=True)]
    emit({"benchmark": "explain_quality", "mode": "real", "machine": machine(), "run": str(args.run),
          "model": predictor.metadata.get("model"), "img_size": side, "images": str(folder),
          "masks": str(masks_dir), "n": n, "accuracy": round(float(np.mean(truth_ok)), 4),
          "target": args.target, "tolerance_px": round(tol, 2),
          "settings": {"steps": args.steps, "deletion_images": len(del_sel),
                       "randomisation_images": len(rand_sel), "occlusion_images": args.occlusion_images,
                       "seed": args.seed},
          "lesion_reliance": reliance, "results": results})


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
    ap.add_argument("--real", help="real mode: a folder of <class>/<images> with lesion outlines")
    ap.add_argument("--run", help="real mode: the run folder whose model is explained")
    ap.add_argument("--masks", help="real mode: the outlines' folder (default REAL/_masks)")
    ap.add_argument("--target", choices=("predicted", "true"), default="predicted",
                    help="real mode: explain the predicted class or the folder's class")
    ap.add_argument("--limit", type=int, default=None, help="real mode: at most this many images (spread)")
    ap.add_argument("--ci-groups", default="id-blocks:40",
                    help="real mode: resampling units of the pointing game's 95%% bootstrap interval: a patient "
                         "rule on the file names ('id-blocks:40', the figshare default: blocks of 3-4 patients; "
                         "'id-runs'; a CSV path,group file) or 'none' (each image)")
    ap.add_argument("--occlusion-images", type=int, default=0,
                    help="real mode: occlusion on this many images only (0: all; real mode's default 24)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.real:
        if not args.run:
            ap.error("--real needs --run")
        if "--deletion-images" not in sys.argv:
            args.deletion_images = 0  # all of them
        if "--steps" not in sys.argv:
            args.steps = 20
        if "--methods" not in sys.argv:
            args.methods = REAL_METHODS
        if "--occlusion-images" not in sys.argv:
            args.occlusion_images = 24
        real_mode(args)
        return
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
