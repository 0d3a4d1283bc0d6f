"""examples/quickstart.ipynb: committed without outputs, and it runs top to bottom on phantoms (BRAINTUMOR_QUICK=1)."""

from __future__ import annotations

import time

import pytest

from conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def _read():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_has_no_outputs():
    nb = _read()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"strip the outputs of code cells {dirty} (jupyter nbconvert --clear-output --inplace)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_notebook_tells_the_whole_story():
    source = "\n".join(c.source for c in _read().cells if c.cell_type == "code")
    for call in ("bt.write_phantoms(", "bt.load_folder(", "bt.audit(", "bt.train(", "curves.png", "bt.evaluate(",
                 "confusion_matrix.png", "bt.explain(", "predict_paths(", "bt.export_onnx(", "BRAINTUMOR_QUICK"):
        assert call in source, call
    assert "efficientnet" not in source.split("TrainConfig")[1].split("\n")[0]  # the default model is used


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("BRAINTUMOR_QUICK", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figures
    nb = _read()
    t0 = time.time()
    # kernel "python3" is ipykernel in the interpreter running the tests (the venv); cwd is tmp_path
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.time() - t0
    print(f"notebook executed in {seconds:.0f} s")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # samples, curves, confusion matrix, Grad-CAM panels
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("95% CI" in h for h in html)  # the metrics table with intervals
    assert any("data:image/png;base64," in h for h in html)  # the Explanation figure / TrainResult curves
    work = tmp_path / "quickstart-work"
    assert (work / "runs" / "quickstart" / "checkpoints" / "best.pt").is_file()
    assert (work / "quickstart.onnx").stat().st_size > 1_000_000
