"""Experiment tracking: a run (and a cross-validation) logged to MLflow and TensorBoard, read back with their own
readers: the config as parameters, one value per epoch, final metrics with their intervals, the run's files and its
ONNX model; a missing package is one line before any work."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.config import TrainConfig
from braintumor.engine import TrainState
from braintumor.errors import UsageError
from braintumor.rundir import RunDir
from conftest import REPO

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TINY = dict(model="cnn", img_size=32, epochs=3, batch_size=16, seed=0)
runner = CliRunner()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from braintumor.data.synthetic import write_phantoms

    out = tmp_path_factory.mktemp("track_data")
    write_phantoms(out, n=60, size=32, seed=0)
    return out


@pytest.fixture(scope="module")
def plain_run(small_data, tmp_path_factory):
    """A finished tiny run, trained without tracking (its hooks are replayed from its files)."""
    from braintumor.training import train

    return train(TrainConfig(data_dir=str(small_data), **TINY), out=tmp_path_factory.mktemp("track_runs") / "tiny")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """No MLFLOW_TRACKING_URI, working directory tmp_path: the default local store ./mlruns/mlflow.db."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def history_of(run_dir) -> list[dict]:
    rows = list(csv.DictReader(open(RunDir(run_dir).history)))
    return [{k: v if k == "phase" else float(v) for k, v in r.items() if v != ""} for r in rows]


def replay(handler, run_dir, fail: BaseException | None = None) -> None:
    """Call the handler's hooks as the engine does, with the run folder's own config, history and metrics."""
    run = RunDir(run_dir)
    meta = json.loads(run.metadata.read_text())
    state = TrainState(cfg=TrainConfig.load(run.config), run=run, meta=meta, classes=meta["classes"])
    handler.on_fit_start(state)
    for row in history_of(run_dir):
        state.history.append(row)
        state.epoch += 1
        handler.on_epoch_end(state)
    if fail is not None:
        handler.on_exception(state, fail)
        return
    state.metrics = json.loads(run.metrics.read_text())
    handler.on_run_complete(state)


def copy_of(run, dst):
    import shutil

    return shutil.copytree(run.run_dir, dst)


def check_mlflow_run(client, run_id: str, run_dir, n_epochs: int) -> None:
    """Parameters, one value per epoch, final metrics with intervals and the artefacts of a tracked run."""
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == run_dir.name
    cfg = TrainConfig.load(RunDir(run_dir).config)
    assert r.data.params["model"] == "cnn" and r.data.params["epochs"] == str(cfg.epochs)
    assert r.data.params["lr"] == "null" and r.data.params["img_size"] == "32"
    hist = history_of(run_dir)
    assert len(hist) == n_epochs
    val_loss = client.get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in val_loss) == list(range(1, n_epochs + 1))
    assert [m.value for m in sorted(val_loss, key=lambda m: m.step)] == pytest.approx([h["val_loss"] for h in hist])
    assert len(client.get_metric_history(run_id, "lr")) == n_epochs
    final = json.loads(RunDir(run_dir).metrics.read_text())
    m = r.data.metrics
    assert m["accuracy"] == pytest.approx(final["accuracy"]) and m["roc_auc"] == pytest.approx(final["roc_auc"])
    assert m["accuracy_ci_low"] == pytest.approx(final["ci"]["accuracy"]["low"])
    assert m["accuracy_ci_high"] == pytest.approx(final["ci"]["accuracy"]["high"])
    assert m["accuracy_ci_low"] <= m["accuracy"] <= m["accuracy_ci_high"]
    assert m["best_epoch"] == final["best_epoch"]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "model_card.md", "config.yaml", "history.csv", "metrics.json", "metadata.json", "roc.png",
            "confusion_matrix.png", "model"} <= names
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.onnx"]
    info = json.loads((run_dir / "tracking.json").read_text())
    assert info["kind"] == "mlflow" and info["run_id"] == run_id


# ---------------------------------------------------------------------------------------- the handler alone


def test_mlflow_resume_continues_the_same_run_and_a_failure_marks_it(plain_run, store):
    from braintumor.tracking import TrackingHandler

    run_dir = copy_of(plain_run, store / "tiny")
    replay(TrackingHandler("mlflow", run_dir), run_dir, fail=RuntimeError("disk full\nsecond line"))
    info = json.loads((run_dir / "tracking.json").read_text())
    client = mlflow.MlflowClient(info["uri"])
    r = client.get_run(info["run_id"])
    assert r.info.status == "FAILED" and r.data.tags["braintumor.failure"] == "RuntimeError: disk full second line"
    replay(TrackingHandler("mlflow", run_dir), run_dir)  # train --resume: the same tracked run, finished
    assert json.loads((run_dir / "tracking.json").read_text())["run_id"] == info["run_id"]
    assert client.get_run(info["run_id"]).info.status == "FINISHED"
    assert len(client.search_runs([info["experiment_id"]])) == 1


def check_tensorboard(run_dir, n_epochs: int) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    hist = history_of(run_dir)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == list(range(1, n_epochs + 1)), key
        assert [e.value for e in events] == pytest.approx([h[key] for h in hist], rel=1e-4), key  # csv: 6 digits
    final = json.loads(RunDir(run_dir).metrics.read_text())
    assert acc.Scalars("final/accuracy")[0].value == pytest.approx(final["accuracy"], rel=1e-6)
    assert acc.Scalars("final/accuracy_ci_low")[0].value == pytest.approx(final["ci"]["accuracy"]["low"], rel=1e-6)
    assert "config/text_summary" in acc.Tags()["tensors"]
    info = json.loads((run_dir / "tracking.json").read_text())
    assert info["kind"] == "tensorboard" and info["uri"] == str((run_dir / "tensorboard").resolve())


def test_fold_runs_nest_under_the_cross_validation_run(plain_run, tmp_path, monkeypatch):
    from braintumor.tracking import TrackingHandler, track_group

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    cv_dir = tmp_path / "cv"
    with track_group("mlflow", cv_dir, {"folds": 2}) as group:
        for f in range(2):
            replay(TrackingHandler("mlflow", cv_dir / "folds" / f"r0-f{f}"),
                   copy_of(plain_run, cv_dir / "folds" / f"r0-f{f}"))
        group.complete({"accuracy": 0.75, "accuracy_ci_low": 0.5, "accuracy_ci_high": 0.9}, [])
    client = mlflow.MlflowClient(uri)
    parent = json.loads((cv_dir / "tracking.json").read_text())["run_id"]
    runs = client.search_runs([client.get_experiment_by_name("braintumor").experiment_id])
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 3 and sorted(r.info.run_name for r in kids) == ["folds/r0-f0", "folds/r0-f1"]
    top = client.get_run(parent)
    assert top.info.status == "FINISHED" and top.data.metrics["accuracy_ci_low"] == 0.5
    # a run outside any group nests under nothing
    replay(TrackingHandler("mlflow", tmp_path / "alone"), copy_of(plain_run, tmp_path / "alone"))
    alone = client.get_run(json.loads((tmp_path / "alone" / "tracking.json").read_text())["run_id"])
    assert "mlflow.parentRunId" not in alone.data.tags


def test_flat_metrics_reads_intervals_as_dicts_or_pairs():
    from braintumor.tracking import flat_metrics

    m = flat_metrics({"accuracy": 0.8, "n": 10, "ok": True, "roc_auc": float("nan"), "threshold": None,
                      "ci": {"accuracy": [0.6, 0.9], "roc_auc": {"low": 0.7, "high": 0.95}, "level": 0.95},
                      "per_class": {"no tumour/T1": {"f1": 0.5, "support": 4}}})
    assert m == {"accuracy": 0.8, "n": 10.0, "per_class/no tumour_T1/f1": 0.5, "per_class/no tumour_T1/support": 4.0,
                 "accuracy_ci_low": 0.6, "accuracy_ci_high": 0.9, "roc_auc_ci_low": 0.7, "roc_auc_ci_high": 0.95}


# ------------------------------------------------------------------------------------ options and failures


def test_track_is_a_checked_config_field_saved_with_the_run(tmp_path):
    assert TrainConfig(track="mlflow").track == "mlflow" and TrainConfig().track is None
    with pytest.raises(UsageError, match=r"^track must be null \(no tracking\), mlflow or tensorboard, got 'wandb'$"):
        TrainConfig(track="wandb")
    TrainConfig(data_dir="d", track="tensorboard").save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml").track == "tensorboard"


@pytest.mark.parametrize("kind,module", [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_package_is_one_line_and_cv_writes_nothing(kind, module, small_data, tmp_path, monkeypatch):
    from braintumor.tracking import TrackingHandler, check_available

    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    msg = f"--track {kind} needs the {kind} package: pip install 'braintumor[track]'"
    with pytest.raises(UsageError, match=f"^{msg}$".replace("[", r"\[").replace("]", r"\]")):
        check_available(kind)
    with pytest.raises(UsageError):
        TrackingHandler(kind, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cv"
    r = runner.invoke(app, ["cv", str(small_data), "--folds", "2", "--model", "cnn", "--img-size", "32",
                            "--epochs", "1", "--track", kind, "--out", str(out)])
    assert r.exit_code == 2 and r.output.strip() == f"error: {msg}", r.output
    assert not out.exists() and not (tmp_path / "mlruns").exists() and not (tmp_path / "run").exists()


def test_track_option_in_the_help_of_train_and_cv():
    for cmd in ("train", "cv"):
        r = runner.invoke(app, [cmd, "--help"], terminal_width=200)
        assert r.exit_code == 0 and "--track" in r.output and "--track mlflow" in r.output, cmd
    r = runner.invoke(app, ["train", "d", "--track", "wandb"])
    assert r.exit_code == 2 and "track must be null (no tracking), mlflow or tensorboard, got 'wandb'" in r.output


def test_crossval_modules_import_each_other_one_way_only():
    src = REPO / "src" / "braintumor"
    assert "from .crossval_sources import" in (src / "crossval.py").read_text()
    assert "from .crossval import" not in (src / "crossval_sources.py").read_text()
    assert "import crossval\n" not in (src / "crossval_sources.py").read_text()


# ------------------------------------------------------------------------------------ through train and cv


def test_train_track_mlflow_end_to_end(small_data, store):
    r = runner.invoke(app, ["train", str(small_data), "--model", "cnn", "--img-size", "32", "--epochs", "2",
                            "--batch-size", "16", "--track", "mlflow", "--out", "runs/e2e"])
    assert r.exit_code == 0, r.output
    run_dir = store / "runs" / "e2e"
    assert TrainConfig.load(run_dir / "config.yaml").track == "mlflow"
    info = json.loads((run_dir / "tracking.json").read_text())
    # the default store: ./mlruns/mlflow.db, named by its absolute path, artefacts beside it
    assert info["uri"] == f"sqlite:///{(store / 'mlruns' / 'mlflow.db').resolve()}"
    assert info["experiment"] == "braintumor" and (store / "mlruns" / "mlflow.db").is_file()
    check_mlflow_run(mlflow.MlflowClient(info["uri"]), info["run_id"], run_dir, n_epochs=2)
    onnx = list((store / "mlruns").rglob("model.onnx"))
    assert len(onnx) == 1 and onnx[0].read_bytes() == (run_dir / "model.onnx").read_bytes()


def test_train_track_tensorboard_end_to_end(small_data, tmp_path):
    from braintumor.training import train

    run = train(TrainConfig(data_dir=str(small_data), track="tensorboard", **TINY), out=tmp_path / "tb")
    check_tensorboard(run.run_dir, n_epochs=3)


def test_a_missing_package_stops_train_before_any_run_folder(small_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", str(small_data), "--model", "cnn", "--img-size", "32", "--epochs", "1",
                            "--track", "mlflow", "--out", "runs/x"])
    assert r.exit_code == 2 and r.output.strip() == (
        "error: --track mlflow needs the mlflow package: pip install 'braintumor[track]'"), r.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()


def test_cv_track_mlflow_is_one_parent_run_with_a_nested_run_per_fold(small_data, tmp_path, monkeypatch):
    from braintumor.crossval import cv

    uri = f"sqlite:///{tmp_path / 'cv.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    res = cv(str(small_data), folds=2, out=tmp_path / "cv", track="mlflow", model="cnn", img_size=32, epochs=2,
             batch_size=16, ood_check=False)
    client = mlflow.MlflowClient(uri)
    parent = json.loads((tmp_path / "cv" / "tracking.json").read_text())["run_id"]
    runs = client.search_runs([client.get_experiment_by_name("braintumor").experiment_id])
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 3 and sorted(r.info.run_name for r in kids) == ["folds/r0-f0", "folds/r0-f1"]
    assert all(r.info.status == "FINISHED" and len(client.get_metric_history(r.info.run_id, "val_loss")) == 2
               for r in kids)
    top = client.get_run(parent)
    assert top.info.status == "FINISHED" and top.info.run_name == "cv"
    assert top.data.params["folds"] == "2" and top.data.params["model"] == "cnn"
    m = top.data.metrics
    assert m["accuracy"] == pytest.approx(res.pooled["accuracy"])
    assert m["accuracy_ci_low"] == pytest.approx(res.pooled_ci["accuracy"]["low"])
    assert m["folds/accuracy_mean"] == pytest.approx(np.mean([f["accuracy"] for f in res.folds]))
    assert {"cv.json", "report.html", "folds.csv", "roc.png"} <= {a.path for a in client.list_artifacts(parent)}
