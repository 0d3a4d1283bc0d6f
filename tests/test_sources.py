"""Several sources in one run: class maps, discovery, splits, balanced sampling, mapped evaluation, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.data.sources import discover_sources, map_names, parse_class_map, source_names
from braintumor.errors import DataError, UsageError

runner = CliRunner()
CMAP = {"tumour": ["lesion", "yes"], "no_tumour": ["normal", "no"]}


def _renamed(src: Path, dst: Path, names: dict[str, str]) -> Path:
    """A copy of a phantom folder with its class folders renamed (another data set's naming)."""
    for old, new in names.items():
        shutil.copytree(src / old, dst / new)
    return dst


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    from braintumor.data.synthetic import write_phantoms

    base = tmp_path_factory.mktemp("sources")
    write_phantoms(base / "a", n=80, size=64, seed=11)
    write_phantoms(base / "raw_b", n=40, size=64, seed=12)
    b = _renamed(base / "raw_b", base / "b", {"yes": "lesion", "no": "normal"})
    return base / "a", b


def test_parse_class_map_forms_and_errors():
    assert parse_class_map(["tumour=glioma, yes", "no_tumour=notumor,no"]) == {
        "tumour": ["glioma", "yes"], "no_tumour": ["notumor", "no"]}
    assert parse_class_map({"t": "a,b", "n": ["c"]}) == {"t": ["a", "b"], "n": ["c"]}
    assert parse_class_map(None) is None
    for bad, words in [(["tumour"], "expected CLASS=FOLDER"), (["t=a", "n=a"], "mapped to both"),
                       (["t=a,a", "n=b"], "mapped twice"), (["t=a", "t=b"], "given twice"), (["t=a,b"], "two"),
                       (["=a", "n=b"], "needs a name"), (["t=a,", "n=b"], "empty folder"),
                       (["t=n", "n=b"], "also a folder")]:
        with pytest.raises(UsageError, match=words):
            parse_class_map(bad)
    assert map_names(["no", "glioma", "tumour"], {"tumour": ["glioma"], "no_tumour": ["no"]}) == [1, 0, 0]
    with pytest.raises(UsageError, match="'pituitary' is in no class"):
        map_names(["pituitary"], {"tumour": ["glioma"], "no_tumour": ["no"]})


def test_source_names_are_unique_and_readable(tmp_path):
    assert source_names([tmp_path / "x" / "Training", tmp_path / "y" / "Training"]) == ["x/Training", "y/Training"]
    assert source_names([tmp_path / "navoneel", tmp_path / "other"]) == ["navoneel", "other"]


def test_discover_sources_maps_classes_and_keeps_sources(two_sources):
    a, b = two_sources
    ds = discover_sources([a, b], CMAP)
    assert ds.classes == ["tumour", "no_tumour"]
    assert ds.source_counts() == {"a": 80, "b": 40}
    assert set(ds.sources) == {"a", "b"}
    # labels follow the map: every 'lesion' of b and 'yes' of a is tumour (0)
    for r in ds.records:
        assert r.label == (0 if r.path.parent.name in ("yes", "lesion") else 1)
    sub = ds.subset(range(0, len(ds), 2))
    assert sub.source_roots == ds.source_roots and set(sub.sources) == {"a", "b"}
    # strata: (source, class) -> four strata
    assert len(set(ds.strata())) == 4
    # without a map the sources must share folder names: a and b do not
    with pytest.raises(DataError, match="share no class"):
        discover_sources([a, b])


def test_discover_sources_bad_input(two_sources, tmp_path):
    a, b = two_sources
    with pytest.raises(DataError, match=r"\['tumor'\], but no source has a class folder"):
        discover_sources([a, b], {"tumour": ["lesion", "yes", "tumor"], "no_tumour": ["normal", "no"]})
    with pytest.raises(DataError, match="'normal' is in no class"):
        discover_sources([a, b], {"tumour": ["lesion", "yes"], "no_tumour": ["no"]})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        discover_sources([a, empty], CMAP)
    (tmp_path / "hollow" / "normal").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        discover_sources([a, tmp_path / "hollow"], CMAP)
    only_t = _renamed(b, tmp_path / "only_t", {"lesion": "lesion"})
    only_n = _renamed(a, tmp_path / "only_n", {"no": "no"})
    with pytest.raises(DataError, match="share no class"):
        discover_sources([only_t, only_n], {"tumour": ["lesion"], "no_tumour": ["no"]})
    with pytest.raises(UsageError, match="twice"):
        discover_sources([a, a], CMAP)


def test_copies_across_sources_are_one_group(two_sources, tmp_path):
    from braintumor.config import TrainConfig
    from braintumor.training import group_folder

    a, b = two_sources
    b2 = tmp_path / "b2"
    shutil.copytree(b, b2)
    copied = sorted((a / "yes").glob("*.png"))[:3]
    for f in copied:
        shutil.copy(f, b2 / "lesion" / f"copy_{f.name}")
    ds = group_folder(discover_sources([a, b2], CMAP), TrainConfig(data_dir=[str(a), str(b2)]))
    group_of = {r.path.name if r.source == "a" else r.path.name.removeprefix("copy_"): r.group
                for r in ds.records if r.path.name.startswith("copy_") or r.path in copied}
    by_path = {str(r.path): r.group for r in ds.records}
    for f in copied:
        assert by_path[str(f)] is not None and by_path[str(f)] == by_path[str(b2 / "lesion" / f"copy_{f.name}")]
    assert group_of  # the copies were found at all


def test_balanced_order_equalises_sources():
    from braintumor.training import balanced_order

    sources = ["big"] * 900 + ["small"] * 100
    order = balanced_order(sources, seed=0, epoch=3)
    assert len(order) == 1000
    share = np.mean([i >= 900 for i in order])
    assert 0.45 < share < 0.55
    assert order == balanced_order(sources, seed=0, epoch=3)
    assert order != balanced_order(sources, seed=0, epoch=4)
    ranks = [balanced_order(sources, 0, 3, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 500


def test_train_on_two_sources_records_them(two_sources, tmp_path):
    a, b = two_sources
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(a), str(b), "--classes", "tumour=lesion,yes",
                              "--classes", "no_tumour=normal,no", "--model", "cnn", "--img-size", "32",
                              "--epochs", "2", "--balance-sources", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["classes"] == ["tumour", "no_tumour"] and meta["positive_class"] == "tumour"
    assert meta["data"]["class_map"] == {"tumour": ["lesion", "yes"], "no_tumour": ["normal", "no"]}
    src = meta["data"]["sources"]
    assert set(src) == {"a", "b"}
    assert src["a"]["n_train"] + src["a"]["n_val"] == 80 and src["b"]["n_train"] + src["b"]["n_val"] == 40
    # stratified by source: both sources in the validation split, in about their share
    assert src["b"]["n_val"] >= 6 and src["a"]["n_val"] >= 12
    with open(out / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["source"] for r in rows} == {"a", "b"} and len(rows) == 120
    cfg = (out / "config.yaml").read_text()
    assert "balance_sources: true" in cfg and "tumour:" in cfg
    html = (out / "report.html").read_text()
    assert "Several sources" in html and "tumour = lesion, yes" in html


@pytest.mark.parametrize("args, words", [
    (["--classes", "tumour=lesion,yes,tumor", "--classes", "no_tumour=normal,no"], "no source has a class folder"),
    (["--classes", "tumour=lesion,yes,no", "--classes", "no_tumour=normal,no"], "mapped to both"),
    (["--classes", "tumour=lesion,yes"], "at least two classes"),
    (["--classes", "tumour=lesion"], "at least two classes"),
])
def test_train_bad_class_maps_are_one_line_errors(two_sources, tmp_path, args, words):
    a, b = two_sources
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(a), str(b), *args, "--model", "cnn", "--img-size", "32", "--epochs", "1",
                              "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 2
    assert not out.exists()


def test_train_source_without_images_is_an_error(two_sources, tmp_path):
    a, _b = two_sources
    empty = tmp_path / "nothing"
    empty.mkdir()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(a), str(empty), "--model", "cnn", "--out", str(out)])
    assert res.exit_code == 2 and "no class sub-folders" in res.output and not out.exists()


def test_evaluate_with_a_class_map(trained_run, two_sources, tmp_path):
    """A yes/no model evaluated on a folder with other class names; the metrics match a plain evaluation."""
    from braintumor.evaluation import evaluate

    _a, b = two_sources
    raw = b.parent / "raw_b"
    plain = evaluate(trained_run.run_dir, raw, tmp_path / "plain", ci=False)
    mapped = evaluate(trained_run.run_dir, b, tmp_path / "mapped", classes=["yes=lesion", "no=normal"], ci=False)
    assert mapped.metrics["accuracy"] == pytest.approx(plain.metrics["accuracy"])
    assert mapped.metrics["roc_auc"] == pytest.approx(plain.metrics["roc_auc"])
    assert mapped.metrics["class_map"] == {"yes": ["lesion"], "no": ["normal"]}
    res = runner.invoke(app, ["evaluate", str(trained_run.run_dir), "--data", str(b), "--classes", "yes=lesion",
                              "--classes", "no=normal", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["n"] == 40
    # the README's form: common classes named after neither side, each taking model classes and folders
    common = runner.invoke(app, ["evaluate", str(trained_run.run_dir), "--data", str(b), "--classes",
                                 "tumour=yes,lesion", "--classes", "no_tumour=no,normal", "--out",
                                 str(tmp_path / "common")])
    assert common.exit_code == 0, common.output
    got = json.loads((tmp_path / "common" / "metrics.json").read_text())
    assert got["n"] == 40 and got["accuracy"] == pytest.approx(plain.metrics["accuracy"])
    typo = runner.invoke(app, ["evaluate", str(trained_run.run_dir), "--data", str(b), "--classes",
                               "tumour=yes,lesion,lesoin", "--classes", "no_tumour=no,normal"])
    assert typo.exit_code == 2 and "lesoin" in typo.output and "no source has a class folder" in typo.output
    bad = runner.invoke(app, ["evaluate", str(trained_run.run_dir), "--data", str(b), "--classes", "tumour=lesion",
                              "--classes", "no_tumour=normal"])
    assert bad.exit_code == 2 and "model class" in bad.output
    same = runner.invoke(app, ["evaluate", str(trained_run.run_dir), "--data", str(raw), "--out",
                               str(trained_run.run_dir)])
    assert same.exit_code == 2 and "run folder itself" in same.output


def test_collapse_a_four_class_model():
    from braintumor.evaluation import collapse_classes

    proba = np.array([[0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.85, 0.05]])
    out, names = collapse_classes(proba, ["glioma", "meningioma", "notumor", "pituitary"],
                                  {"tumour": ["glioma", "meningioma", "pituitary"], "no_tumour": ["notumor"]})
    assert names == ["tumour", "no_tumour"]
    np.testing.assert_allclose(out, [[0.9, 0.1], [0.15, 0.85]])


@pytest.fixture(scope="module")
def cue_sources(tmp_path_factory):
    """Source A: no-tumour phantoms half as bright (a planted source cue); source B: no cue."""
    from braintumor.data.synthetic import write_phantoms

    base = tmp_path_factory.mktemp("cue")
    write_phantoms(base / "srcA", n=300, size=64, seed=1, normal_gain=0.5)
    write_phantoms(base / "srcB", n=300, size=64, seed=2)
    return base / "srcA", base / "srcB"


def test_cv_by_source_exposes_a_planted_cue_and_a_lever_recovers_it(cue_sources, tmp_path):
    """Trained on A, brightness alone separates the classes: perfect within A, chance on B. Leave-one-source-out
    shows it (and says so); standardising intensities (the lever that removes the cue) recovers B."""
    from braintumor.crossval import cv

    a, b = cue_sources
    kw = dict(by_source=True, model="cnn", img_size=64, epochs=20, batch_size=32, seed=0)
    plain = cv([str(a), str(b)], out=tmp_path / "plain", **kw)
    rows = {(tuple(r["trained_on"]), r["tested_on"]): r for r in plain.rows}
    within_a = rows[(("srcA",), "srcA")]["metrics"]["balanced_accuracy"]
    cross_b = rows[(("srcA",), "srcB")]["metrics"]["balanced_accuracy"]
    assert within_a >= 0.95 and cross_b <= 0.65, (within_a, cross_b)
    assert any("Trained on srcA" in f and "overstates" in f for f in plain.findings)
    doc = json.loads((tmp_path / "plain" / "cv.json").read_text())
    assert doc["kind"] == "by-source" and {r["kind"] for r in doc["rows"]} == {"cross", "within"}
    assert all("low" in r["ci"]["balanced_accuracy"] for r in doc["rows"])
    # each held-out source is also scored by the input check of the model that never saw it
    for r in doc["rows"]:
        if r["kind"] == "cross":
            test_metrics = json.loads((tmp_path / "plain" / r["run"] / "test" / "metrics.json").read_text())
            assert r["flagged"] == test_metrics["input_check"]["flagged"] and 0.0 <= r["flagged"] <= 1.0
    assert doc["errors"] and all(e["source"] in ("srcA", "srcB") for e in doc["errors"])
    html = (tmp_path / "plain" / "report.html").read_text()
    assert "Cross-source errors" in html and "overstates" in html and "could not be built" not in html
    assert (tmp_path / "plain" / "by_source.csv").read_text().count("\n") == len(plain.rows) + 1

    lever = cv([str(a), str(b)], out=tmp_path / "percentile", intensity="percentile", **kw)
    fixed = {(tuple(r["trained_on"]), r["tested_on"]): r for r in lever.rows}
    cross_b_fixed = fixed[(("srcA",), "srcB")]["metrics"]["balanced_accuracy"]
    assert cross_b_fixed >= cross_b + 0.2, (cross_b, cross_b_fixed)


def test_cv_by_source_needs_two_sources(two_sources, tmp_path):
    from braintumor.crossval import cv

    a, _b = two_sources
    with pytest.raises(UsageError, match="at least two sources"):
        cv(str(a), by_source=True, model="cnn", img_size=32, epochs=1, out=tmp_path / "x")
    res = runner.invoke(app, ["cv", str(a), "--by-source", "--model", "cnn", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "at least two sources" in res.output


def test_a_cv_that_fails_keeps_its_finished_folds(two_sources, tmp_path, monkeypatch):
    """A failure before any fold is finished leaves nothing; after one, the finished fold stays (never lose work)."""
    import braintumor.training
    from braintumor.crossval import cv

    a, b = two_sources
    real, calls = braintumor.training.train, []

    def fail_on(n):
        def train(*args, **kw):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kw)
        return train

    kw = dict(by_source=True, model="cnn", img_size=32, epochs=1, batch_size=32, classes=CMAP)
    monkeypatch.setattr(braintumor.training, "train", fail_on(1))
    with pytest.raises(KeyboardInterrupt):
        cv([str(a), str(b)], out=tmp_path / "first", **kw)
    assert not (tmp_path / "first").exists()
    calls.clear()
    monkeypatch.setattr(braintumor.training, "train", fail_on(2))
    with pytest.raises(KeyboardInterrupt):
        cv([str(a), str(b)], out=tmp_path / "second", **kw)
    kept = list((tmp_path / "second" / "folds").glob("*/test/metrics.json"))
    assert len(kept) == 1 and not (tmp_path / "second" / "cv.json").exists()


def test_drop_copies_keeps_the_smaller_side_whole():
    from braintumor.crossval_sources import drop_copies

    groups = ["g0", "g1", "g2", "g3", "g4", "g0", "g5"]
    tr, te, n, side = drop_copies([0, 1, 2, 3, 4], [5, 6], groups)
    assert (tr.tolist(), te.tolist(), n, side) == ([1, 2, 3, 4], [5, 6], 1, "train")
    tr, te, n, side = drop_copies([5, 6], [0, 1, 2, 3, 4], groups)
    assert (tr.tolist(), te.tolist(), n, side) == ([5, 6], [1, 2, 3, 4], 1, "test")


def test_recipe_tumour_detector(two_sources, tmp_path):
    from braintumor.config import TrainConfig

    cfg = TrainConfig.recipe("tumour-detector", data_dir=["x", "y"])
    assert cfg.classes == {"tumour": ["glioma", "meningioma", "pituitary", "yes"], "no_tumour": ["notumor", "no"]}
    with pytest.raises(UsageError, match="unknown recipe 'nope'; known: tumour-detector"):
        TrainConfig.recipe("nope")
    a, _b = two_sources
    res = runner.invoke(app, ["train", str(a), "--recipe", "nope", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown recipe" in res.output and not (tmp_path / "r").exists()


def test_exclude_copies_of_the_training_folder_itself_is_a_one_line_error(two_sources, tmp_path):
    a, _b = two_sources
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(a), "--model", "cnn", "--img-size", "32", "--epochs", "1",
                              "--exclude-copies-of", str(a), "--out", str(out)])
    assert res.exit_code == 2 and "are left once the 80 with a copy" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_a_one_class_source_has_no_specificity():
    """figshare's tumour-only slices: sensitivity is defined, specificity and balanced accuracy are not."""
    from braintumor.crossval_sources import _metrics_with_ci

    y = np.zeros(20, int)  # all 'tumour' (index 0, the positive class)
    proba = np.tile([0.9, 0.1], (20, 1))
    proba[:3] = [0.2, 0.8]
    m, ci = _metrics_with_ci(y, proba, ["tumour", "no_tumour"], "tumour", None, seed=0)
    assert m["sensitivity"] == pytest.approx(17 / 20) and m["specificity"] is None
    assert m["balanced_accuracy"] is None and "specificity" not in ci
