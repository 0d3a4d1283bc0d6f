"""The CLI: one-line errors with exit codes, unreadable files skipped and counted, evaluate on a new folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from braintumor.cli import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_of_every_command_has_an_example():
    res = _invoke("--help")
    assert res.exit_code == 0
    for cmd in ("synth", "train", "evaluate", "models"):
        r = _invoke(cmd, "--help")
        assert r.exit_code == 0 and "Example:" in r.output, cmd


def test_empty_class_folder_exit_2_one_line(tmp_path):
    (tmp_path / "yes").mkdir()
    (tmp_path / "no").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "yes" / "a.png")
    r = _invoke("train", tmp_path, "--model", "cnn", "--out", tmp_path / "run")
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert "'no' has no images" in r.output


def test_single_class_and_no_images_exit_2(tmp_path):
    (tmp_path / "yes").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "yes" / "a.png")
    r = _invoke("train", tmp_path, "--model", "cnn")
    assert r.exit_code == 2 and "only one class" in r.output
    r = _invoke("train", tmp_path / "nothing-here")
    assert r.exit_code == 2 and "no such folder" in r.output


def test_unknown_model_and_bad_config(tmp_path):
    r = _invoke("train", tmp_path, "--model", "vgg99")
    assert r.exit_code == 2 and "unknown model" in r.output
    bad = tmp_path / "c.yaml"
    bad.write_text("epochz: 3\n")
    r = _invoke("train", tmp_path, "--config", bad)
    assert r.exit_code == 2 and "unknown config key" in r.output


def _small_copy(phantoms, dst, n=30):
    for cls in ("yes", "no"):
        (dst / cls).mkdir(parents=True)
        for p in sorted((phantoms / cls).glob("*.png"))[:n]:
            shutil.copy(p, dst / cls / p.name)


def test_unreadable_files_skipped_and_counted(phantoms, tmp_path):
    data = tmp_path / "data"
    _small_copy(phantoms, data)
    good = next((data / "yes").glob("*.png")).read_bytes()
    (data / "yes" / "truncated.png").write_bytes(good[: len(good) // 3])
    (data / "no" / "notes.jpg").write_text("not an image")
    r = _invoke("train", data, "--model", "cnn", "--img-size", "32", "--epochs", "1", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "truncated.png" in r.output and "notes.jpg" in r.output
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert {s["path"].split("/")[-1] for s in meta["data"]["skipped"]} == {"truncated.png", "notes.jpg"}
    assert meta["data"]["n_train"] + meta["data"]["n_val"] == 60
    # --strict makes it fatal, with one line naming the file.
    r = _invoke("train", data, "--model", "cnn", "--img-size", "32", "--epochs", "1", "--strict",
                "--out", tmp_path / "run2")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert ("truncated.png" in r.output) or ("notes.jpg" in r.output)


def test_evaluate_on_new_folder(trained_run, phantoms_test, tmp_path):
    r = _invoke("evaluate", trained_run.run_dir, "--data", phantoms_test, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n"] == 100 and m["accuracy"] >= 0.85
    for f in ("confusion_matrix.png", "roc.png", "predictions.csv"):
        assert (tmp_path / "ev" / f).is_file()


def test_synth_writes_masks(tmp_path):
    r = _invoke("synth", tmp_path / "ph", "--n", "10", "--size", "48", "--seed", "1")
    assert r.exit_code == 0, r.output
    yes = sorted((tmp_path / "ph" / "yes").glob("*.png"))
    assert len(yes) == 5 and len(list((tmp_path / "ph" / "no").glob("*.png"))) == 5
    for p in yes:
        mask = np.asarray(Image.open(tmp_path / "ph" / "_masks" / "yes" / p.name))
        assert mask.any()
