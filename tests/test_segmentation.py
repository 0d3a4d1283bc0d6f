"""Mask-supervised tumour maps: patient groups, mask loading, joint augmentation, the decoder and its training."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from braintumor.augment import Augmenter
from braintumor.cli import app
from braintumor.config import TrainConfig
from braintumor.data.groups import id_blocks, id_runs, merge_groups, patient_groups, read_group_csv
from braintumor.data.masks import find_mask, prepare_masks
from braintumor.errors import DataError, UsageError
from braintumor.inference import Predictor
from braintumor.models import build_model
from braintumor.models.segmentation import attach_decoder, dice_scores, has_decoder, mask_loss
from braintumor.preprocess import Preprocessor
from braintumor.training import train

# ------------------------------------------------------------------------------------------------ groups


def test_id_runs_and_blocks_keep_consecutive_ids_together():
    paths = ["g/7.jpg", "g/8.jpg", "m/9.png", "g/12.jpg", "x/scan.png"]
    assert id_runs(paths) == ["ids:7-9", "ids:7-9", "ids:7-9", "ids:12-12", None]
    assert id_blocks(paths, 10) == ["ids:0-9", "ids:0-9", "ids:0-9", "ids:10-19", None]
    with pytest.raises(DataError, match="block size"):
        id_blocks(paths, 0)


def test_merge_groups_joins_through_shared_members():
    merged = merge_groups(["a", "a", "b", None, None], [None, "x", "x", "y", None])
    assert merged[0] == merged[1] == merged[2] != merged[3]
    assert merged[4] is None


def test_patient_groups_rules_and_errors(tmp_path):
    f = tmp_path / "groups.csv"
    f.write_text("path,group\nd/a.png,p1\nb.png,p1\nc.png,p2\n")
    assert read_group_csv(f, ["d/a.png", "e/b.png", "c.png", "z.png"]) == ["csv:p1", "csv:p1", "csv:p2", None]
    assert patient_groups("id-blocks:2", ["4.jpg", "5.jpg"]) == ["ids:4-5", "ids:4-5"]
    with pytest.raises(DataError, match="id-blocks:N"):
        patient_groups("id-blocks:x", ["1.jpg"])
    with pytest.raises(DataError, match="integer"):
        patient_groups("id-runs", ["a.jpg"])
    with pytest.raises(DataError, match="neither"):
        patient_groups(str(tmp_path / "missing.csv"), ["a.jpg"])
    (tmp_path / "bad.csv").write_text("file,patient\na,b\n")
    with pytest.raises(DataError, match="columns"):
        patient_groups(str(tmp_path / "bad.csv"), ["a.jpg"])


def test_group_by_keeps_id_blocks_on_one_side(tmp_path, phantoms):
    data = tmp_path / "numbered"
    rng = np.random.default_rng(0)
    k = 0
    for cls in ("no", "yes"):
        (data / cls).mkdir(parents=True)
        for p in sorted((phantoms / cls).glob("*.png"))[:60]:
            shutil.copy(p, data / cls / f"{k}.png")
            k += 1 + int(rng.integers(0, 2))
    res = train(TrainConfig(data_dir=str(data), model="cnn", img_size=32, epochs=1, group_by="id-blocks:10",
                            group_duplicates=False), out=tmp_path / "run")
    rows = list(csv.DictReader(open(res.run_dir / "split.csv")))
    side: dict[int, set] = {}
    for r in rows:
        side.setdefault(int(Path(r["path"]).stem) // 10, set()).add(r["subset"])
    assert all(len(s) == 1 for s in side.values())
    assert {"train", "val"} == set().union(*side.values())


# ------------------------------------------------------------------------------------------------ masks


def _write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_find_mask_matches_by_stem_and_class(tmp_path):
    _write(tmp_path / "masks" / "glioma" / "12.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "masks" / "7.png", np.zeros((8, 8), np.uint8))
    assert find_mask("img/glioma/12.jpg", tmp_path / "masks") == tmp_path / "masks" / "glioma" / "12.png"
    assert find_mask("img/other/7.jpg", tmp_path / "masks") == tmp_path / "masks" / "7.png"
    assert find_mask("img/glioma/99.jpg", tmp_path / "masks") is None


def test_prepare_masks_targets_and_problems(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    img[8:56, 8:56] = 120
    lesion = np.zeros((64, 64), np.uint8)
    lesion[20:30, 24:34] = 255
    paths = [_write(tmp_path / "img" / "yes" / f"{i}.png", img) for i in range(4)]
    paths.append(_write(tmp_path / "img" / "no" / "9.png", img))
    _write(tmp_path / "m" / "yes" / "0.png", lesion)
    _write(tmp_path / "m" / "yes" / "1.png", np.zeros((32, 32), np.uint8) + 255)  # wrong size
    _write(tmp_path / "m" / "yes" / "2.png", np.zeros((64, 64), np.uint8))  # empty for a tumour image
    pre = Preprocessor(img_size=32, crop_brain=False)
    pm = prepare_masks(paths, [1, 1, 1, 1, 0], ["no", "yes"], tmp_path / "m", pre)
    assert pm.has_mask.tolist() == [True, False, False, False, True]
    assert pm.n_masked == 1 and pm.n_negative == 1
    assert pm.masks[0].sum() == 25 and pm.masks[4].sum() == 0  # 10x10 at 64 px -> 5x5 at 32 px
    assert sorted(r for _, r in pm.problems) == ["empty mask for an image of a tumour class",
                                                  "mask shape (32, 32) differs from image shape (64, 64)"]
    assert pm.summary() == {"masked": 1, "negative": 1, "without": 3, "problems": 2}
    with pytest.raises(DataError, match="no mask matches"):
        prepare_masks(paths[:2], [1, 1], ["no", "yes"], tmp_path / "img" / "no", pre)
    with pytest.raises(DataError, match="does not exist"):
        prepare_masks(paths[:2], [1, 1], ["no", "yes"], tmp_path / "nowhere", pre)


def test_augmenter_moves_masks_with_the_image():
    x = torch.zeros(6, 1, 64, 64)
    m = torch.zeros(6, 64, 64)
    for i in range(6):
        y0, x0 = 10 + 5 * i, 20 + 3 * i
        x[i, 0, y0:y0 + 10, x0:x0 + 8] = 1.0
        m[i, y0:y0 + 10, x0:x0 + 8] = 1
    x = x.expand(-1, 3, -1, -1).contiguous()
    for mri in (False, True):
        plain = Augmenter(seed=1, mri=mri)(x)
        out, mm = Augmenter(seed=1, mri=mri)(x, m)
        assert torch.allclose(plain, out, atol=1e-5)  # masks do not change the image draws
        assert not torch.equal(mm, m)  # the geometry moved them
        bright = (out[:, 0] - out[:, 0].amin((1, 2), keepdim=True)).abs() > 0.5
        if not mri:  # (inversion may flip brightness under mri=True)
            iou = (bright & mm.bool()).sum((1, 2)) / (bright | mm.bool()).sum((1, 2))
            assert float(iou.min()) > 0.8


# ------------------------------------------------------------------------------------------------ decoder


def test_decoder_outputs_and_unchanged_classifier_path():
    model = build_model("cnn", 2, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        attach_decoder(model, "cnn", img_size=64)
        after = model(x)
        logits, maps = model.forward_with_map(x)
    assert has_decoder(model) and torch.allclose(before, after) and torch.allclose(logits, before)
    assert maps.shape == (2, 1, 64, 64)
    assert any(k.startswith("decoder.") for k in model.state_dict())
    with pytest.raises(UsageError, match="no tumour-map decoder"):
        build_model("cnn", 2, img_size=64).forward_with_map(x)


def test_mask_loss_and_dice():
    t = torch.zeros(3, 16, 16)
    t[0, 4:8, 4:8] = 1
    good = torch.where(t[:, None] > 0, 8.0, -8.0)
    bad = -good
    has = torch.tensor([True, True, False])
    assert float(mask_loss(good, t, has)) < 0.01 < 1.0 < float(mask_loss(bad, t, has))
    z = mask_loss(good.requires_grad_(), t, torch.zeros(3, dtype=torch.bool))
    assert float(z.detach()) == 0.0 and z.requires_grad
    d = dice_scores(torch.sigmoid(good[:, 0]), t)
    assert d.tolist() == [1.0, 1.0, 1.0]
    half = t.clone()
    half[0, 4:8, 6:8] = 0
    assert abs(float(dice_scores(half, t)[0]) - 2 * 8 / (8 + 16)) < 1e-6


@pytest.fixture(scope="module")
def seg_run(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    return train(TrainConfig(data_dir=str(phantoms), model="cnn", img_size=64, epochs=14, batch_size=32, seed=0,
                             masks=str(phantoms / "_masks")), out=out)


def test_training_with_masks_learns_a_map_on_the_lesion(seg_run, phantoms_test):
    import json

    from braintumor.data.masks import load_mask, prepare_mask
    from braintumor.data.read import read_image

    meta = json.loads((seg_run.run_dir / "metadata.json").read_text())
    assert meta["tumour_map"]["train"]["masked"] > 100 and meta["tumour_map"]["layers"] == ["backbone.3", "backbone"]
    hist = list(csv.DictReader(open(seg_run.run_dir / "history.csv")))
    assert float(hist[-1]["val_dice"]) > 0.5 > float(hist[0]["val_dice"])
    pred = Predictor.from_run(seg_run.run_dir)
    assert pred.has_tumour_map
    yes = sorted((phantoms_test / "yes").glob("*.png"))[:20]
    no = sorted((phantoms_test / "no").glob("*.png"))[:20]
    raws = [read_image(p) for p in yes]
    prep = np.stack([pred.preprocessor.prepare(r) for r in raws])
    masks = np.stack([prepare_mask(pred.preprocessor, r, load_mask(phantoms_test / "_masks" / "yes" / p.name))
                      for p, r in zip(yes, raws, strict=True)])
    proba, maps = pred.proba_and_maps_prepared(prep)
    assert np.allclose(proba, pred.proba_prepared(prep), atol=1e-5)
    dice = dice_scores(torch.from_numpy(maps), torch.from_numpy(masks)).numpy()
    assert np.median(dice) > 0.5
    no_maps = pred.tumour_maps_prepared(np.stack([pred.preprocessor.prepare(read_image(p)) for p in no]))
    assert no_maps.max(axis=(1, 2)).mean() < maps.max(axis=(1, 2)).mean()


def test_run_without_masks_has_no_map(trained_run):
    pred = Predictor.from_run(trained_run.run_dir)
    assert not pred.has_tumour_map
    with pytest.raises(UsageError, match="--masks"):
        pred.tumour_maps_prepared(np.zeros((1, 64, 64, 3), np.uint8))


def test_masks_that_match_nothing_are_a_one_line_error(phantoms, tmp_path):
    (tmp_path / "empty_masks").mkdir()
    r = CliRunner().invoke(app, ["train", str(phantoms), "--model", "cnn", "--img-size", "32", "--epochs", "1",
                                 "--masks", str(tmp_path / "empty_masks"), "--out", str(tmp_path / "run")])
    assert r.exit_code != 0
    assert "no mask matches any image" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("name", ["cnn", "efficientnet-lite0", "efficientnet-b0", "resnet18", "densenet121"])
def test_feature_layers_run_fine_to_coarse(name):
    from braintumor.models import get_spec

    spec = get_spec(name)
    model = build_model(name, 2, pretrained=False, img_size=64).eval()
    seen: dict[str, int] = {}
    for layer in spec.feature_layers:
        model.get_submodule(layer).register_forward_hook(
            lambda _m, _i, out, layer=layer: seen.__setitem__(layer, 64 // out.shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    strides = [seen[n] for n in spec.feature_layers]
    assert spec.feature_layers[-1] == spec.target_layer
    assert strides == sorted(strides) and strides[-1] == (4 if name == "cnn" else 32)
