"""The public Python API: every name documented with an example, rich display, and the docs' quick start runs."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import numpy as np
import pytest

import braintumor as bt
from test_docs import quickstart_block


def test_every_public_name_has_a_docstring_with_an_example():
    missing = []
    for name in bt.__all__:
        if name == "__version__":
            continue
        doc = inspect.getdoc(getattr(bt, name)) or ""
        if "Example" not in doc or ">>>" not in doc:
            missing.append(name)
    assert not missing, f"public names without a docstring example: {missing}"


def test_public_api_is_complete():
    for name in ("load_folder", "train", "cv", "evaluate", "load_run", "Predictor", "explain", "export_onnx"):
        assert name in bt.__all__ and callable(getattr(bt, name)), name
    assert set(dir(bt)) >= set(bt.__all__)
    with pytest.raises(AttributeError):
        bt.no_such_thing  # noqa: B018


def test_no_public_name_is_also_a_module():
    """Modules are named for what they hold (training, evaluation, ...): no public name can be shadowed by one."""
    import braintumor

    modules = {m.name.rpartition(".")[2] for m in pkgutil.iter_modules(braintumor.__path__)}
    assert modules & set(bt.__all__) == set()
    assert type(braintumor) is types.ModuleType  # no class swap needed


def test_functions_stay_functions_after_every_submodule_is_imported():
    import braintumor

    for mod in pkgutil.walk_packages(braintumor.__path__, "braintumor."):
        if mod.name.endswith(("__main__", ".serve.app")):
            continue
        importlib.import_module(mod.name)
    for name in ("train", "evaluate", "cv", "explain"):
        assert inspect.isfunction(getattr(bt, name)), name
    from braintumor.training import TrainResult  # the submodules themselves stay importable

    assert bt.TrainResult is TrainResult
    assert importlib.import_module("braintumor.evaluation").EvaluationResult is bt.EvaluationResult


def test_result_reprs_and_html(trained_run, phantoms_test):
    assert repr(trained_run).startswith("TrainResult(run_dir=")
    html = trained_run._repr_html_()
    assert "<table" in html and "accuracy" in html and "confusion matrix" in html
    assert "data:image/png;base64," in html  # the training curves
    res = bt.evaluate(trained_run.run_dir, phantoms_test, n_boot=100)
    assert repr(res).startswith("EvaluationResult(n=100")
    html = res._repr_html_()
    assert "95% CI" in html
    low, high = res.metrics["ci"]["accuracy"]["low"], res.metrics["ci"]["accuracy"]["high"]
    assert f"[{low:.3f}, {high:.3f}]" in html


def test_explanation_displays_as_a_figure(trained_run, phantoms):
    image = bt.load_folder(phantoms).paths[-1]
    ex = bt.explain(trained_run, image)
    assert ex.heatmap.shape == (64, 64) and 0 <= ex.heatmap.min() and ex.heatmap.max() <= 1
    assert repr(ex).startswith("Explanation(label=")
    assert ex._repr_html_().startswith("<img") and "data:image/png;base64," in ex._repr_html_()


def test_cv_result_html():
    from pathlib import Path

    s = {"mean": 0.9, "std": 0.05, "low": 0.84, "high": 0.96, "n": 5}
    res = bt.CVResult(Path("runs/cv"), folds=[{}] * 5, summary={"accuracy": s, "roc_auc": s},
                      pooled={"accuracy": 0.91}, pooled_ci={"accuracy": {"estimate": 0.91, "low": 0.85, "high": 0.95}},
                      n_groups=40, leakage={"accuracy": {"group_aware": 0.9, "naive": 0.95, "inflation": 0.05}})
    html = res._repr_html_()
    assert "0.900 &plusmn; 0.050" in html and "[0.840, 0.960]" in html and "[0.850, 0.950]" in html
    assert "inflation" in html and "40 groups" in html


@pytest.mark.slow
def test_quickstart_from_the_docs_runs(tmp_path, monkeypatch):
    """Exactly the lines of docs/index.md's quick start: import -> trained model -> Grad-CAM figure."""
    monkeypatch.chdir(tmp_path)
    code = "\n".join(quickstart_block())
    namespace: dict = {}
    exec(compile(code, "docs/index.md#quickstart", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert (tmp_path / "gradcam.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "quickstart" / "checkpoints" / "best.pt").is_file()
    assert result.metadata["model"] == "efficientnet-lite0"
    assert 0 <= result.metrics["accuracy"] <= 1 and result.metrics["n"] == 24  # 20% of 120 phantoms
    ex = bt.explain(namespace["predictor"], namespace["image"])
    assert ex.heatmap.shape == (64, 64) and np.isfinite(ex.heatmap).all()


def test_importing_the_package_keeps_the_users_matplotlib_backend():
    """Training writes figures to files without switching the backend (a notebook keeps its inline plots)."""
    import os
    import subprocess
    import sys

    code = ("import matplotlib, braintumor as bt; bt.train; import braintumor.calibration, braintumor.plots; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MPLBACKEND": "svg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
