"""evaluate on onnxruntime and in chunks measures the same model the same way as on torch in one pass."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from braintumor.evaluation import evaluate  # noqa: E402
from conftest import copy_run  # noqa: E402


def test_onnxruntime_and_chunks_give_the_same_metrics_as_torch(trained_run, phantoms_test, tmp_path):
    run = copy_run(trained_run.run_dir, tmp_path / "run")
    ref = evaluate(run, phantoms_test, tmp_path / "torch", backend="torch", n_boot=50)
    fast = evaluate(run, phantoms_test, tmp_path / "onnx", backend="auto", chunk=7, n_boot=50)
    small = evaluate(run, phantoms_test, tmp_path / "chunks", backend="torch", chunk=7, n_boot=50)
    assert (run / "model.onnx").is_file()  # the run's FP32 export, made on demand and cached like predict's
    for res in (fast, small):
        assert res.metrics["n"] == ref.metrics["n"] > 0
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "confusion_matrix"):
            assert res.metrics[key] == ref.metrics[key], key
        assert abs(res.metrics["roc_auc"] - ref.metrics["roc_auc"]) < 1e-6
    # chunking changes nothing on the same engine but float rounding of other batch sizes (log loss ~1e-8)
    assert {k: v for k, v in small.metrics.items() if k not in ("log_loss", "ci")} == \
        {k: v for k, v in ref.metrics.items() if k not in ("log_loss", "ci")}
    assert abs(small.metrics["log_loss"] - ref.metrics["log_loss"]) < 1e-6
    # the same rows; a probability printed to 6 decimals may differ in the last one (batch-size rounding)
    tables = [list(csv.reader(io.StringIO((tmp_path / d / "predictions.csv").read_text())))
              for d in ("torch", "chunks")]
    assert tables[0][0] == tables[1][0] and len(tables[0]) == len(tables[1]) > 1
    for a, b in zip(tables[0][1:], tables[1][1:], strict=True):
        for col, x, y in zip(tables[0][0], a, b, strict=True):
            if x != y:
                assert col.startswith("p_") and abs(float(x) - float(y)) <= 1.5e-6, (col, x, y)
    def probs(folder):
        with open(tmp_path / folder / "predictions.csv", newline="") as fh:
            return np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in csv.DictReader(fh)])

    p_ref, p_fast = probs("torch"), probs("onnx")
    assert p_ref.shape == p_fast.shape and p_ref.shape[1] == 2
    assert np.abs(p_ref - p_fast).max() < 1e-4
    assert json.loads((tmp_path / "onnx" / "metrics.json").read_text())["n"] == ref.metrics["n"]
