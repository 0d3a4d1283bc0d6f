"""Checkpoints load as plain data: a crafted ``.pt`` in a shared run folder cannot run code.

A ``.pt`` file is a pickle. ``RunDir.load_checkpoint`` (every command that reads a run: predict, evaluate, export,
serve, train --resume, --init-from) refuses anything but tensors and plain values, with a one-line error, and the
checkpoints braintumor itself writes (plain, and pretrained two-phase with the weight average) still load.
"""

from __future__ import annotations

import importlib
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.config import TrainConfig
from braintumor.errors import RunError
from braintumor.rundir import RunDir
from braintumor.training import train


class _Payload:
    """Unpickling this runs ``exec``, which creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class _Harmless:
    """A class a library might have put on torch's process-wide weights_only allow-list."""


def _crafted(path: Path, marker: Path, nested: bool = False) -> Path:
    payload = _Payload(marker)
    state = ({"model": OrderedDict([("conv.weight", torch.zeros(2, 2)), ("x", payload)]), "epoch": 1} if nested
             else {"model": payload})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _equal(a, b) -> bool:
    """Deep equality of checkpoint contents (tensors compared exactly, dtypes included)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def few_phantoms(tmp_path_factory) -> Path:
    from braintumor.data.synthetic import write_phantoms

    out = tmp_path_factory.mktemp("safe_phantoms")
    write_phantoms(out, n=40, size=64, seed=0)
    return out


def _no_report(mp: pytest.MonkeyPatch) -> None:
    """Skip report.html (audit, Grad-CAM: slow, and unrelated to loading checkpoints) to keep these tests fast."""
    mp.setattr(importlib.import_module("braintumor.training"), "write_report", lambda root: None)


@pytest.fixture(scope="module")
def cnn_run(few_phantoms, tmp_path_factory):
    cfg = TrainConfig(data_dir=str(few_phantoms), model="cnn", img_size=32, epochs=2, batch_size=8, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        _no_report(mp)
        return train(cfg, out=tmp_path_factory.mktemp("safe_runs") / "cnn")


# ----------------------------------------------------------------------------------------- crafted files


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "inside-state-dict"])
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, nested):
    marker = tmp_path / "pwned"
    run = RunDir(tmp_path / "run")
    _crafted(run.best, marker, nested)
    with pytest.raises(RunError) as err:
        run.load_checkpoint("best")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{run.best}: refused to load: the checkpoint holds code or objects that are not plain "
                          "weights (builtins.exec)")
    assert not marker.exists()
    # the file is a real exploit: loaded the old way, it runs its code
    torch.load(run.best, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_torchs_weights_only_unpickler_refuses_it_too(tmp_path, monkeypatch):
    """Second layer: with the pickle check bypassed, torch's weights-only load refuses it, again in one line."""
    import braintumor.rundir as rundir

    monkeypatch.setattr(rundir, "_unsafe_globals", lambda data: None)
    marker = tmp_path / "pwned"
    run = RunDir(tmp_path / "run")
    _crafted(run.last, marker, nested=True)
    with pytest.raises(RunError, match=r"refused to load: .*not plain weights \(.*GLOBAL .*exec") as err:
        run.load_checkpoint("last")
    assert "\n" not in str(err.value) and "safe_globals" not in str(err.value) and not marker.exists()


def test_globals_added_to_torchs_allow_list_elsewhere_are_still_refused(tmp_path):
    """torch's allow-list is process-wide (MONAI adds its MetaTensor to it); the run loader does not widen."""
    run = RunDir(tmp_path / "run")
    run.create()
    torch.save({"model": OrderedDict(w=torch.ones(1)), "extra": _Harmless()}, run.best)
    with torch.serialization.safe_globals([_Harmless]):
        assert isinstance(torch.load(run.best, weights_only=True)["extra"], _Harmless)  # torch would accept it
        with pytest.raises(RunError, match=r"refused to load: .*\(test_safe_load\._Harmless\)"):
            run.load_checkpoint("best")


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_a_damaged_checkpoint_is_unreadable_not_refused(tmp_path, content):
    run = RunDir(tmp_path / "run")
    run.create()
    run.best.write_bytes(content)
    with pytest.raises(RunError, match=r"best\.pt: unreadable checkpoint \(") as err:
        run.load_checkpoint("best")
    assert "\n" not in str(err.value)


def test_predict_with_a_crafted_checkpoint_exits_2_in_one_line(cnn_run, few_phantoms, tmp_path):
    shared = tmp_path / "shared_run"
    for name in ("metadata.json", "config.yaml", "split.csv"):
        if (cnn_run.run_dir / name).is_file():
            (shared / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(cnn_run.run_dir / name, shared / name)
    marker = tmp_path / "pwned"
    _crafted(RunDir(shared).best, marker)
    image = next((few_phantoms / "yes").glob("*.png"))
    res = CliRunner().invoke(app, ["predict", str(shared), str(image), "--backend", "torch"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refused to load" in lines[0], res.output
    assert not marker.exists()


@pytest.mark.parametrize("via", ["evaluate", "export", "explain", "train --resume", "serve", "api"])
def test_no_command_and_no_api_runs_a_crafted_checkpoint(cnn_run, few_phantoms, tmp_path, via):
    shared = tmp_path / "shared_run"
    shutil.copytree(cnn_run.run_dir, shared, ignore=shutil.ignore_patterns("model.onnx"))
    marker = tmp_path / "pwned"
    _crafted(RunDir(shared).best, marker, nested=True)
    _crafted(RunDir(shared).last, marker, nested=True)
    image = next((few_phantoms / "yes").glob("*.png"))
    if via == "api":
        from braintumor.serve import create_app

        with pytest.raises(RunError, match="refused to load"):
            create_app(shared)  # refused at start-up: no request is ever answered by it
    else:
        args = {"evaluate": ["evaluate", shared, "--data", few_phantoms, "--out", tmp_path / "ev"],
                "export": ["export", shared], "explain": ["explain", shared, image, "--out", tmp_path / "ex"],
                "train --resume": ["train", "--resume", shared],
                "serve": ["serve", shared, "--port", "0"]}[via]
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip() and not ln.startswith("note")]
        assert len(lines) == 1 and "refused to load" in lines[0], res.output
    assert not marker.exists()


# ------------------------------------------------------------------------------ what braintumor writes


def test_a_trained_run_loads_and_predicts_as_before(cnn_run, few_phantoms):
    from braintumor.inference import Predictor
    from braintumor.models import build_model
    from braintumor.preprocess import Preprocessor

    run = RunDir(cnn_run.run_dir)
    for which, path in (("best", run.best), ("last", run.last)):  # the trusted old way, for reference
        assert _equal(run.load_checkpoint(which), torch.load(path, map_location="cpu", weights_only=False)), which
    meta = run.read_metadata()
    direct = build_model(meta["model"], len(meta["classes"]), pretrained=False, img_size=meta["img_size"])
    direct.load_state_dict(torch.load(run.best, map_location="cpu", weights_only=False)["model"])
    calib = meta.get("calibration") or {}
    ref = Predictor(direct, Preprocessor.from_dict(meta["preprocessing"]), meta["classes"], meta.get("positive_class"),
                    calib.get("temperature", 1.0), meta.get("threshold"), meta, "cpu")
    pred = Predictor.from_run(run.root, device="cpu")
    paths = sorted(str(p) for p in few_phantoms.rglob("*.png") if "_masks" not in p.parts)[:12]
    got, want = pred.predict_paths(paths), ref.predict_paths(paths)
    assert [(g.label, g.probabilities) for g in got] == [(w.label, w.probabilities) for w in want]
    assert all(g.ok for g in got)


def test_a_pretrained_run_with_weight_averaging_resumes(few_phantoms, tmp_path, monkeypatch):
    """last.pt mid fine-tuning (optimizer, scheduler, history, the weight average) loads, and --resume finishes."""
    tr = importlib.import_module("braintumor.training")
    _no_report(monkeypatch)
    cfg = TrainConfig(data_dir=str(few_phantoms), model="efficientnet-lite0", img_size=32, epochs_frozen=1,
                      epochs=3, batch_size=32, seed=0, swa=True)
    out = tmp_path / "effnet"
    real_epoch = tr.run_epoch

    def dies_at_epoch_4(*args, **kw):
        if args[12] == 3:  # global_epoch (0-based): the third fine-tuning epoch
            raise KeyboardInterrupt
        return real_epoch(*args, **kw)

    monkeypatch.setattr(tr, "run_epoch", dies_at_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=out)
    monkeypatch.setattr(tr, "run_epoch", real_epoch)
    run = RunDir(out)
    last = run.load_checkpoint("last")
    assert _equal(last, torch.load(run.last, map_location="cpu", weights_only=False))
    assert last["swa"]["epochs"] == [3] and all(isinstance(v, torch.Tensor) for v in last["swa"]["state"].values())
    assert last["optimizer"]["state"] and last["phase"] == 1 and last["epoch_in_phase"] == 2
    assert [h["epoch"] for h in last["history"]] == [1, 2, 3]

    res = CliRunner().invoke(app, ["train", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    meta = run.read_metadata()
    assert meta["status"] == "complete" and meta["weights"] == {**meta["weights"], "kind": "weight average (swa)",
                                                                "epochs": [3, 4]}
    best = run.load_checkpoint("best")
    assert best["swa_epochs"] == [3, 4] and best["model_name"] == "efficientnet-lite0"
    assert run.load_checkpoint("last")["history"][-1]["epoch"] == 4
