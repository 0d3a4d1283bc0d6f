"""INT8: a statically quantised export, kept only when it agrees with FP32 on the run's validation split."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")

from braintumor.errors import UsageError  # noqa: E402
from braintumor.export import OnnxPredictor, onnx_for_run  # noqa: E402
from braintumor.quantize import INT8_FILE, int8_for_run, quantize_onnx, quantize_run  # noqa: E402
from braintumor.report import INT8_SECTION, refresh_report_section  # noqa: E402
from conftest import copy_run  # noqa: E402


@pytest.fixture(scope="module")
def quantized(trained_run, tmp_path_factory):
    run = copy_run(trained_run.run_dir, tmp_path_factory.mktemp("int8") / "run")
    res = quantize_run(run, bar={"min_label_agreement": 0.9, "max_accuracy_drop": 0.05})
    return run, res


def test_quantize_run_keeps_an_int8_model_that_agrees_with_fp32(quantized):
    run, res = quantized
    assert res.passed, res.reason
    assert res.label_agreement >= 0.9 and res.n_validation > 10 and res.n_calibration > 10
    assert res.recipe in res.selection and res.n_selection > 0  # chosen on held-out training images
    assert (run / INT8_FILE).is_file() and not list(run.glob(f".{INT8_FILE}*"))
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["int8"]["passed"] is True and meta["int8"]["path"] == INT8_FILE
    assert meta["int8"]["method"] == "percentile" == res.method  # the calibration recorded with the decision
    int8 = int8_for_run(run)
    assert isinstance(int8, OnnxPredictor)
    fp32 = onnx_for_run(run)
    x = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    p8, p32 = int8.proba_prepared(x), fp32.proba_prepared(x)
    assert p8.shape == p32.shape and np.allclose(p8.sum(1), 1, atol=1e-5)
    # The graph really holds 8-bit weights (QDQ: DequantizeLinear nodes) and is smaller than FP32.
    import onnx

    ops = {n.op_type for n in onnx.load(str(run / INT8_FILE)).graph.node}
    assert "DequantizeLinear" in ops and "QuantizeLinear" in ops
    assert (run / INT8_FILE).stat().st_size < fp32.path.stat().st_size


def test_a_stale_int8_model_is_not_used(quantized, tmp_path):
    run, _ = quantized
    other = copy_run(run, tmp_path / "copy")
    (other / INT8_FILE).write_bytes((run / INT8_FILE).read_bytes())
    assert int8_for_run(other) is not None  # copied with its checkpoint: still current
    meta = json.loads((other / "metadata.json").read_text())
    meta["threshold"] = 0.9  # the run's decision changed after the INT8 export
    (other / "metadata.json").write_text(json.dumps(meta))
    assert int8_for_run(other) is None
    meta["threshold"] = json.loads((run / "metadata.json").read_text()).get("threshold")
    (other / "metadata.json").write_text(json.dumps(meta))
    ckpt = other / "checkpoints" / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # different weights file: size, mtime and hash differ
    os.utime(ckpt, ns=(1, 1))
    assert int8_for_run(other) is None


def test_failing_the_bar_keeps_fp32_and_writes_no_model(trained_run, tmp_path):
    run = copy_run(trained_run.run_dir, tmp_path / "run")
    (run / "model_card.md").write_bytes((trained_run.run_dir / "model_card.md").read_bytes())
    (run / "report.html").write_bytes((trained_run.run_dir / "report.html").read_bytes())
    (run / INT8_FILE).write_bytes(b"an older INT8 file")
    res = quantize_run(run, bar={"min_label_agreement": 1.01}, recipes=("all",))
    refresh_report_section(run, INT8_SECTION)  # as `export --int8` does after it
    assert not res.passed and "bar" in res.reason
    assert not (run / INT8_FILE).exists() and not list(run.glob(f".{INT8_FILE}*"))
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["int8"]["passed"] is False and meta["int8"]["reason"] == res.reason
    assert "made and not kept" in (run / "model_card.md").read_text()
    section = _section_html(run / "report.html", "int8")  # the report's section says it too, with the figures
    assert "not kept" in section and "Prediction uses FP32" in section and "bar" in res.reason
    assert f"{100 * res.label_agreement:.1f}%" in section and "model.int8.onnx</code>" not in section
    assert int8_for_run(run) is None


def test_export_int8_refreshes_the_report(trained_run, tmp_path):
    """`braintumor export RUN --int8` writes its decision into the run's report.html as well as the card."""
    from typer.testing import CliRunner

    from braintumor.cli import app

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    (run / "report.html").write_bytes((trained_run.run_dir / "report.html").read_bytes())
    assert "No 8-bit copy" in _section_html(run / "report.html", "int8")
    r = CliRunner().invoke(app, ["export", str(run), "--int8"])
    assert r.exit_code == 0, r.output
    q = json.loads((run / "metadata.json").read_text())["int8"]
    section = _section_html(run / "report.html", "int8")
    assert "No 8-bit copy" not in section and f"{100 * q['label_agreement']:.1f}%" in section
    assert ("kept: <code>predict</code>" in section) is q["passed"] and ("not kept" in section) is not q["passed"]


def _section_html(report, sid: str) -> str:
    page = report.read_text()
    assert page.count(f'<section id="{sid}">') == 1 and page.count(f'href="#{sid}"') == 1
    start = page.index(f'<section id="{sid}">')
    return page[start:page.index("</section>", start)]


def test_fp32_guard_decides_the_images_near_a_label_change(trained_run, tmp_path, monkeypatch):
    """INT8 that misses the bar alone is kept only with FP32 deciding the images it leaves near a label change;
    the band comes from held-out training images, and prediction then loads both models."""
    import braintumor.quantize as q
    from braintumor.backends import load_predictor

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    (run / "model_card.md").write_bytes((trained_run.run_dir / "model_card.md").read_bytes())
    page = (trained_run.run_dir / "report.html").read_text()  # a report from before the section existed
    start = page.index('<section id="int8">')
    page = page[:start] + page[page.index("</section>", start) + len("</section>\n"):]
    (run / "report.html").write_text(page.replace('<a href="#int8">8-bit inference</a> ', ""))
    real = OnnxPredictor.proba_prepared

    def flipped(self, images, batch_size=64):  # a broken INT8 candidate: every binary label turned round
        p = real(self, images, batch_size)
        return p[:, ::-1].copy() if self.path is not None and ".candidate-" in self.path.name else p

    monkeypatch.setattr(OnnxPredictor, "proba_prepared", flipped)
    monkeypatch.setattr(q, "GUARD_MAX", 0.5)  # the flip needs the widest band: every image goes to FP32
    res = quantize_run(run, bar={"min_label_agreement": 0.99}, recipes=("all",))
    refresh_report_section(run, INT8_SECTION)
    assert res.raw_label_agreement < 0.5 and res.passed, res  # alone it fails; with the guard it agrees
    assert res.label_agreement == 1.0 and res.int8_accuracy == res.fp32_accuracy
    assert res.guard_band == 0.5 and res.guarded_share == 1.0 and res.n_selection > 0
    meta = json.loads((run / "metadata.json").read_text())["int8"]
    assert meta["guard_band"] == 0.5 and meta["raw_label_agreement"] == res.raw_label_agreement
    card = (run / "model_card.md").read_text()  # the card says which precision answers, and the guard
    assert "## 8-bit inference" in card and "FP32 decides every image" in card and "within 0.500" in card
    section = _section_html(run / "report.html", "int8")  # added to the old report, before its caveats
    assert "kept: <code>predict</code>" in section and "FP32 deciding the images near a label change" in section
    assert "<td>FP32 guard: band of the decision margin</td><td>0.500</td>" in section
    assert "<td>validation images decided by FP32</td><td>100.0%</td>" in section
    page = (run / "report.html").read_text()
    assert page.index('<section id="int8">') < page.index('<section id="caveats">')
    assert page.count("<section ") == (trained_run.run_dir / "report.html").read_text().count("<section ")
    monkeypatch.setattr(OnnxPredictor, "proba_prepared", real)
    int8 = load_predictor(run, backend="auto")
    assert int8.precision == "int8" and int8.guard is not None and int8.guard_band == 0.5
    fp32 = onnx_for_run(run)
    x = np.random.default_rng(1).integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)
    assert np.array_equal(int8.proba_prepared(x), fp32.proba_prepared(x))  # every margin is below 0.5
    assert int8.guarded == 12
    int8.guard_band = 0.0  # no band: INT8's own probabilities
    assert not np.array_equal(int8.proba_prepared(x), fp32.proba_prepared(x)) and int8.guarded == 12
    (run / "model.onnx").unlink()  # the guard's FP32 model is gone: INT8 alone is not what passed
    assert int8_for_run(run) is None
    assert not (run / "model.onnx").exists()


def test_bad_recipe_or_method_is_one_line(quantized, tmp_path):
    run, _ = quantized
    x = np.zeros((4, 3, 64, 64), np.float32)
    with pytest.raises(UsageError, match="recipe"):
        quantize_onnx(run / "model.onnx", tmp_path / "q.onnx", x, recipe="fancy")
    with pytest.raises(UsageError, match="calibration method"):
        quantize_onnx(run / "model.onnx", tmp_path / "q.onnx", x, method="magic")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(UsageError, match="cannot be quantised"):
        quantize_onnx(tmp_path / "broken.onnx", tmp_path / "q.onnx", x)
    assert not (tmp_path / "q.onnx").exists()


def test_seven_bit_recipes_on_a_cpu_without_vnni(quantized, tmp_path, monkeypatch):
    """Without VNNI (AVX2 U8S8 kernels can saturate) the 7-bit-weight recipes are tried too; their weights stay in
    [-64, 63]."""
    import onnx
    from onnx import numpy_helper

    import braintumor.quantize as q

    monkeypatch.setattr(q, "cpu_has_vnni", lambda: False)
    assert q.default_recipes() == q.RECIPES + q.RECIPES_7BIT
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: True)
    assert q.default_recipes() == q.RECIPES
    monkeypatch.setattr(q, "cpu_has_vnni", lambda: None)  # flags unknown: try them as well
    assert q.default_recipes() == q.RECIPES + q.RECIPES_7BIT
    run, _ = quantized
    x = np.random.default_rng(0).normal(size=(8, 3, 64, 64)).astype(np.float32)

    def widest_weight(recipe: str) -> int:
        path = quantize_onnx(run / "model.onnx", tmp_path / f"{recipe}.onnx", x, recipe=recipe)
        ints = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                if t.data_type == onnx.TensorProto.INT8]
        assert ints
        return max(int(np.abs(a.astype(np.int16)).max()) for a in ints)

    assert widest_weight("all-7bit") <= 64 < widest_weight("all")
    assert int8_for_run(run) is not None  # the run's own INT8 file untouched


def test_histogram_calibration_prints_nothing(quantized, tmp_path, capfd):
    """onnxruntime's percentile calibrator prints progress lines; none may reach our output (JSON, CSV on stdout)."""
    run, _ = quantized
    x = np.random.default_rng(0).normal(size=(16, 3, 64, 64)).astype(np.float32)
    capfd.readouterr()
    quantize_onnx(run / "model.onnx", tmp_path / "q.onnx", x, method="percentile")
    assert (tmp_path / "q.onnx").is_file()
    assert capfd.readouterr().out == ""


def test_predict_uses_int8_by_default_only_when_it_passed(quantized, trained_run, tmp_path):
    from typer.testing import CliRunner

    from braintumor.backends import load_predictor
    from braintumor.cli import app
    from braintumor.errors import RunError

    run, _ = quantized
    assert load_predictor(run, backend="auto").precision == "int8"
    assert load_predictor(run, backend="auto", precision="fp32").precision == "fp32"
    assert load_predictor(run, backend="torch").precision == "fp32"
    info = load_predictor(run, backend="auto").model_info()
    assert info["precision"] == "int8" and info["backend"] == "onnxruntime" and info["version"] == run.name
    with pytest.raises(UsageError, match="onnxruntime"):
        load_predictor(run, backend="torch", precision="int8")
    plain = copy_run(trained_run.run_dir, tmp_path / "plain")
    assert load_predictor(plain, backend="auto").precision == "fp32"
    with pytest.raises(RunError, match="no INT8 model"):
        load_predictor(plain, backend="auto", precision="int8")
    image = next((plain / "split.csv").read_text().splitlines()[1].split(",")[0] for _ in [0])
    r = CliRunner().invoke(app, ["predict", str(plain), image, "--precision", "int8"])
    assert r.exit_code == 2 and "export" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["predict", str(run), image, "--format", "json"])
    assert r.exit_code == 0, r.stderr


def test_an_int8_copy_checked_with_vnni_is_not_used_on_a_cpu_without(quantized, tmp_path, monkeypatch):
    """Without VNNI 8-bit results drift further from FP32 (benchmarks/README: 91.9% against 97.9% identical labels):
    a copy checked on a VNNI CPU is not used on a CPU without one unless asked for, and the user is told why."""
    from braintumor import quantize
    from braintumor.backends import load_predictor

    run, res = quantized
    assert res.cpu_vnni == quantize.cpu_has_vnni()
    assert json.loads((run / "metadata.json").read_text())["int8"]["cpu_vnni"] == res.cpu_vnni
    moved = copy_run(run, tmp_path / "moved")
    for name in ("model.onnx", INT8_FILE):
        shutil.copy2(run / name, moved / name)
    meta = json.loads((moved / "metadata.json").read_text())
    meta["int8"]["cpu_vnni"] = True
    (moved / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    said: list[str] = []
    assert load_predictor(moved, backend="auto", notice=said.append).precision == "fp32"
    assert [s for s in said if "VNNI" in s and "--int8" in s]
    assert load_predictor(moved, backend="auto", precision="int8").precision == "int8"   # asked for: used
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: True)
    assert load_predictor(moved, backend="auto").precision == "int8"
    meta["int8"]["cpu_vnni"] = False  # checked on a CPU without VNNI: used everywhere
    (moved / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    assert load_predictor(moved, backend="auto").precision == "int8"
