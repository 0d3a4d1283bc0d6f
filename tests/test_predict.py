"""``braintumor predict``: run folder and ONNX agree, unreadable files become error rows, exit codes 0/1/2."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from braintumor.cli import app
from conftest import NAVONEEL, needs_data

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _folder_with_bad_files(src, dst, n=8):
    """A copy of n images per class plus a corrupt JPEG and a text file."""
    for cls in ("yes", "no"):
        (dst / cls).mkdir(parents=True)
        for p in sorted((src / cls).glob("*.png"))[:n]:
            shutil.copy(p, dst / cls / p.name)
    (dst / "yes" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)
    (dst / "no" / "notes.png").write_text("not an image\n")
    return dst


@pytest.fixture(scope="module")
def onnx_model(trained_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from braintumor.export import export_onnx

    return export_onnx(trained_run.run_dir, tmp_path_factory.mktemp("pred_onnx") / "model.onnx").path


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_csv_error_rows_and_exit_1(trained_run, phantoms_test, tmp_path):
    folder = _folder_with_bad_files(phantoms_test, tmp_path / "imgs")
    out = tmp_path / "pred.csv"
    r = _invoke("predict", trained_run.run_dir, folder, "--format", "csv", "--out", out, "--batch-size", "5")
    assert r.exit_code == 1, r.output
    assert "2 of 18 file(s) could not be read" in r.output and "Traceback" not in r.output
    rows = _csv(out.read_text())
    assert len(rows) == 18 and list(rows[0]) == ["path", "label", "p_no", "p_yes", "error"]
    bad = {r["path"].split("/")[-1]: r for r in rows if r["error"]}
    assert set(bad) == {"corrupt.jpg", "notes.png"} and "text" in bad["notes.png"]["error"]
    assert all(r["label"] == "" and r["p_yes"] == "" for r in bad.values())
    good = [r for r in rows if not r["error"]]
    assert all(r["label"] in ("yes", "no") for r in good)
    assert all(abs(float(r["p_no"]) + float(r["p_yes"]) - 1) < 1e-5 for r in good)
    # Same numbers as the Python API (the run's temperature and threshold applied).
    ref = {p.path: p for p in trained_run.predictor().predict_paths([r["path"] for r in good])}
    for row in good:
        assert row["label"] == ref[row["path"]].label
        assert float(row["p_yes"]) == pytest.approx(ref[row["path"]].probabilities["yes"], abs=1e-5)


def test_predict_all_readable_exit_0_json_and_table(trained_run, phantoms_test):
    files = sorted((phantoms_test / "yes").glob("*.png"))[:3]
    r = _invoke("predict", trained_run.run_dir, *files, "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n"] == 3 and out["n_failed"] == 0 and out["model"]["name"] == "cnn"
    assert [p["label"] in ("yes", "no") for p in out["predictions"]] == [True] * 3
    r = _invoke("predict", trained_run.run_dir, str(phantoms_test / "no" / "*.png"))
    assert r.exit_code == 0 and "p(yes)" in r.stdout


def test_predict_onnx_agrees_with_run_folder(trained_run, onnx_model, phantoms_test, tmp_path):
    folder = _folder_with_bad_files(phantoms_test, tmp_path / "imgs", n=20)
    a = _invoke("predict", trained_run.run_dir, folder, "--format", "json")
    b = _invoke("predict", onnx_model, folder, "--format", "json", "--batch-size", "7")
    assert a.exit_code == b.exit_code == 1
    pa, pb = json.loads(a.stdout)["predictions"], json.loads(b.stdout)["predictions"]
    assert [p["path"] for p in pa] == [p["path"] for p in pb]
    assert [p["label"] for p in pa] == [p["label"] for p in pb]
    assert [p["error"] for p in pa] == [p["error"] for p in pb] and sum(p["error"] is not None for p in pa) == 2
    diff = max(abs(p["probabilities"][c] - q["probabilities"][c])
               for p, q in zip(pa, pb, strict=True) if p["error"] is None for c in p["probabilities"])
    assert diff <= 1e-4


def test_predict_usage_errors_exit_2(trained_run, onnx_model, phantoms_test, tmp_path):
    (tmp_path / "empty").mkdir()
    r = _invoke("predict", trained_run.run_dir, tmp_path / "empty")
    assert r.exit_code == 2 and "no image files found" in r.output
    r = _invoke("predict", trained_run.run_dir, phantoms_test, "--format", "xml")
    assert r.exit_code == 2 and "--format" in r.output
    r = _invoke("predict", tmp_path / "no-such-run", phantoms_test)
    assert r.exit_code == 2 and "not a run folder" in r.output
    r = _invoke("predict", onnx_model, phantoms_test, "--heatmaps", tmp_path / "maps")
    assert r.exit_code == 2 and "--heatmaps needs" in r.output
    r = _invoke("predict", trained_run.run_dir)
    assert r.exit_code == 2


def test_predict_missing_file_is_an_error_row(trained_run, phantoms_test, tmp_path):
    good = sorted((phantoms_test / "yes").glob("*.png"))[0]
    r = _invoke("predict", trained_run.run_dir, good, tmp_path / "gone.png", "--format", "csv")
    assert r.exit_code == 1
    rows = _csv(r.stdout)
    assert [row["error"] for row in rows] == ["", "no such file"]


def test_predict_heatmaps(trained_run, phantoms_test, tmp_path):
    pytest.importorskip("braintumor.explain", reason="braintumor.explain (Grad-CAM) not available")
    files = sorted((phantoms_test / "yes").glob("*.png"))[:2]
    r = _invoke("predict", trained_run.run_dir, *files, "--heatmaps", tmp_path / "maps", "--format", "csv")
    assert r.exit_code == 0, r.output
    for f in files:
        ov = tmp_path / "maps" / f"{f.stem}_overlay.png"
        assert ov.is_file()
        arr = np.asarray(Image.open(ov))
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8


@needs_data(NAVONEEL)
def test_predict_navoneel_onnx_and_run_agree_with_a_corrupt_file(trained_run, onnx_model, tmp_path):
    """253 real MRI images (+1 corrupt file): the exported model and the run folder give the same labels."""
    folder = tmp_path / "navoneel"
    shutil.copytree(NAVONEEL, folder)
    (folder / "yes" / "zz_corrupt.jpg").write_bytes((NAVONEEL / "yes").iterdir().__next__().read_bytes()[:300])
    a = _invoke("predict", trained_run.run_dir, folder, "--format", "json")
    b = _invoke("predict", onnx_model, folder, "--format", "json")
    assert a.exit_code == b.exit_code == 1
    pa, pb = json.loads(a.stdout)["predictions"], json.loads(b.stdout)["predictions"]
    assert len(pa) == len(pb) == 254
    assert [p["path"] for p in pa if p["error"]] == [str(folder / "yes" / "zz_corrupt.jpg")]
    assert [p["label"] for p in pa] == [p["label"] for p in pb]
