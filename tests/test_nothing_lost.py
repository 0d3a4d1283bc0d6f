"""Nothing lost: options checked before any work, no half-made run folder, a run's own files never overwritten,
and a run marked complete only once its final stage (calibration, input check, evaluation, report) is written."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.config import TrainConfig
from braintumor.data.synthetic import write_phantoms
from braintumor.errors import PretrainedUnavailableError, RunError, UsageError
from braintumor.rundir import RunDir

runner = CliRunner()
TINY = dict(model="cnn", img_size=32, epochs=1, batch_size=16, seed=0, ood_check=False)
TINY_ARGS = ["--model", "cnn", "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--no-ood-check"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lost") / "data"
    write_phantoms(root, n=40, size=32, seed=4)
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    from braintumor.training import train

    return train(TrainConfig(data_dir=str(data), **TINY), out=tmp_path_factory.mktemp("lost_run") / "run").run_dir


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_exit_2(r, *fragments: str) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    for f in fragments:
        assert f in r.output, (f, r.output)


# ------------------------------------------------------------------------------- options checked before work


def _case_args(case: str, data: Path, run: Path, tmp: Path) -> tuple[list[str], str]:
    a_file = tmp / "a_file"
    a_file.write_text("x")
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    three = tmp / "three"
    if case == "three classes, target sensitivity":
        write_phantoms(three, n=8, size=32, seed=5)
        (three / "maybe").mkdir()
        for p in sorted((three / "yes").glob("*.png"))[:2]:
            p.rename(three / "maybe" / p.name)
    out = ["--out", str(tmp / "new")]
    return {
        "out is a file": ([str(data), "--out", str(a_file)], "is a file"),
        "out under a file": ([str(data), "--out", str(a_file / "run")], "is a file, not a folder"),
        "out inside the data": ([str(data), "--out", str(data / "run")], "inside the data folder"),
        "out already a run": ([str(data), "--out", str(run)], "already holds a run"),
        "nothing to train": ([str(data), *out, "--epochs", "0"], "nothing to train"),
        "target sensitivity out of range": ([str(data), *out, "--target-sensitivity", "2"], "target_sensitivity"),
        "three classes, target sensitivity": ([str(three), *out, "--target-sensitivity", "0.9"],
                                              "needs a binary (two-class) problem"),
        "exclude the data itself": ([str(data), *out, "--exclude-copies-of", str(data)],
                                    "exclude_copies_of names the training data itself"),
        "exclude a class folder": ([str(data), *out, "--exclude-copies-of", str(data / "yes")],
                                   "no images of class(es) ['yes'] are left"),
        "exclude an empty folder": ([str(data), *out, "--exclude-copies-of", str(empty)], "no images in it"),
        "exclude a missing folder": ([str(data), *out, "--exclude-copies-of", str(tmp / "nope")], "no such folder"),
        "init from no run": ([str(data), *out, "--init-from", str(empty)], "not a finished run folder"),
        "init from another model": ([str(data), *out, "--init-from", str(run), "--model", "resnet18"],
                                    "holds a 'cnn' model"),
        "masks missing": ([str(data), *out, "--masks", str(tmp / "nope")], "--masks"),
        "resume no run": (["--resume", str(empty)], "nothing to resume"),
    }[case]


CASES = ["out is a file", "out under a file", "out inside the data", "out already a run", "nothing to train",
         "target sensitivity out of range", "three classes, target sensitivity", "exclude the data itself",
         "exclude a class folder", "exclude an empty folder", "exclude a missing folder", "init from no run",
         "init from another model", "masks missing", "resume no run"]


@pytest.mark.parametrize("case", CASES)
def test_train_options_that_can_only_fail_stop_before_any_work(case, data, run, tmp_path, monkeypatch):
    audit = importlib.import_module("braintumor.data.audit")
    train_mod = importlib.import_module("braintumor.training")  # (braintumor.training is also the function)

    def forbidden(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(train_mod, "load_images", forbidden)  # no image is decoded...
    monkeypatch.setattr(audit, "scan", forbidden)  # ...nor hashed (exclude_copies_of)
    args, expected = _case_args(case, data, run, tmp_path)
    before = _snapshot(run)
    r = runner.invoke(app, ["train", *(TINY_ARGS if args[0] != "--resume" else []), *args])
    _one_line_exit_2(r, expected)
    assert not (tmp_path / "new").exists()  # no half-made run folder
    assert not (data / "run").exists()
    assert _snapshot(run) == before


def test_class_folder_names_must_be_text(tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    write_phantoms(bad, n=8, size=32, seed=6)
    try:
        (bad / "yes").rename(bad / os.fsdecode(b"y\xffes"))
    except (OSError, UnicodeEncodeError):
        pytest.skip("file names that are not UTF-8 are not supported here")
    r = runner.invoke(app, ["train", str(bad), *TINY_ARGS, "--out", str(tmp_path / "new")])
    _one_line_exit_2(r, "y\\xffes: a class folder name must be UTF-8 text")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------ no half-made run folder


@pytest.mark.parametrize("existing", ["none", "empty", "with a file"])
def test_a_failed_start_leaves_no_half_made_run(data, tmp_path, monkeypatch, existing):
    """A failure after the run folder is made but before an epoch is saved takes back what it wrote, and only that."""
    train_mod = importlib.import_module("braintumor.training")  # (braintumor.training is also the function)

    def boom(*a, **k):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(train_mod, "run_epoch", boom)
    out = tmp_path / "runs" / "deep" / "new"
    if existing != "none":
        out.mkdir(parents=True)
    if existing == "with a file":
        (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="simulated"):
        train_mod.train(TrainConfig(data_dir=str(data), **TINY), out=out)
    if existing == "none":
        assert not (tmp_path / "runs").exists()  # the parents it made too
    else:
        assert sorted(p.name for p in out.iterdir()) == (["notes.txt"] if existing == "with a file" else [])
        if existing == "with a file":
            assert (out / "notes.txt").read_text() == "mine"


def test_missing_pretrained_weights_make_no_folder(data, tmp_path, monkeypatch):
    train_mod = importlib.import_module("braintumor.training")  # (braintumor.training is also the function)

    def unavailable(*a, **k):
        raise PretrainedUnavailableError("no network (simulated)")

    monkeypatch.setattr(train_mod, "build_model", unavailable)
    with pytest.raises(PretrainedUnavailableError):
        train_mod.train(TrainConfig(data_dir=str(data), **TINY), out=tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_failed_resume_touches_nothing(data, run, tmp_path, monkeypatch):
    import shutil

    train_mod = importlib.import_module("braintumor.training")  # (braintumor.training is also the function)

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = _snapshot(copy)

    def boom(*a, **k):
        raise RuntimeError("simulated")

    monkeypatch.setattr(train_mod, "prepare_data", boom)
    with pytest.raises(RuntimeError):
        train_mod.train(None, out=copy, resume=True)
    assert _snapshot(copy) == before


class _Payload:
    """Unpickling this would create ``marker``: what a crafted ``last.pt`` would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_resume_from_a_refused_checkpoint_leaves_the_run_as_it_was(run, tmp_path):
    import shutil

    import torch

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, copy / "checkpoints" / "last.pt")
    before = _snapshot(copy)
    r = CliRunner().invoke(app, ["train", "--resume", str(copy)])
    _one_line_exit_2(r, "refused to load")
    assert not marker.exists()
    assert _snapshot(copy) == before  # status still complete: the run still predicts
    assert json.loads((copy / "metadata.json").read_text())["status"] == "complete"


def test_a_run_with_a_saved_epoch_is_kept_for_resume(data, tmp_path, monkeypatch):
    train_mod = importlib.import_module("braintumor.training")  # (braintumor.training is also the function)

    real = train_mod.run_epoch
    calls = []

    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "run_epoch", second_fails)
    out = tmp_path / "kept"
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(TrainConfig(data_dir=str(data), **dict(TINY, epochs=3)), out=out)
    assert RunDir(out).last.is_file() and json.loads(RunDir(out).metadata.read_text())["status"] == "running"


# ---------------------------------------------------------------------------- a run's own files never overwritten


def _out_cases(run: Path, data: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    img = str(sorted((data / "yes").glob("*.png"))[0])
    other = tmp / "other_run"
    other.mkdir()
    (other / "metadata.json").write_text("{}")
    return {
        "evaluate --out RUN": (["evaluate", str(run), "--data", str(data), "--out", str(run)],
                               "is the run folder itself"),
        "evaluate --out RUN/.": (["evaluate", str(run), "--data", str(data), "--out", f"{run}/."],
                                 "is the run folder itself"),
        "evaluate --out another run": (["evaluate", str(run), "--data", str(data), "--out", str(other)],
                                       "is a run folder"),
        "evaluate --out a file": (["evaluate", str(run), "--data", str(data), "--out", str(run / "metrics.json")],
                                  "is a file"),
        "evaluate --out inside the data": (["evaluate", str(run), "--data", str(data), "--out", str(data / "ev")],
                                           "inside the data folder"),
        "predict --out RUN/metadata.json": (["predict", str(run), img, "--out", str(run / "metadata.json")],
                                            "is a file of the model"),
        "predict --out the input": (["predict", str(run), img, "--out", img], "is one of the input images"),
        "predict --out a folder": (["predict", str(run), img, "--out", str(run)], "is a folder"),
        "explain --out RUN": (["explain", str(run), img, "--out", str(run)], "is the run folder itself"),
        "explain --out a file": (["explain", str(run), img, "--out", img], "is a file"),
        "synth into a file": (["synth", img, "--n", "4", "--size", "32"], "is a file"),
        "synth over phantoms": (["synth", str(data), "--n", "4", "--size", "32"], "already holds phantoms"),
        "synth into a run": (["synth", str(run), "--n", "4", "--size", "32"], "is a run folder"),
        "cv --out a file": (["cv", str(data), *TINY_ARGS[:6], "--out", img], "is a file"),
        "cv --out inside the data": (["cv", str(data), *TINY_ARGS[:6], "--out", str(data / "ev")],
                                     "inside the data folder"),
    }


@pytest.mark.parametrize("case", ["evaluate --out RUN", "evaluate --out RUN/.", "evaluate --out another run",
                                  "evaluate --out a file", "evaluate --out inside the data",
                                  "predict --out RUN/metadata.json", "predict --out the input",
                                  "predict --out a folder", "explain --out RUN", "explain --out a file",
                                  "synth into a file", "synth over phantoms", "synth into a run", "cv --out a file",
                                  "cv --out inside the data"])
def test_outputs_never_overwrite_a_run_or_the_data(case, run, data, tmp_path):
    args, expected = _out_cases(run, data, tmp_path)[case]
    before_run, before_data = _snapshot(run), _snapshot(data)
    r = runner.invoke(app, args)
    _one_line_exit_2(r, expected)
    assert _snapshot(run) == before_run and _snapshot(data) == before_data
    assert not (data / "ev").exists()


def test_evaluate_default_out_still_works(run, data):
    r = runner.invoke(app, ["evaluate", str(run), "--data", str(data)])
    assert r.exit_code == 0, r.output
    assert (run / "evaluations" / "data" / "predictions.csv").is_file()


# -------------------------------------------------------------------- "complete" only after the final stage


_KILL = textwrap.dedent("""
    import importlib, os, sys
    t = importlib.import_module("braintumor.training")
    from braintumor.config import TrainConfig

    def die(*a, **k):
        os._exit(9)  # like kill -9: nothing after this runs, no finally, no cleanup

    setattr(t, sys.argv[3], die)
    t.train(TrainConfig(data_dir=sys.argv[1], model="cnn", img_size=32, epochs=1, batch_size=16, seed=0,
                        target_sensitivity=0.9), out=sys.argv[2])
""")


@pytest.mark.parametrize("stage", ["calibrate", "write_report"])
def test_a_kill_in_the_final_stage_never_leaves_a_complete_run(stage, data, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _KILL, str(data), str(out), stage], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 9, proc.stderr
    meta = json.loads(RunDir(out).metadata.read_text())
    assert meta["status"] == "finalising"  # not "complete"
    img = str(sorted((data / "yes").glob("*.png"))[0])
    for args in (["predict", str(out), img], ["evaluate", str(out), "--data", str(data)],
                 ["export", str(out), "--out", str(tmp_path / "m.onnx")]):
        r = runner.invoke(app, args)
        _one_line_exit_2(r, "did not finish", "--resume")
    with pytest.raises(RunError, match="did not finish"):
        from braintumor.inference import Predictor

        Predictor.from_run(out)
    if stage != "write_report":
        return
    # `train --resume` does the final stage again (no epoch is trained again) and then the run is complete.
    history = RunDir(out).history.read_bytes()
    r = runner.invoke(app, ["train", "--resume", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads(RunDir(out).metadata.read_text())
    assert meta["status"] == "complete" and meta["threshold"] is not None
    assert meta["calibration"]["method"] == "temperature" and RunDir(out).report.is_file()
    assert RunDir(out).history.read_bytes() == history
    r = runner.invoke(app, ["predict", str(out), img, "--backend", "torch"])
    assert r.exit_code == 0, r.output


def test_an_interrupted_run_cannot_be_used_as_init_from(data, tmp_path):
    from braintumor.training import check_init_from

    fake = tmp_path / "fake"
    (fake / "checkpoints").mkdir(parents=True)
    (fake / "checkpoints" / "best.pt").write_bytes(b"")
    meta = {"model": "cnn", "classes": ["no", "yes"], "img_size": 32, "status": "finalising",
            "preprocessing": {"img_size": 32}}
    (fake / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="did not finish"):
        check_init_from(fake, "cnn")


@pytest.mark.parametrize("target", ["metadata.json", "checkpoints/best.pt", "folder", "notes.txt"])
def test_export_out_never_overwrites_a_run_file_or_another_file(run, tmp_path, target):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (tmp_path / "notes.txt").write_text("keep")
    out = {"folder": tmp_path, "notes.txt": tmp_path / "notes.txt"}.get(target, copy / target)
    before = _snapshot(copy)
    r = CliRunner().invoke(app, ["export", str(copy), "--out", str(out)])
    _one_line_exit_2(r, "--out")
    assert _snapshot(copy) == before and (tmp_path / "notes.txt").read_text() == "keep"
