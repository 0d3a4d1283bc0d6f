"""Cross-validation on phantoms: every file written, folds group-disjoint, test folds never used for choices."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.crossval import CV_METRICS, LABEL_CHECK_BELOW, cv, labels_to_check
from braintumor.data.discover import discover
from braintumor.errors import DataError, UsageError

TINY_CV = dict(model="cnn", img_size=64, epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def small_folder(phantoms):
    """60 phantoms in groups of 3 (as if each scan had two near-copies)."""
    ds = discover(phantoms)
    idx = [i for c in (0, 1) for i in np.flatnonzero(np.asarray(ds.labels) == c)[:30]]
    sub = ds.subset(idx)
    return sub.with_groups([f"g{i // 3}" for i in range(len(sub))])


@pytest.fixture(scope="module")
def cv_result(small_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "cv"
    return cv(small_folder, folds=3, out=out, show_leakage=True, **TINY_CV)


def test_cv_writes_every_file(cv_result):
    out = cv_result.out_dir
    for name in ("cv.json", "folds.csv", "oof_predictions.csv", "confusion_matrix.png", "roc.png", "calibration.png",
                 "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for f in range(3):
        fold = out / "folds" / f"r0-f{f}"
        for name in ("metadata.json", "metrics.json", "checkpoints/best.pt", "test/metrics.json",
                     "test/predictions.csv", "report.html"):
            assert (fold / name).is_file(), (fold, name)
        assert not (fold / "checkpoints" / "last.pt").exists()  # optimizer state dropped
    doc = json.loads((out / "cv.json").read_text())
    assert doc["grouped"] and doc["n_groups"] == 20 and doc["n_oof"] == 60
    for k in ("accuracy", "roc_auc", "sensitivity", "specificity", "mcc", "pr_auc", "balanced_accuracy", "f1"):
        s = doc["summary"][k]
        assert s["n"] == 3 and s["low"] <= s["mean"] <= s["high"], k
    assert doc["summary"]["seconds_per_fold"]["mean"] > 0
    rows = list(csv.DictReader(open(out / "folds.csv")))
    assert len(rows) == 3 and all(float(r["seconds"]) > 0 for r in rows)
    assert set(CV_METRICS) <= set(rows[0])


def test_cv_measures_the_input_check_on_held_out_folds(cv_result):
    """Each held-out image is assessed by the input check of the fold that never saw it; cv.json pools them."""
    out = cv_result.out_dir
    doc = json.loads((out / "cv.json").read_text())
    ic = doc["input_check"]
    assert ic == cv_result.input_check and ic["n"] == doc["n_oof"] == 60
    parts = [json.loads((out / "folds" / f"r0-f{f}" / "test" / "metrics.json").read_text())["input_check"]
             for f in range(3)]
    assert sum(p["n"] for p in parts) == 60
    for key in ("flagged", "not_brain_mri", "unfamiliar", "uncertain", "answered"):
        assert ic["counts"][key] == sum(p["counts"][key] for p in parts), key
    assert ic["counts"]["flagged"] == ic["counts"]["not_brain_mri"] + ic["counts"]["unfamiliar"]
    assert ic["flagged"] == round(ic["counts"]["flagged"] / 60, 4)
    lo, hi = ic["flagged_ci"]
    assert 0.0 <= lo <= ic["flagged"] <= hi <= 1.0 and hi - lo > 0.02
    assert [f["flagged"] for f in doc["folds"]] == [p["flagged"] for p in parts]
    # phantoms like the training ones: the check lets most of them through
    assert ic["flagged"] <= 0.25
    assert "Input check on held-out folds" in (out / "report.html").read_text()


def test_wilson_interval_matches_the_textbook_values():
    from braintumor.stats import wilson_ci

    lo, hi = wilson_ci(1, 10)
    assert round(lo, 4) == 0.0179 and round(hi, 4) == 0.4042  # Wilson score interval, z = 1.96
    assert wilson_ci(0, 50)[0] == 0.0 and wilson_ci(50, 50)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_ci(11, 10)


def test_labels_to_check_lists_confident_contradictions_averaged_over_repeats():
    p = lambda *v: np.array(v)  # noqa: E731
    oof = [(0, 0, "no/a.png", "g1", 0, 1, p(0.05, 0.95)), (1, 2, "no/a.png", "g1", 0, 1, p(0.15, 0.85)),  # mean 0.10
           (0, 1, "yes/b.png", "g2", 1, 0, p(0.90, 0.10)), (1, 0, "yes/b.png", "g2", 1, 1, p(0.40, 0.60)),  # 0.35
           (0, 2, "yes/c.png", "g3", 1, 0, p(0.99, 0.01)), (1, 1, "yes/c.png", "g3", 1, 0, p(0.97, 0.03)),  # 0.02
           (0, 0, "no/d.png", "g4", 0, 0, p(0.70, 0.30)), (1, 1, "no/d.png", "g4", 0, 0, p(0.80, 0.20))]
    got = labels_to_check(oof, ["no", "yes"])
    assert [(d["path"], d["label"], d["predicted"]) for d in got] == [("yes/c.png", "yes", "no"),
                                                                      ("no/a.png", "no", "yes")]
    assert got[0]["p_label"] == pytest.approx(0.02) and got[1]["folds"] == [0, 2]
    three = labels_to_check([(0, 0, "x", "x", 2, 0, p(0.5, 0.4, 0.1))], ["a", "b", "c"])
    assert three[0]["predicted"] == "a" and labels_to_check(oof, ["no", "yes"], below=0.01) == []


def test_cv_reports_the_labels_to_check(cv_result):
    doc = json.loads((cv_result.out_dir / "cv.json").read_text())
    rows = {r["path"]: r for r in csv.DictReader(open(cv_result.out_dir / "oof_predictions.csv"))}
    expected = sorted(path for path, r in rows.items() if float(r["p_" + r["label"]]) < LABEL_CHECK_BELOW)
    assert sorted(d["path"] for d in doc["labels_to_check"]) == expected
    assert doc["labels_to_check"] == cv_result.labels_to_check
    assert "Labels to check" in (cv_result.out_dir / "report.html").read_text()


def test_cv_folds_are_group_disjoint_and_cover_everything(cv_result, small_folder):
    rows = list(csv.DictReader(open(cv_result.out_dir / "oof_predictions.csv")))
    assert sorted(r["path"] for r in rows) == sorted(map(str, small_folder.paths))  # each image tested once
    fold_of_group: dict[str, set] = {}
    for r in rows:
        fold_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert len(fold_of_group) == 20 and all(len(f) == 1 for f in fold_of_group.values())
    # The test fold chose nothing: each fold's training + inner validation images exclude its test images.
    for f in range(3):
        fold = cv_result.out_dir / "folds" / f"r0-f{f}"
        used = {r["path"] for r in csv.DictReader(open(fold / "split.csv"))}
        tested = {r["path"] for r in rows if r["fold"] == str(f)}
        assert tested and not used & tested
        groups_used = {small_folder.groups[list(map(str, small_folder.paths)).index(p)] for p in used}
        assert not groups_used & {r["group"] for r in rows if r["fold"] == str(f)}


def test_cv_pooled_metrics_and_leakage(cv_result):
    assert cv_result.pooled["n"] == 60
    ci = cv_result.pooled_ci
    assert ci["unit"] == "group" and ci["n_units"] == 20
    assert ci["accuracy"]["low"] <= cv_result.pooled["accuracy"] <= ci["accuracy"]["high"]
    naive = cv_result.naive
    assert naive is not None and not naive.grouped and (naive.out_dir / "oof_predictions.csv").is_file()
    leak = cv_result.leakage["accuracy"]
    assert leak["inflation"] == pytest.approx(naive.summary["accuracy"]["mean"] - cv_result.summary["accuracy"]["mean"])
    naive_rows = list(csv.DictReader(open(naive.out_dir / "oof_predictions.csv")))
    assert all(r["group"] == r["path"] for r in naive_rows)  # image-level: no groups
    page = (cv_result.out_dir / "report.html").read_text()
    assert 'id="leakage"' in page and "inflation" in page


def test_cv_bad_settings(small_folder, tmp_path):
    with pytest.raises(UsageError):
        cv(small_folder, folds=1, out=tmp_path / "a", **TINY_CV)
    with pytest.raises(DataError):
        cv(small_folder.subset(range(0, 60, 10)), folds=5, out=tmp_path / "b", **TINY_CV)


def test_cv_cli(phantoms, tmp_path):
    data = tmp_path / "data"
    for cls in ("yes", "no"):
        (data / cls).mkdir(parents=True)
        for p in sorted((phantoms / cls).glob("*.png"))[:12]:
            shutil.copy(p, data / cls / p.name)
    r = CliRunner().invoke(app, ["cv", str(data), "--folds", "2", "--model", "cnn", "--img-size", "64", "--epochs",
                                 "1", "--class-weights", "--out", str(tmp_path / "cv")])
    assert r.exit_code == 0, r.output
    folds = sorted((tmp_path / "cv").glob("folds/*/config.yaml"))
    assert len(folds) == 2 and all("class_weights: true" in f.read_text() for f in folds)  # options reach the folds
    assert "mean [95% CI]" in r.output and "wall time per fold" in r.output
    assert "held-out images flagged" in r.output  # the input check's false-alarm rate, measured on the folds
    assert (tmp_path / "cv" / "report.html").is_file()
    r = CliRunner().invoke(app, ["cv", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["cv", "--help"])
    assert "Example:" in r.output
