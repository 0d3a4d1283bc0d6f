"""braintumor.data.nifti and data.slices: canonical axial slices, 2-D/4-D/5-D, slice selection, volume summaries;
a NIfTI phantom volume predicts and explains like the same phantoms saved as PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

nib = pytest.importorskip("nibabel")

from braintumor.config import TrainConfig  # noqa: E402
from braintumor.data.discover import discover, list_images  # noqa: E402
from braintumor.data.nifti import window_volume  # noqa: E402
from braintumor.data.read import frame_count, read_image  # noqa: E402
from braintumor.data.slices import (  # noqa: E402
    parse_slices,
    run_slices,
    select_frames,
    summarise_volume,
    summarise_volumes,
)
from braintumor.data.synthetic import make_phantom  # noqa: E402
from braintumor.errors import UnreadableImageError, UsageError  # noqa: E402


def ras_volume(slices: list[np.ndarray]) -> np.ndarray:
    """Stack 2-D images (rows: anterior->posterior, cols: patient right->left) into an (x, y, z) RAS+ array."""
    return np.stack([im.T[::-1, ::-1] for im in slices], axis=2)


def _slices(n=5, h=24, w=30):
    base = (np.arange(h * w).reshape(h, w) % 200).astype(np.uint8)
    return [(base + 10 * k).astype(np.uint8) for k in range(n)]


def test_canonical_axial_slices_whatever_the_storage_order(tmp_path):
    sl = _slices()
    vol = ras_volume(sl)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "ras.nii.gz")
    assert frame_count(tmp_path / "ras.nii.gz") == 5
    for k in range(5):
        assert np.array_equal(read_image(tmp_path / "ras.nii.gz", k)[..., 0], sl[k])
    # LPS storage (x and y flipped, as DICOM-converted files often are).
    nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), np.diag([-2.0, -2.0, 3.0, 1.0])), tmp_path / "lps.nii")
    # Slices stored first (z, x, y) under an oblique affine (15 degrees about the S axis).
    perm = np.ascontiguousarray(np.transpose(vol, (2, 0, 1)))
    aff = np.zeros((4, 4))
    aff[2, 0], aff[0, 1], aff[1, 2], aff[3, 3] = 3.0, 2.0, 2.0, 1.0
    t = np.deg2rad(15)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    aff[:3, :3] = rot @ aff[:3, :3]
    nib.save(nib.Nifti1Image(perm, aff), tmp_path / "oblique.nii.gz")
    for name in ("lps.nii", "oblique.nii.gz"):
        assert frame_count(tmp_path / name) == 5, name
        for k in range(5):
            assert np.array_equal(read_image(tmp_path / name, k)[..., 0], sl[k]), (name, k)


def test_4d_uses_the_first_volume_5d_is_refused_2d_is_one_image(tmp_path):
    sl = _slices(3)
    vol = ras_volume(sl)
    nib.save(nib.Nifti1Image(np.stack([vol, 255 - vol, vol // 2], axis=3), np.eye(4)), tmp_path / "t.nii.gz")
    assert frame_count(tmp_path / "t.nii.gz") == 3
    assert np.array_equal(read_image(tmp_path / "t.nii.gz", 1)[..., 0], sl[1])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2, 3), np.float32), np.eye(4)), tmp_path / "five.nii")
    with pytest.raises(UnreadableImageError, match="5-D NIfTI"):
        read_image(tmp_path / "five.nii")
    nib.save(nib.Nifti1Image(sl[0].T[::-1, ::-1].copy(), np.eye(4)), tmp_path / "flat.nii")
    assert frame_count(tmp_path / "flat.nii") == 1
    assert np.array_equal(read_image(tmp_path / "flat.nii")[..., 0], sl[0])
    assert [p.name for p in list_images(tmp_path / "flat.nii", slices="all")] == ["flat.nii"]


def test_intensities_windowed_per_volume(tmp_path):
    sl = _slices(4)
    vol = ras_volume(sl).astype(np.float32) * 7.5 - 300.0  # scanner units, not 0..255
    vol[0, 0, 0] = 1e6  # one hot voxel must not crush the contrast (99.5th percentile)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "f.nii.gz")
    a, b = read_image(tmp_path / "f.nii.gz", 0)[..., 0], read_image(tmp_path / "f.nii.gz", 3)[..., 0]
    assert a.min() == 0 and b.max() == 255
    assert int(b.astype(int).mean() - a.astype(int).mean()) > 20  # one window per volume: slice 3 is brighter
    # Header scaling (scl_slope/scl_inter) is applied; whole 0..255 values are kept.
    img = nib.Nifti1Image(ras_volume(sl).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, tmp_path / "i16.nii")
    assert np.array_equal(read_image(tmp_path / "i16.nii", 2)[..., 0], sl[2])
    assert window_volume(np.array([[[0.5, 2.0]]])).max() == 255


def test_truncated_and_bogus_files(tmp_path):
    nib.save(nib.Nifti1Image(ras_volume(_slices()), np.eye(4)), tmp_path / "v.nii.gz")
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.nii").write_text("hello")
    nib.save(nib.Nifti1Image(ras_volume(_slices()), np.eye(4)), tmp_path / "raw.nii")
    (tmp_path / "rawcut.nii").write_bytes((tmp_path / "raw.nii").read_bytes()[:1000])
    for name in ("cut.nii.gz", "text.nii", "rawcut.nii"):
        with pytest.raises(UnreadableImageError) as exc:
            read_image(tmp_path / name)
        assert "truncated or corrupt" in exc.value.reason and "\n" not in exc.value.reason, name
    with pytest.raises(UnreadableImageError, match="out of range"):
        read_image(tmp_path / "v.nii.gz", 5)


def test_slice_selection():
    assert select_frames(10, "middle") == [5] and select_frames(1, "all") == [0]
    assert select_frames(10, "all") == list(range(10))
    assert select_frames(10, 3) == [1, 5, 8] and select_frames(10, 1) == [5] and select_frames(4, 9) == [0, 1, 2, 3]
    assert parse_slices(" ALL ") == "all" and parse_slices("7") == 7 and parse_slices(None) == "middle"
    for bad in ("0", "some", -2, True):
        with pytest.raises(UsageError):
            parse_slices(bad)
    assert TrainConfig(slices="4").slices == 4
    with pytest.raises(UsageError):
        TrainConfig(slices="half")
    assert TrainConfig.from_dict(TrainConfig(slices="all").to_dict()).slices == "all"
    assert run_slices({"data": {"slices": 3}}) == 3 and run_slices({}) == "middle"


def test_discover_volumes_group_their_slices(tmp_path):
    for cls in ("yes", "no"):
        (tmp_path / cls).mkdir()
        nib.save(nib.Nifti1Image(ras_volume(_slices(9)), np.eye(4)), tmp_path / cls / "v.nii.gz")
        Image.fromarray(_slices(1)[0]).save(tmp_path / cls / "a.png")
    ds = discover(tmp_path, slices=3)
    vols = [r for r in ds.records if r.frame is not None]
    assert [r.name for r in vols] == ["v.nii.gz#1", "v.nii.gz#4", "v.nii.gz#7"] * 2
    assert len({r.group for r in vols}) == 2 and all(r.group == str(r.path) for r in vols)
    assert [p.name for p in ds.paths].count("v.nii.gz#4") == 2
    # Groups survive "no duplicate grouping": slices of one volume never straddle a split.
    from braintumor.data.split import assert_disjoint_groups, kfold

    flat = ds.with_groups([None] * len(ds))
    assert flat.groups is not None
    for _, _, tr, te in kfold(flat.labels, flat.groups, n_splits=2):
        assert_disjoint_groups(flat.groups, tr, te)
    # The fingerprint covers slice references (and changes with the volume's bytes).
    from braintumor.data.discover import fingerprint

    fp = fingerprint(ds.paths, tmp_path)
    nib.save(nib.Nifti1Image(ras_volume(_slices(9))[::-1].copy(), np.eye(4)), tmp_path / "yes" / "v.nii.gz")
    assert fingerprint(ds.paths, tmp_path) != fp


def test_summarise_volume():
    preds = [{"path": "/d/v.nii.gz#2", "label": "no", "probabilities": {"no": 0.9, "yes": 0.1}},
             {"path": "/d/v.nii.gz#5", "label": "yes", "probabilities": {"no": 0.3, "yes": 0.7}},
             {"path": "/d/v.nii.gz#8", "label": None, "probabilities": {}, "error": "boom"},
             {"path": "/d/w.nii.gz#1", "label": "no", "probabilities": {"no": 0.8, "yes": 0.2}},
             {"path": "/d/plain.png", "label": "yes", "probabilities": {"no": 0.1, "yes": 0.9}}]
    v, w = summarise_volumes(preds)
    assert (v.source, v.label, v.tumour_probability, v.slice, v.n_slices) == ("/d/v.nii.gz", "yes", 0.7, 5, 3)
    assert v.errors == [("/d/v.nii.gz#8", "boom")] and v.slice_path == "/d/v.nii.gz#5"
    assert (w.label, w.tumour_probability, w.slice) == ("no", 0.2, 1)
    # Four classes: tumour probability = 1 - p(notumor).
    four = [{"path": "x.nii#0", "label": "notumor",
             "probabilities": {"glioma": 0.1, "meningioma": 0.1, "notumor": 0.7, "pituitary": 0.1}},
            {"path": "x.nii#1", "label": "glioma",
             "probabilities": {"glioma": 0.5, "meningioma": 0.2, "notumor": 0.2, "pituitary": 0.1}}]
    s = summarise_volume(four)
    assert s.label == "glioma" and s.slice == 1 and s.tumour_probability == pytest.approx(0.8)
    assert s.to_dict()["slice"] == 1
    with pytest.raises(ValueError):
        summarise_volume(preds)


def test_predict_and_explain_nifti_volume_like_png(trained_run, tmp_path):
    pred = trained_run.predictor()
    rng = np.random.default_rng(11)
    imgs = [make_phantom(rng, 64, tumour=bool(k % 2))[0] for k in range(6)]
    # Same phantoms, stored LPS (flipped x, y) so the canonical reorientation is exercised.
    lps = ras_volume(imgs)[::-1, ::-1].copy()
    nib.save(nib.Nifti1Image(lps, np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "vol.nii.gz")
    pngs = []
    for k, im in enumerate(imgs):
        pngs.append(tmp_path / f"s{k}.png")
        Image.fromarray(im).save(pngs[-1])
    refs = list_images(tmp_path / "vol.nii.gz", slices="all")
    assert len(refs) == 6
    p_vol, p_png = pred.predict_paths(refs), pred.predict_paths(pngs)
    assert [p.label for p in p_vol] == [p.label for p in p_png]
    for a, b in zip(p_vol, p_png, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    (vol,) = summarise_volumes(p_vol, pred.positive_class)
    best = int(np.argmax([p.probabilities["yes"] for p in p_png]))
    assert vol.slice == best and vol.label == p_png[best].label
    # Without a slice reference a volume reads as its middle slice.
    assert pred.predict_paths([tmp_path / "vol.nii.gz"])[0].label == p_png[3].label
    try:
        from braintumor.explanation import explain
    except ImportError:
        pytest.skip("braintumor.explanation is not available")
    for k in (2, 3):
        e_vol, e_png = explain(pred, refs[k]), explain(pred, pngs[k])
        assert e_vol.label == e_png.label
        assert np.allclose(e_vol.heatmap, e_png.heatmap, atol=1e-5)


def test_cli_predict_volume_slices_and_summary(trained_run, tmp_path):
    """`predict --slices all` gives one row per slice and a per-volume summary; `--by-volume` only the latter."""
    import json

    from typer.testing import CliRunner

    from braintumor.cli import app

    rng = np.random.default_rng(5)
    imgs = [make_phantom(rng, 64, tumour=k == 4)[0] for k in range(6)]
    nib.save(nib.Nifti1Image(ras_volume(imgs), np.eye(4)), tmp_path / "vol.nii.gz")
    Image.fromarray(imgs[0]).save(tmp_path / "plain.png")
    run = str(trained_run.run_dir)
    runner = CliRunner()
    res = runner.invoke(app, ["predict", run, str(tmp_path / "vol.nii.gz"), "--slices", "all", "--backend", "torch",
                              "-f", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["predictions"]
    assert [r["path"].rsplit("#", 1)[1] for r in rows] == [str(k) for k in range(6)]
    p_yes = [r["probabilities"]["yes"] for r in rows]
    res = runner.invoke(app, ["predict", run, str(tmp_path / "vol.nii.gz"), str(tmp_path / "plain.png"),
                              "--slices", "all", "--by-volume", "--backend", "torch", "-f", "json"])
    assert res.exit_code == 0, res.output
    vol, plain = json.loads(res.stdout)
    assert vol["n_slices"] == 6 and vol["slice"] == int(np.argmax(p_yes))
    assert vol["tumour_probability"] == pytest.approx(max(p_yes), abs=1e-6)
    assert plain["n_slices"] == 1 and plain["slice"] is None
    res = runner.invoke(app, ["predict", run, str(tmp_path / "vol.nii.gz"), "--slices", "all", "--backend", "torch"])
    assert res.exit_code == 0 and "per volume" in res.stdout
    # The run was trained on middle slices: by default a volume is one row.
    res = runner.invoke(app, ["predict", run, str(tmp_path / "vol.nii.gz"), "--backend", "torch", "-f", "json"])
    assert json.loads(res.stdout)["n"] == 1
