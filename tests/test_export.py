"""ONNX export: parity with torch for every registered model, embedded metadata, dynamic batch, refused exports."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from braintumor.backends import load_predictor  # noqa: E402
from braintumor.data.read import read_image  # noqa: E402
from braintumor.errors import RunError  # noqa: E402
from braintumor.export import METADATA_KEY, OnnxPredictor, ParityError, export_onnx  # noqa: E402
from braintumor.inference import Predictor
from braintumor.models import available_models, build_model, get_spec  # noqa: E402
from braintumor.preprocess import Preprocessor  # noqa: E402
from braintumor.rundir import RunDir  # noqa: E402
from conftest import copy_run  # noqa: E402

HEAVY = {"densenet121", "efficientnet-b0"}


def _fake_run(root, name: str, phantoms, img_size: int = 64):
    """A run folder around a random-init model: metadata, best.pt and a split.csv pointing at real images."""
    torch.manual_seed(0)
    run = RunDir(root).create()
    spec = get_spec(name)
    model = build_model(name, 2, pretrained=False, img_size=img_size).eval()
    pre = Preprocessor(img_size=img_size, mean=spec.mean, std=spec.std)
    run.write_json(run.metadata, {
        "model": name, "classes": ["no", "yes"], "positive_class": "yes", "img_size": img_size,
        "preprocessing": pre.to_dict(), "calibration": {"temperature": 0.7}, "threshold": 0.45,
        "data": {"fingerprint": "abc123"}})
    run.save_checkpoint(run.best, {"model": model.state_dict()})
    with open(run.root / "split.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subset"])
        for cls in ("yes", "no"):
            for p in sorted((phantoms / cls).glob("*.png"))[:6]:
                w.writerow([p, cls, "val"])
    return run.root


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in available_models()])
def test_onnx_parity_every_registered_model(name, phantoms, tmp_path):
    run = _fake_run(tmp_path / name, name, phantoms)
    res = export_onnx(run, tmp_path / f"{name}.onnx")
    assert res.path.is_file() and res.size_bytes == res.path.stat().st_size
    assert res.n_checked == 12 and "split.csv" in res.check_source
    assert res.max_abs_diff <= 1e-4 and res.labels_agree
    # Dynamic batch: batch 1 and batch 5 through onnxruntime match torch.
    torch_pred = Predictor.from_run(run, device="cpu")
    onnx_pred = OnnxPredictor(res.path)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    for n in (1, 5):
        np.testing.assert_allclose(onnx_pred.proba_prepared(x[:n]), torch_pred.proba_prepared(x[:n]), atol=1e-4)


def test_export_embeds_metadata_and_predicts_like_torch(trained_run, phantoms_test, tmp_path):
    import onnx

    res = export_onnx(trained_run.run_dir)  # default: RUN/model.onnx
    assert res.path == RunDir(trained_run.run_dir).onnx
    assert "validation image(s) from split.csv" in res.check_source and res.max_abs_diff <= 1e-4
    torch_pred = trained_run.predictor()
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    meta = json.loads(props[METADATA_KEY])
    assert meta["classes"] == torch_pred.classes == json.loads(props["classes"])
    assert meta["preprocessing"] == torch_pred.preprocessor.to_dict()
    assert json.loads(props["normalisation"]) == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert props["model"] == "cnn" and int(props["img_size"]) == 64
    assert float(props["temperature"]) == pytest.approx(torch_pred.temperature)
    assert json.loads(props["threshold"]) == torch_pred.threshold
    assert props["data_fingerprint"] == torch_pred.metadata["data"]["fingerprint"]
    assert props["weights_fingerprint"] == torch_pred.fingerprint

    onnx_pred = load_predictor(res.path)
    assert isinstance(onnx_pred, OnnxPredictor) and onnx_pred.model is None
    assert onnx_pred.model_info()["fingerprint"] == torch_pred.fingerprint
    assert onnx_pred.model_info()["version"] == trained_run.run_dir.name
    assert type(load_predictor(trained_run.run_dir)) is Predictor
    files = sorted(phantoms_test.rglob("*.png"))
    files = [f for f in files if "_masks" not in f.parts][:40]
    a, b = torch_pred.predict_paths(files), onnx_pred.predict_paths(files, batch_size=7)
    assert [p.label for p in a] == [p.label for p in b]
    diffs = [abs(p.probabilities[c] - q.probabilities[c]) for p, q in zip(a, b, strict=True) for c in p.probabilities]
    assert max(diffs) <= 1e-4
    # The "probabilities" output of the graph already applies the temperature (for non-Python consumers).
    prepared = np.stack([torch_pred.preprocessor.prepare(read_image(f)) for f in files[:4]])
    x = torch_pred.preprocessor.normalise(prepared).numpy()
    probs = onnx_pred.session.run(["probabilities"], {"input": x})[0]
    np.testing.assert_allclose(probs, torch_pred.proba_prepared(prepared), atol=1e-4)


def test_export_fails_when_parity_breaks(trained_run, tmp_path, monkeypatch):
    import braintumor.export as ex

    monkeypatch.setattr(ex, "_reference_proba", lambda p, x: p.proba_prepared(x) + 1e-3)
    out = tmp_path / "broken.onnx"
    with pytest.raises(ParityError, match="differ from torch"):
        export_onnx(trained_run.run_dir, out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_with_given_images_and_bad_inputs(trained_run, phantoms_test, tmp_path):
    res = export_onnx(trained_run.run_dir, tmp_path / "m.onnx", check_images=[phantoms_test / "no"], n_check=10)
    assert res.n_checked == 10 and "given image" in res.check_source
    with pytest.raises(RunError):
        OnnxPredictor(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(RunError, match="not a loadable ONNX"):
        OnnxPredictor(junk)
    with pytest.raises(RunError, match="not a run folder"):
        load_predictor(tmp_path / "nothing")


def test_export_cli(trained_run, tmp_path):
    from typer.testing import CliRunner

    from braintumor.cli import app

    r = CliRunner().invoke(app, ["export", str(trained_run.run_dir), "--out", str(tmp_path / "c.onnx")])
    assert r.exit_code == 0, r.output
    assert "max |p_torch - p_onnx|" in r.output and (tmp_path / "c.onnx").is_file()
    r = CliRunner().invoke(app, ["export", str(tmp_path / "no-run")])
    assert r.exit_code == 2 and "not a run folder" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["export", str(trained_run.run_dir), "--out", str(tmp_path / "c.txt")])
    assert r.exit_code == 2 and ".onnx" in r.output


# ------------------------------------------------------------------------------ on-demand export of a run folder


def test_export_records_the_checkpoint_it_came_from(trained_run, tmp_path):
    import onnx

    from braintumor.inference import file_sha256

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    res = export_onnx(run)
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    stamp = json.loads(props[METADATA_KEY])["checkpoint"]
    best = RunDir(run).best
    assert stamp == {"file": "checkpoints/best.pt", "size": best.stat().st_size,
                     "mtime_ns": best.stat().st_mtime_ns, "sha256": file_sha256(best)}
    assert props["checkpoint_sha256"] == stamp["sha256"]
    # An explicit `braintumor export RUN` is what the fast path reuses (no second export).
    from braintumor.export import onnx_for_run

    notes: list[str] = []
    pred = onnx_for_run(run, notice=notes.append)
    assert notes == [] and pred.path == res.path and pred.run_dir == run
    # A predictor built by hand (no run folder) has no stamp; its export still works.
    manual = Predictor(trained_run.predictor().model, trained_run.predictor().preprocessor, ["no", "yes"], "yes")
    assert manual.checkpoint_stamp() is None


def test_older_export_without_stamp_is_reused_when_the_weights_match(trained_run, tmp_path, monkeypatch):
    import onnx

    from braintumor.export import onnx_for_run

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    with monkeypatch.context() as m:
        m.setattr(Predictor, "checkpoint_stamp", lambda self: None)  # as written by earlier versions
        res = export_onnx(run)
    props = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert "checkpoint" not in json.loads(props[METADATA_KEY])
    notes: list[str] = []
    pred = onnx_for_run(run, notice=notes.append)
    assert notes == [] and pred.path == res.path  # same weights fingerprint: current
    # A file that is not an ONNX model where model.onnx should be: exported again, replaced.
    res.path.write_bytes(b"garbage")
    pred = onnx_for_run(run, notice=notes.append)
    assert len(notes) == 1 and pred.backend == "onnxruntime" and res.path.stat().st_size > 1000


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    from braintumor.export import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "braintumor" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir().parts[-3:] == (".cache", "braintumor", "onnx")
