"""Training end to end on phantoms: accuracy, run folder, determinism, resume after kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from braintumor.config import TrainConfig
from braintumor.data.read import read_image
from braintumor.data.synthetic import write_phantoms
from braintumor.errors import UsageError
from braintumor.inference import Predictor
from braintumor.preprocess import Preprocessor
from braintumor.rundir import RunDir
from braintumor.training import train


def test_tiny_cnn_learns_phantoms(trained_run):
    m = trained_run.metrics
    assert m["accuracy"] >= 0.9, m
    assert m["roc_auc"] >= 0.9, m
    assert m["n"] == len(trained_run.evaluation.y_true) >= 60


def test_run_folder_is_complete(trained_run):
    run = RunDir(trained_run.run_dir)
    for path in (run.config, run.metadata, run.history, run.metrics, run.predictions, run.curves, run.confusion,
                 run.roc, run.best, run.last):
        assert path.is_file() and path.stat().st_size > 0, path
    meta = run.read_metadata()
    for key in ("classes", "preprocessing", "img_size", "normalisation", "seed", "versions", "positive_class"):
        assert key in meta
    assert meta["status"] == "complete" and meta["classes"] == ["no", "yes"]
    assert len(meta["data"]["fingerprint"]) == 64
    rows = list(csv.DictReader(open(run.history)))
    assert rows and set(rows[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    cfg = TrainConfig.load(run.config)
    assert cfg.model == "cnn" and cfg.img_size == 64
    # No temp files left behind by the atomic writes.
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".")]


def test_predictor_reproduces_validation_metrics(trained_run):
    """Loading the run for prediction reproduces its preprocessing: same probabilities as at training."""
    pred = Predictor.from_run(trained_run.run_dir)
    rows = list(csv.DictReader(open(RunDir(trained_run.run_dir).predictions)))
    res = pred.predict_paths([r["path"] for r in rows[:20]])
    for r, p in zip(rows[:20], res, strict=True):
        assert p.label == r["predicted"]
        assert abs(p.probabilities["yes"] - float(r["p_yes"])) < 1e-4


def test_existing_run_is_not_overwritten(trained_run, phantoms):
    with pytest.raises(UsageError, match="already holds a run"):
        train(TrainConfig(data_dir=str(phantoms), model="cnn", img_size=64, epochs=1), out=trained_run.run_dir)


@pytest.fixture(scope="module")
def small_phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    write_phantoms(out, n=80, size=64, seed=5)
    return out


SMALL = dict(model="cnn", img_size=32, epochs=4, batch_size=16, seed=7, num_threads=1, patience=0)


def test_same_seed_same_numbers(small_phantoms, tmp_path):
    a = train(TrainConfig(data_dir=str(small_phantoms), **SMALL), out=tmp_path / "a")
    b = train(TrainConfig(data_dir=str(small_phantoms), **SMALL), out=tmp_path / "b")
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b.history]
    assert a.metrics["confusion_matrix"] == b.metrics["confusion_matrix"]
    assert a.metrics["log_loss"] == b.metrics["log_loss"]


def test_resume_after_kill_9(small_phantoms, tmp_path):
    """kill -9 in the middle of a run, then --resume: it finishes with the same numbers as an uninterrupted run."""
    cfg = dict(SMALL, epochs=6)
    ref = train(TrainConfig(data_dir=str(small_phantoms), **cfg), out=tmp_path / "ref")

    run = tmp_path / "killed"
    args = [sys.executable, "-m", "braintumor", "train", str(small_phantoms), "--model", "cnn", "--img-size", "32",
            "--epochs", "6", "--batch-size", "16", "--seed", "7", "--patience", "0", "--out", str(run)]
    cfg_file = tmp_path / "cfg.yaml"
    TrainConfig(data_dir=str(small_phantoms), **cfg).save(cfg_file)
    args += ["--config", str(cfg_file)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hist = RunDir(run).history
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if hist.is_file() and len(hist.read_text().strip().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not RunDir(run).metrics.exists()
    assert RunDir(run).last.is_file()

    out = subprocess.run([sys.executable, "-m", "braintumor", "train", "--resume", str(run)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout
    meta = json.loads(RunDir(run).metadata.read_text())
    assert meta["status"] == "complete"
    done = json.loads(RunDir(run).metrics.read_text())
    rows = list(csv.DictReader(open(RunDir(run).history)))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    for r, h in zip(rows, ref.history, strict=True):
        assert float(r["val_loss"]) == pytest.approx(h["val_loss"], rel=1e-4)
    assert done["confusion_matrix"] == ref.metrics["confusion_matrix"]


def test_mixup_changes_training_and_stays_deterministic(small_phantoms, tmp_path):
    plain = train(TrainConfig(data_dir=str(small_phantoms), **dict(SMALL, epochs=2)), out=tmp_path / "plain")
    mixed = [train(TrainConfig(data_dir=str(small_phantoms), mixup=0.2, **dict(SMALL, epochs=2)),
                   out=tmp_path / f"mix{i}") for i in range(2)]
    losses = [[h["loss"] for h in r.history] for r in (plain, *mixed)]
    assert losses[1] == losses[2]  # same seed, same mixtures
    assert all(abs(a - b) > 1e-6 for a, b in zip(losses[0], losses[1], strict=True))
    with pytest.raises(UsageError, match="mixup"):
        TrainConfig(data_dir=str(small_phantoms), mixup=-1)


def test_intensity_standardisation_is_stored_and_reproduced_at_prediction(small_phantoms, tmp_path):
    res = train(TrainConfig(data_dir=str(small_phantoms), intensity="percentile", **dict(SMALL, epochs=1)),
                out=tmp_path / "pct")
    assert res.metadata["preprocessing"]["intensity"] == "percentile"
    pred = Predictor.from_run(res.run_dir)
    assert pred.preprocessor.intensity == "percentile"
    rows = list(csv.DictReader(open(RunDir(res.run_dir).predictions)))
    img = read_image(rows[0]["path"])
    unstretched = Preprocessor.from_dict({**res.metadata["preprocessing"], "intensity": "none"})
    assert np.abs(pred.preprocessor.prepare(img).astype(int) - unstretched.prepare(img)).mean() > 2
    for r, p in zip(rows[:8], pred.predict_paths([r["path"] for r in rows[:8]]), strict=True):
        assert abs(p.probabilities["yes"] - float(r["p_yes"])) < 1e-4
    with pytest.raises(UsageError, match="intensity"):
        TrainConfig(data_dir=str(small_phantoms), intensity="zscore")


# ------------------------------------------------------------------------------------- weight averaging

SWA = dict(SMALL, epochs_frozen=1, epochs=4)  # with init_from: frozen 1 epoch, then 4 fine-tuning epochs


def _capture_epoch_weights(monkeypatch) -> dict:
    """Record the model weights each time last.pt is written (once per epoch)."""
    seen: dict[int, dict] = {}
    orig = RunDir.save_checkpoint

    def save(self, path, state):
        orig(self, path, state)
        if path == self.last:
            seen[len(state["history"])] = {k: v.detach().clone() for k, v in state["model"].items()}

    monkeypatch.setattr(RunDir, "save_checkpoint", save)
    return seen


def test_swa_keeps_the_mean_of_the_second_half_weights(trained_run, small_phantoms, tmp_path, monkeypatch):
    """Fine-tuning with frozen BatchNorm keeps the average of its second-half epochs' weights (here epochs 4-5)."""
    import torch

    seen = _capture_epoch_weights(monkeypatch)
    res = train(TrainConfig(data_dir=str(small_phantoms), init_from=str(trained_run.run_dir), **SWA),
                out=tmp_path / "swa")
    assert res.metadata["weights"]["kind"] == "weight average (swa)"
    assert res.metadata["weights"]["epochs"] == [4, 5]
    kept = RunDir(res.run_dir).load_checkpoint("best")["model"]
    for k, v in kept.items():
        if v.is_floating_point():
            assert torch.allclose(v, (seen[4][k] + seen[5][k]) / 2, atol=1e-6), k
    assert not torch.equal(kept["head.1.weight"], seen[5]["head.1.weight"])  # not just the last epoch
    # The reported validation metrics are those of the averaged weights (evaluated again through the Predictor).
    assert res.metrics["accuracy"] == pytest.approx(res.metadata["weights"]["val_accuracy"])


def test_swa_off_and_from_scratch_keep_the_lowest_loss_epoch(trained_run, small_phantoms, tmp_path):
    assert trained_run.metadata["weights"]["kind"] == "lowest validation loss"  # cnn from scratch: BatchNorm active
    res = train(TrainConfig(data_dir=str(small_phantoms), init_from=str(trained_run.run_dir), swa=False, **SWA),
                out=tmp_path / "noswa")
    best = min(res.history[1:], key=lambda h: h["val_loss"])  # the fine-tuning phase's best epoch
    assert res.metadata["weights"] == {"kind": "lowest validation loss", "epochs": [best["epoch"]]}
    assert RunDir(res.run_dir).load_checkpoint("best")["epoch"] == best["epoch"]


def test_resume_inside_the_averaging_window_gives_the_same_model(trained_run, small_phantoms, tmp_path,
                                                                 monkeypatch):
    """A run stopped after epoch 4 (one epoch averaged) and resumed keeps the same average as an unbroken run."""
    import importlib

    import torch

    tr = importlib.import_module("braintumor.training")  # the module (the package re-exports the function train)
    cfg = TrainConfig(data_dir=str(small_phantoms), init_from=str(trained_run.run_dir), **SWA)
    ref = train(cfg, out=tmp_path / "ref")
    real_epoch = tr.run_epoch

    def dies_at_epoch_5(*args, **kw):
        if args[12] == 4:  # global_epoch (0-based): the fifth epoch
            raise KeyboardInterrupt
        return real_epoch(*args, **kw)

    monkeypatch.setattr(tr, "run_epoch", dies_at_epoch_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=tmp_path / "broken")
    assert len(RunDir(tmp_path / "broken").load_checkpoint("last")["swa"]["epochs"]) == 1
    monkeypatch.setattr(tr, "run_epoch", real_epoch)
    res = train(None, out=tmp_path / "broken", resume=True)
    assert res.metadata["weights"]["epochs"] == [4, 5]
    a = RunDir(ref.run_dir).load_checkpoint("best")["model"]
    b = RunDir(res.run_dir).load_checkpoint("best")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert res.metrics["confusion_matrix"] == ref.metrics["confusion_matrix"]


# ---------------------------------------------------------------------------------- domain pretraining


def test_init_from_starts_from_the_other_runs_backbone(trained_run, phantoms, tmp_path):
    """--init-from: the backbone comes from the other run (a frozen-only phase leaves it untouched)."""
    import torch

    cfg = TrainConfig(data_dir=str(phantoms), model="cnn", img_size=64, epochs_frozen=1, epochs=0,
                      init_from=str(trained_run.run_dir))
    res = train(cfg, out=tmp_path / "init")
    src = RunDir(trained_run.run_dir).load_checkpoint("best")["model"]
    new = RunDir(res.run_dir).load_checkpoint("best")["model"]
    backbone = [k for k in src if k.startswith("backbone.")]
    assert backbone and all(torch.equal(src[k], new[k]) for k in backbone)
    assert not torch.equal(src["head.1.weight"], new["head.1.weight"])  # a new head was trained
    meta = res.metadata
    assert meta["pretrained"] and meta["pretrained_source"].startswith("run:")
    assert res.metrics["accuracy"] >= 0.8  # the source run's features already separate the phantoms


def test_init_from_rejects_another_architecture(trained_run, phantoms, tmp_path):
    cfg = TrainConfig(data_dir=str(phantoms), model="efficientnet-lite0", img_size=64, epochs_frozen=1, epochs=0,
                      init_from=str(trained_run.run_dir))
    with pytest.raises(UsageError, match="holds a 'cnn' model"):
        train(cfg, out=tmp_path / "bad")


def test_exclude_copies_of_drops_every_copy(tmp_path):
    """--exclude-copies-of: files with a copy (here re-encoded and resized) in the other folder are left out."""
    from PIL import Image

    data = tmp_path / "data"
    write_phantoms(data, n=40, size=64, seed=3)
    other = tmp_path / "other" / "yes"
    other.mkdir(parents=True)
    picked = sorted((data / "yes").glob("*.png"))[:3]
    for i, p in enumerate(picked):
        Image.open(p).convert("RGB").resize((96, 96)).save(other / f"copy{i}.jpg", quality=92)
    cfg = TrainConfig(data_dir=str(data), model="cnn", img_size=64, epochs=1, exclude_copies_of=str(other.parent))
    res = train(cfg, out=tmp_path / "run")
    info = res.metadata["data"]["excluded_copies"]
    assert sorted(info["files"]) == sorted(str(p) for p in picked)
    assert res.metadata["data"]["n_train"] + res.metadata["data"]["n_val"] == 40 - 3


def test_best_checkpoint_comes_from_the_last_phase(trained_run, phantoms, tmp_path):
    """Two phases: the kept checkpoint is fine-tuned even when a frozen-phase epoch had a lower validation loss."""
    cfg = TrainConfig(data_dir=str(phantoms), model="cnn", img_size=64, epochs_frozen=2, epochs=2,
                      init_from=str(trained_run.run_dir))
    res = train(cfg, out=tmp_path / "two")
    assert res.metadata["best_epoch"] in (3, 4)
    assert [r["phase"] for r in res.history] == ["frozen", "frozen", "finetune", "finetune"]


def test_patience_counts_in_the_annealing_half_of_one_cycle():
    from braintumor.training import Phase, counts_for_patience

    one = Phase("finetune", 12, 1e-4, False, True, "onecycle", True)
    assert [counts_for_patience(one, e) for e in range(12)] == [False] * 6 + [True] * 6
    const = Phase("finetune", 12, 1e-4, False, True, "constant", True)
    assert all(counts_for_patience(const, e) for e in range(12))
