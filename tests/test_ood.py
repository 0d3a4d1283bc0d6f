"""The input check (braintumor.ood): rules, feature distance, fitted at training, persisted, exported, switched off."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.ood import (
    FLOAT_SLACK,
    NOT_BRAIN,
    UNCERTAIN,
    UNFAMILIAR,
    FeatureDistance,
    InputCheck,
    InputRules,
    coverage_curve,
    image_stats,
    threshold_from,
    verdict,
)
from conftest import copy_run, old_run_copy

runner = CliRunner()


def _head(size: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    img[(yy - size / 2) ** 2 / (0.4 * size) ** 2 + (xx - size / 2) ** 2 / (0.32 * size) ** 2 < 1] = 110
    img += rng.normal(0, 8, img.shape) * (img > 0)
    img[size // 3:size // 2, size // 3:size // 2] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


def test_rules_pass_a_head_and_refuse_the_obvious():
    rules = InputRules()
    head = _head()
    assert rules.reasons(image_stats(head)) == []
    assert rules.reasons(image_stats(np.repeat(head[..., None], 3, axis=2))) == []
    # a 16-bit scan is scaled first, the same verdict
    assert rules.reasons(image_stats(head.astype(np.uint16) * 200)) == []
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert any("colour" in r for r in rules.reasons(image_stats(photo)))
    assert any("contrast" in r for r in rules.reasons(image_stats(np.full((128, 128), 90, np.uint8))))
    assert any("aspect" in r for r in rules.reasons(image_stats(np.resize(head, (60, 400)))))
    page = np.full((300, 300), 250, np.uint8)
    page[50:60, 30:270] = 0
    assert any("background" in r for r in rules.reasons(image_stats(page)))
    assert any("small" in r for r in rules.reasons(image_stats(_head(24))))


def test_rules_round_trip_and_reject_non_numbers():
    r = InputRules(max_colour=5.0)
    assert InputRules.from_dict(r.to_dict()) == r
    from braintumor.errors import RunError

    with pytest.raises(RunError, match="max_colour"):
        InputRules.from_dict({"max_colour": "lots"})


def test_feature_distance_ranks_far_points_higher_and_torch_agrees():
    import torch

    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 16)) * 3 + 10
    f = centres[y] + rng.normal(size=(300, 16))
    d = FeatureDistance().fit(f, y)
    inside = d.distance(centres[y[:50]] + rng.normal(size=(50, 16)))
    outside = d.distance(-centres[y[:50]] + rng.normal(size=(50, 16)) * 3)
    assert outside.min() > inside.max()
    # the graph module (ONNX export) computes distance / threshold
    t = threshold_from(inside)
    mod = d.torch_module(t)
    x = -centres[y[:50]]
    got = mod(torch.from_numpy(x).float()).numpy()
    ref = d.distance(x) / t
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_threshold_covers_the_validation_split_and_verdict_order():
    rng = np.random.default_rng(0)
    d = np.exp(rng.normal(3.0, 0.2, 40))
    t = threshold_from(d, 0.99)
    assert t >= d.max()
    assert t < d.max() * 1.5
    assert threshold_from(d, 0.999) >= t
    t_max = threshold_from(d, 0.5)  # the median is below the largest distance: the largest sets the threshold
    assert t_max == pytest.approx(d.max() * (1 + FLOAT_SLACK), rel=1e-12)
    assert np.float32(d.max()) / np.float32(t_max) < 1  # its image stays in despite float32 rounding
    assert verdict("yes", 0.99, ["colour image"], 0.1, 0.6) == NOT_BRAIN
    assert verdict("yes", 0.99, [], 1.2, 0.6) == UNFAMILIAR
    assert verdict("yes", 0.55, [], 0.5, 0.6) == UNCERTAIN
    assert verdict("yes", 0.95, [], 0.5, 0.6) == "yes"
    c = coverage_curve(np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7]]), [0, 1, 1], [0.5, 0.8])
    assert c["coverage"] == [1.0, 0.3333] and c["accuracy"] == [0.6667, 1.0]


# ---------------------------------------------------------------------------------------- on a trained run


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """60 non-brain images (every kind) written as files: photos, documents, CT, noise, odd phantoms..."""
    from braintumor.data.nonbrain import non_brain_corpus, write_corpus

    out = tmp_path_factory.mktemp("nonbrain")
    write_corpus(non_brain_corpus(seed=0, limit=60), out)
    return out


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".dcm"))


def test_training_fits_the_check_and_it_separates_brains_from_the_rest(trained_run, phantoms_test, corpus_dir):
    from braintumor.inference import load_run

    meta = json.loads((trained_run.run_dir / "metadata.json").read_text())
    entry = meta["input_check"]
    assert entry["file"] == "ood.npz" and (trained_run.run_dir / "ood.npz").is_file()
    assert entry["threshold"] > 0 and entry["summary"]["val_flagged_unfamiliar"] <= 0.02
    pred = load_run(trained_run.run_dir)
    assert pred.has_input_check
    brains = pred.predict_paths(_images(phantoms_test / "yes") + _images(phantoms_test / "no"))
    flagged = np.mean([not r.in_distribution for r in brains])
    assert flagged <= 0.05, flagged
    assert all(r.verdict in (*pred.classes, UNCERTAIN) for r in brains if r.in_distribution)
    others = [r for r in pred.predict_paths(_images(corpus_dir)) if r.ok]
    assert len(others) >= 50
    caught = np.mean([r.verdict in (NOT_BRAIN, UNFAMILIAR) for r in others])
    assert caught >= 0.95, [(Path(r.path).name, r.ood_score) for r in others if r.in_distribution]
    assert all(r.label in pred.classes for r in others)  # the model's class stays available for inspection


def test_check_persists_reloads_and_exports_to_onnx(trained_run, phantoms_test, corpus_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from braintumor.data.cache import load_images
    from braintumor.export import OOD_OUTPUT, OnnxPredictor, export_onnx
    from braintumor.inference import load_run

    pred = load_run(trained_run.run_dir)
    files = _images(phantoms_test / "yes")[:8] + _images(corpus_dir)[:8]
    loaded = load_images(files, pred.preprocessor, stats=True)
    a = pred.outputs_prepared(loaded.images).scores
    again = load_run(trained_run.run_dir).outputs_prepared(loaded.images).scores
    np.testing.assert_array_equal(a, again)  # thresholds and arrays reload exactly
    res = export_onnx(pred, tmp_path / "m.onnx")
    onnx = OnnxPredictor(res.path)
    assert onnx.has_input_check and OOD_OUTPUT in {o.name for o in onnx.session.get_outputs()}
    b = onnx.outputs_prepared(loaded.images).scores
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    rows_t = pred.predict_paths(files)
    rows_o = onnx.predict_paths(files)
    assert [r.verdict for r in rows_t] == [r.verdict for r in rows_o]


def test_old_run_without_a_check_predicts_as_before_and_can_be_fitted(trained_run, phantoms_test, corpus_dir,
                                                                     tmp_path):
    from braintumor.inference import load_run

    old = old_run_copy(trained_run.run_dir, tmp_path / "old")
    pred = load_run(old)
    assert pred.input_check is None and not pred.has_input_check
    assert pred.input_check_info()["available"] is False
    rows = pred.predict_paths(_images(corpus_dir)[:5])
    assert all(r.verdict == r.label and r.in_distribution is None and r.ood_score is None for r in rows if r.ok)
    r = runner.invoke(app, ["predict", str(old), str(_images(corpus_dir)[0]), "--backend", "torch"])
    assert r.exit_code == 0, r.output
    assert "no input check" in r.output
    # fit one from the run's own split: the same threshold as the one fitted at training
    from braintumor.report import CHECK_SECTION, refresh_report_section

    (old / "report.html").write_bytes((trained_run.run_dir / "report.html").read_bytes())
    refresh_report_section(old, CHECK_SECTION)  # the report of a run without a check says so ...
    assert "This run has no input check" in (old / "report.html").read_text()
    r = runner.invoke(app, ["fit-input-check", str(old)])
    assert r.exit_code == 0, r.output
    page = (old / "report.html").read_text()  # ... and fit-input-check rewrites that section
    assert "This run has no input check" not in page and "ood_score on the run's own splits" in page
    assert (old / "ood.npz").is_file()
    fitted = json.loads((old / "metadata.json").read_text())["input_check"]
    original = json.loads((trained_run.run_dir / "metadata.json").read_text())["input_check"]
    assert fitted["threshold"] == pytest.approx(original["threshold"], rel=1e-3)
    assert load_run(old).has_input_check


def test_predict_cli_columns_and_no_ood_check(trained_run, corpus_dir, phantoms_test, tmp_path):
    files = [str(p) for p in _images(corpus_dir)[:6] + _images(phantoms_test / "no")[:3]]
    out = tmp_path / "p.csv"
    r = runner.invoke(app, ["predict", str(trained_run.run_dir), *files, "--backend", "torch", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert {"verdict", "in_distribution", "ood_score", "ood_reasons"} <= set(rows[0])
    assert sum(row["verdict"] in (NOT_BRAIN, UNFAMILIAR) for row in rows[:6]) >= 5
    assert all(row["in_distribution"] == "1" for row in rows[6:])
    r = runner.invoke(app, ["predict", str(trained_run.run_dir), *files, "--backend", "torch", "--format", "json",
                            "--no-ood-check"])
    assert r.exit_code == 0, r.output
    preds = json.loads(r.stdout)["predictions"]
    assert all(p["verdict"] == p["label"] and p["in_distribution"] is None for p in preds)
    r = runner.invoke(app, ["predict", str(trained_run.run_dir), *files[:6], "--backend", "torch"])
    assert r.exit_code == 0 and ("not_brain_mri" in r.output or "unfamiliar" in r.output)


def test_explain_writes_no_map_for_a_rejected_input(trained_run, phantoms_test, tmp_path):
    from braintumor.explanation import explain

    photo = np.random.default_rng(0).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    ex = explain(trained_run.run_dir, photo, method="gradcam")
    assert ex.withheld and ex.verdict == NOT_BRAIN
    ex.figure()  # the refusal, not a map
    Image.fromarray(photo).save(tmp_path / "photo.png")
    brain = _images(phantoms_test / "yes")[0]
    r = runner.invoke(app, ["explain", str(trained_run.run_dir), str(tmp_path / "photo.png"), str(brain),
                            "--out", str(tmp_path / "ex"), "--method", "gradcam"])
    assert r.exit_code == 0, r.output
    assert "not explained" in r.output
    written = sorted(p.name for p in (tmp_path / "ex").glob("*.png"))
    assert not any(n.startswith("photo") for n in written) and any(n.startswith(brain.stem) for n in written)


def test_tampered_check_files_give_one_line_errors(trained_run, tmp_path):
    from braintumor.errors import RunError
    from braintumor.inference import load_run

    run = copy_run(trained_run.run_dir, tmp_path / "bad")
    (run / "ood.npz").write_bytes(b"not an npz")
    with pytest.raises(RunError, match="ood.npz"):
        load_run(run)
    buf = io.BytesIO()
    np.savez(buf, means=np.zeros((2, 3), np.float32), whiten=np.full((3, 3), np.nan, np.float32))
    (run / "ood.npz").write_bytes(buf.getvalue())
    with pytest.raises(RunError, match="not finite|does not match"):
        load_run(run)
    shutil.copy2(trained_run.run_dir / "ood.npz", run / "ood.npz")
    meta = json.loads((run / "metadata.json").read_text())
    meta["input_check"]["threshold"] = "high"
    (run / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="threshold"):
        load_run(run)
    r = runner.invoke(app, ["predict", str(run), str(run / "ood.npz"), "--backend", "torch"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "threshold" in r.output
    # an ood.npz holding a pickled object is refused, not unpickled
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    meta["input_check"]["threshold"] = 1.0
    (run / "metadata.json").write_text(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, means=np.array([{"a": 1}], dtype=object), whiten=np.eye(3, dtype=np.float32))
    (run / "ood.npz").write_bytes(buf.getvalue())
    with pytest.raises(RunError, match="ood.npz"):
        assert InputCheck.from_metadata(meta, run) is None
