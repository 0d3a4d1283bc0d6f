"""Several runs as one predictor (braintumor.ensemble): averaged probabilities, the CLI's --with, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.ensemble import Ensemble, load_ensemble
from braintumor.errors import UsageError
from braintumor.inference import Predictor
from conftest import TINY, copy_run

runner = CliRunner()


@pytest.fixture(scope="module")
def second_run(phantoms, tmp_path_factory):
    """Another training of the phantoms, another seed and fewer epochs: a member that disagrees with the first."""
    from braintumor.config import TrainConfig
    from braintumor.training import train

    out = tmp_path_factory.mktemp("ens") / "seed1"
    return train(TrainConfig(data_dir=str(phantoms), **{**TINY, "seed": 1, "epochs": 3}), out=out).run_dir


def _prepared(pred, folder, n=48):
    from braintumor.data.cache import load_images

    paths = sorted(p for p in folder.rglob("*.png") if "_masks" not in p.parts)[:n]
    return load_images(paths, pred.preprocessor).images


def test_the_ensemble_averages_its_members_probabilities(trained_run, second_run, phantoms_test):
    a, b = Predictor.from_run(trained_run.run_dir), Predictor.from_run(second_run)
    ens = Ensemble([a, b])
    x = _prepared(a, phantoms_test)
    pa, pb, pe = a.proba_prepared(x), b.proba_prepared(x), ens.proba_prepared(x)
    assert np.abs(pa - pb).max() > 0.05  # the members really differ
    np.testing.assert_allclose(pe, (pa + pb) / 2, atol=1e-6)
    assert ens.labels_from_proba(pe) == [ens.classes[i] for i in pe.argmax(1)]
    # mirror TTA on the ensemble: each member's mirrored outputs averaged in as well
    ens.tta = True
    xm = np.ascontiguousarray(x[:, :, ::-1])
    want = (pa + pb + a.proba_prepared(xm) + b.proba_prepared(xm)) / 4
    np.testing.assert_allclose(ens.proba_prepared(x), want, atol=1e-6)
    # the input check is the first member's, on the averaged probabilities
    out = Ensemble([a, b]).outputs_prepared(x)
    np.testing.assert_allclose(out.scores, a.outputs_prepared(x).scores, rtol=1e-6)
    assert "ensemble of 2" == ens.model_info()["name"] and len(ens.fingerprint) == 16


def test_an_ensemble_of_a_run_and_its_copy_is_that_run(trained_run, phantoms_test, tmp_path):
    copy = copy_run(trained_run.run_dir, tmp_path / "copy")
    ens = load_ensemble([trained_run.run_dir, copy], backend="onnx")
    one = Predictor.from_run(trained_run.run_dir)
    x = _prepared(one, phantoms_test)
    np.testing.assert_allclose(ens.proba_prepared(x), one.proba_prepared(x), atol=1e-4)
    assert ens.backend == "onnxruntime"


def test_members_that_prepare_images_differently_are_refused(trained_run, tmp_path):
    other = copy_run(trained_run.run_dir, tmp_path / "other")
    meta = json.loads((other / "metadata.json").read_text())
    meta["preprocessing"]["crop_brain"] = not meta["preprocessing"]["crop_brain"]
    (other / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="crop_brain"):
        load_ensemble([trained_run.run_dir, other])
    with pytest.raises(UsageError, match="given twice"):
        load_ensemble([trained_run.run_dir, trained_run.run_dir])
    with pytest.raises(UsageError, match="two or more"):
        Ensemble([Predictor.from_run(trained_run.run_dir)])


def test_cli_evaluate_and_predict_with_an_ensemble(trained_run, second_run, phantoms_test, tmp_path):
    run = trained_run.run_dir
    # an ensemble's figures belong to no one run: --out is required, and no folder is written without it
    def listing():  # other tests evaluate the shared run into its evaluations/: only a change counts here
        return sorted(str(p) for r in (run, second_run) for p in r.rglob("*"))

    before = listing()
    res = runner.invoke(app, ["evaluate", str(run), "--with", str(second_run), "--data", str(phantoms_test)])
    assert res.exit_code == 2 and "--out" in res.output
    assert listing() == before
    out = tmp_path / "ens-eval"
    res = runner.invoke(app, ["evaluate", str(run), "--with", str(second_run), "--data", str(phantoms_test),
                              "--out", str(out), "--backend", "torch"])
    assert res.exit_code == 0, res.output
    assert listing() == before  # nothing written into either member's run folder
    m = json.loads((out / "metrics.json").read_text())
    ens = Ensemble([Predictor.from_run(run), Predictor.from_run(second_run)])
    from braintumor.evaluation import evaluate

    direct = evaluate(ens, phantoms_test, ci=False)
    assert m["n"] == 100 and m["accuracy"] == pytest.approx(direct.metrics["accuracy"])
    assert m["accuracy"] >= 0.85
    # predict: the rows carry the averaged probabilities
    csv = tmp_path / "p.csv"
    img = sorted((phantoms_test / "yes").glob("*.png"))[0]
    res = runner.invoke(app, ["predict", str(run), str(img), "--with", str(second_run), "--backend", "torch",
                              "--format", "csv", "--out", str(csv)])
    assert res.exit_code == 0, res.output
    got = ens.predict_paths([img])[0]
    import csv as csvlib

    row = next(csvlib.DictReader(csv.open()))
    assert float(row["p_yes"]) == pytest.approx(got.probabilities["yes"], abs=1e-3)
    res = runner.invoke(app, ["predict", str(run), str(img), "--with", str(second_run), "--heatmaps",
                              str(tmp_path / "h")])
    assert res.exit_code == 2 and "Grad-CAM" in res.output
