"""``braintumor predict``: run folder and ONNX agree, unreadable files become error rows, exit codes 0/1/2."""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from braintumor.cli import app
from conftest import NAVONEEL, copy_run, needs_data

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _folder_with_bad_files(src, dst, n=8):
    """A copy of n images per class plus a corrupt JPEG and a text file."""
    for cls in ("yes", "no"):
        (dst / cls).mkdir(parents=True)
        for p in sorted((src / cls).glob("*.png"))[:n]:
            shutil.copy(p, dst / cls / p.name)
    (dst / "yes" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)
    (dst / "no" / "notes.png").write_text("not an image\n")
    return dst


@pytest.fixture(scope="module")
def onnx_model(trained_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from braintumor.export import export_onnx

    return export_onnx(trained_run.run_dir, tmp_path_factory.mktemp("pred_onnx") / "model.onnx").path


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_csv_error_rows_and_exit_1(trained_run, phantoms_test, tmp_path):
    folder = _folder_with_bad_files(phantoms_test, tmp_path / "imgs")
    out = tmp_path / "pred.csv"
    r = _invoke("predict", trained_run.run_dir, folder, "--format", "csv", "--out", out, "--batch-size", "5")
    assert r.exit_code == 1, r.output
    assert "2 of 18 file(s) could not be read" in r.output and "Traceback" not in r.output
    rows = _csv(out.read_text())
    assert len(rows) == 18 and list(rows[0]) == ["path", "label", "p_no", "p_yes", "error", "verdict",
                                                 "in_distribution", "ood_score", "ood_reasons"]
    bad = {r["path"].split("/")[-1]: r for r in rows if r["error"]}
    assert set(bad) == {"corrupt.jpg", "notes.png"} and "text" in bad["notes.png"]["error"]
    assert all(r["label"] == "" and r["p_yes"] == "" and r["verdict"] == "" for r in bad.values())
    good = [r for r in rows if not r["error"]]
    assert all(r["label"] in ("yes", "no") for r in good)
    assert all(abs(float(r["p_no"]) + float(r["p_yes"]) - 1) < 1e-5 for r in good)
    # Same numbers as the Python API (the run's temperature and threshold applied).
    ref = {p.path: p for p in trained_run.predictor().predict_paths([r["path"] for r in good])}
    for row in good:
        assert row["label"] == ref[row["path"]].label
        assert float(row["p_yes"]) == pytest.approx(ref[row["path"]].probabilities["yes"], abs=1e-5)


def test_predict_all_readable_exit_0_json_and_table(trained_run, phantoms_test):
    files = sorted((phantoms_test / "yes").glob("*.png"))[:3]
    r = _invoke("predict", trained_run.run_dir, *files, "--format", "json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["n"] == 3 and out["n_failed"] == 0 and out["model"]["name"] == "cnn"
    assert [p["label"] in ("yes", "no") for p in out["predictions"]] == [True] * 3
    r = _invoke("predict", trained_run.run_dir, str(phantoms_test / "no" / "*.png"))
    assert r.exit_code == 0 and "p(yes)" in r.stdout


def test_predict_onnx_agrees_with_run_folder(trained_run, onnx_model, phantoms_test, tmp_path):
    folder = _folder_with_bad_files(phantoms_test, tmp_path / "imgs", n=20)
    a = _invoke("predict", trained_run.run_dir, folder, "--format", "json")
    b = _invoke("predict", onnx_model, folder, "--format", "json", "--batch-size", "7")
    assert a.exit_code == b.exit_code == 1
    pa, pb = json.loads(a.stdout)["predictions"], json.loads(b.stdout)["predictions"]
    assert [p["path"] for p in pa] == [p["path"] for p in pb]
    assert [p["label"] for p in pa] == [p["label"] for p in pb]
    assert [p["error"] for p in pa] == [p["error"] for p in pb] and sum(p["error"] is not None for p in pa) == 2
    diff = max(abs(p["probabilities"][c] - q["probabilities"][c])
               for p, q in zip(pa, pb, strict=True) if p["error"] is None for c in p["probabilities"])
    assert diff <= 1e-4


def test_predict_usage_errors_exit_2(trained_run, onnx_model, phantoms_test, tmp_path):
    (tmp_path / "empty").mkdir()
    r = _invoke("predict", trained_run.run_dir, tmp_path / "empty")
    assert r.exit_code == 2 and "no image files found" in r.output
    r = _invoke("predict", trained_run.run_dir, phantoms_test, "--format", "xml")
    assert r.exit_code == 2 and "--format" in r.output
    r = _invoke("predict", tmp_path / "no-such-run", phantoms_test)
    assert r.exit_code == 2 and "not a run folder" in r.output
    r = _invoke("predict", onnx_model, phantoms_test, "--heatmaps", tmp_path / "maps")
    assert r.exit_code == 2 and "--heatmaps needs" in r.output
    r = _invoke("predict", trained_run.run_dir)
    assert r.exit_code == 2


def test_predict_missing_file_is_an_error_row(trained_run, phantoms_test, tmp_path):
    good = sorted((phantoms_test / "yes").glob("*.png"))[0]
    r = _invoke("predict", trained_run.run_dir, good, tmp_path / "gone.png", "--format", "csv")
    assert r.exit_code == 1
    rows = _csv(r.stdout)
    assert [row["error"] for row in rows] == ["", "no such file"]


def test_predict_heatmaps(trained_run, phantoms_test, tmp_path):
    pytest.importorskip("braintumor.explanation", reason="braintumor.explanation (Grad-CAM) not available")
    files = sorted((phantoms_test / "yes").glob("*.png"))[:2]
    r = _invoke("predict", trained_run.run_dir, *files, "--heatmaps", tmp_path / "maps", "--format", "csv")
    assert r.exit_code == 0, r.output
    for f in files:
        ov = tmp_path / "maps" / f"{f.stem}_overlay.png"
        assert ov.is_file()
        arr = np.asarray(Image.open(ov))
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8


@needs_data(NAVONEEL)
def test_predict_navoneel_onnx_and_run_agree_with_a_corrupt_file(trained_run, onnx_model, tmp_path):
    """253 real MRI images (+1 corrupt file): the exported model and the run folder give the same labels."""
    folder = tmp_path / "navoneel"
    shutil.copytree(NAVONEEL, folder)
    (folder / "yes" / "zz_corrupt.jpg").write_bytes((NAVONEEL / "yes").iterdir().__next__().read_bytes()[:300])
    a = _invoke("predict", trained_run.run_dir, folder, "--format", "json")
    b = _invoke("predict", onnx_model, folder, "--format", "json")
    assert a.exit_code == b.exit_code == 1
    pa, pb = json.loads(a.stdout)["predictions"], json.loads(b.stdout)["predictions"]
    assert len(pa) == len(pb) == 254
    assert [p["path"] for p in pa if p["error"]] == [str(folder / "yes" / "zz_corrupt.jpg")]
    assert [p["label"] for p in pa] == [p["label"] for p in pb]


# ------------------------------------------------------------------------------ backends: auto / onnx / torch


def _phantom_files(folder, n=24):
    files = sorted(p for p in folder.rglob("*.png") if "_masks" not in p.parts)
    return files[:: max(1, len(files) // n)][:n]


def _assert_same_predictions(a, b, atol=1e-4):
    assert [p.path for p in a] == [p.path for p in b]
    assert [p.label for p in a] == [p.label for p in b]
    assert [p.error for p in a] == [p.error for p in b]
    diffs = [abs(p.probabilities[c] - q.probabilities[c]) for p, q in zip(a, b, strict=True) if p.ok
             for c in p.probabilities]
    assert diffs and max(diffs) <= atol


def test_auto_backend_exports_once_reuses_and_matches_torch(trained_run, phantoms_test, tmp_path):
    pytest.importorskip("onnxruntime")
    from braintumor.backends import load_predictor

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    notes: list[str] = []
    fast = load_predictor(run, backend="auto", notice=notes.append)
    assert fast.backend == "onnxruntime" and fast.path == run / "model.onnx" and fast.path.is_file()
    assert len(notes) == 1 and "exporting" in notes[0]
    written = fast.path.stat().st_mtime_ns
    again = load_predictor(run, backend="auto", notice=notes.append)
    assert again.backend == "onnxruntime" and len(notes) == 1  # reused: no second export
    assert again.path.stat().st_mtime_ns == written
    torch_pred = load_predictor(run, backend="torch")
    assert type(torch_pred).__name__ == "Predictor" and torch_pred.backend == "torch"
    # Same report as the torch predictor (name, version, fingerprints...), backend aside.
    assert again.model_info() == dict(torch_pred.model_info(), backend="onnxruntime")
    files = _phantom_files(phantoms_test, 40)
    _assert_same_predictions(torch_pred.predict_paths(files), again.predict_paths(files, batch_size=7))


def test_predict_cli_backends_agree(trained_run, phantoms_test, tmp_path):
    pytest.importorskip("onnxruntime")
    run = copy_run(trained_run.run_dir, tmp_path / "run")
    folder = _folder_with_bad_files(phantoms_test, tmp_path / "imgs", n=10)
    a = _invoke("predict", run, folder, "--format", "json", "--backend", "torch")
    b = _invoke("predict", run, folder, "--format", "json")  # auto: exports RUN/model.onnx on demand
    assert a.exit_code == b.exit_code == 1, b.output
    assert "exporting" in b.stderr and (run / "model.onnx").is_file()
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["model"]["backend"] == "torch" and jb["model"]["backend"] == "onnxruntime"
    assert {k: v for k, v in ja["model"].items() if k != "backend"} == \
        {k: v for k, v in jb["model"].items() if k != "backend"}
    from braintumor.inference import Prediction

    pa = [Prediction(**p) for p in ja["predictions"]]
    pb = [Prediction(**p) for p in jb["predictions"]]
    _assert_same_predictions(pa, pb)
    c = _invoke("predict", run, folder, "--format", "json", "--backend", "onnx")
    assert c.exit_code == 1 and "exporting" not in c.stderr  # the cached export is reused
    assert [p["label"] for p in json.loads(c.stdout)["predictions"]] == [p.label for p in pb]


def test_predict_on_onnxruntime_never_imports_torch(trained_run, phantoms_test, tmp_path):
    """`predict` on a run's export (FP32 and INT8) runs with torch and MONAI made unimportable: their ~1 s of
    import is not paid by the fast path. The same labels and probabilities as with them."""
    pytest.importorskip("onnxruntime.quantization")
    import subprocess
    import sys

    from braintumor.quantize import quantize_run

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    folder = _folder_with_bad_files(phantoms_test, tmp_path / "imgs", n=10)
    want = _invoke("predict", run, folder, "--format", "json")  # exports RUN/model.onnx with torch
    assert want.exit_code == 1 and (run / "model.onnx").is_file(), want.output
    script = tmp_path / "no_torch.py"
    script.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'monai'):\n"
        "            raise ImportError('torch imported: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from braintumor.cli import main\n"
        "sys.argv = ['braintumor'] + sys.argv[1:]\n"
        "main()\n")

    def predict(*extra: str) -> dict:
        res = subprocess.run([sys.executable, str(script), "predict", str(run), str(folder), "--format", "json",
                              *extra], capture_output=True, text=True, timeout=300)
        assert res.returncode == 1 and "torch imported" not in res.stderr, res.stderr[-2000:]
        return json.loads(res.stdout)

    from braintumor.inference import Prediction

    got = predict()
    assert got["model"]["backend"] == "onnxruntime" and got["model"]["precision"] == "fp32"
    _assert_same_predictions([Prediction(**p) for p in json.loads(want.stdout)["predictions"]],
                             [Prediction(**p) for p in got["predictions"]])
    assert quantize_run(run, bar={"min_label_agreement": 0.0, "max_accuracy_drop": 1.0}).passed
    int8 = predict("--precision", "int8")
    assert int8["model"]["precision"] == "int8"
    assert [p["label"] is None for p in int8["predictions"]] == [p["label"] is None for p in got["predictions"]]


def test_stale_export_is_redone_when_the_checkpoint_or_metadata_change(trained_run, phantoms_test, tmp_path):
    pytest.importorskip("onnxruntime")
    import os

    import torch

    from braintumor.backends import load_predictor
    from braintumor.rundir import RunDir

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    first = load_predictor(run, backend="onnx")
    old_fp = first.fingerprint
    # New weights in best.pt (as a continued training would write): the export is stale.
    rd = RunDir(run)
    ckpt = torch.load(rd.best, map_location="cpu", weights_only=False)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.ndim == 4)
    ckpt["model"][key] = ckpt["model"][key] * 1.5
    rd.save_checkpoint(rd.best, ckpt)
    notes: list[str] = []
    fast = load_predictor(run, backend="auto", notice=notes.append)
    torch_pred = load_predictor(run, backend="torch")
    assert len(notes) == 1 and "exporting" in notes[0]
    assert fast.fingerprint == torch_pred.fingerprint != old_fp
    files = _phantom_files(phantoms_test)
    _assert_same_predictions(torch_pred.predict_paths(files), fast.predict_paths(files))
    # Same bytes, new modification time (a copy): still current, found by the checkpoint's SHA-256.
    st = rd.best.stat()
    os.utime(rd.best, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert load_predictor(run, backend="auto", notice=notes.append).backend == "onnxruntime" and len(notes) == 1
    # A new decision threshold in metadata.json: exported again, and applied.
    meta = json.loads(rd.metadata.read_text())
    meta["threshold"] = 0.123
    rd.write_json(rd.metadata, meta)
    fast = load_predictor(run, backend="auto", notice=notes.append)
    assert len(notes) == 2 and fast.threshold == 0.123


def test_read_only_run_folder_uses_the_user_cache(trained_run, phantoms_test, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import braintumor.export as ex
    from braintumor.backends import load_predictor

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ex, "_writable", lambda folder: False)  # as on a read-only mount
    notes: list[str] = []
    fast = load_predictor(run, backend="auto", notice=notes.append)
    cached = list((tmp_path / "cache" / "braintumor" / "onnx").glob("*.onnx"))
    assert fast.backend == "onnxruntime" and cached == [fast.path] and not (run / "model.onnx").exists()
    assert load_predictor(run, backend="auto", notice=notes.append).path == cached[0] and len(notes) == 1
    # Nowhere to write at all: auto predicts with torch (one notice), onnx is a one-line error.
    cached[0].unlink()

    def refuse(path, write):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(ex, "atomic_write_bytes", refuse)
    pred = load_predictor(run, backend="auto", notice=notes.append)
    assert pred.backend == "torch" and "cannot write the ONNX export" in notes[-1]
    r = _invoke("predict", run, _phantom_files(phantoms_test, 1)[0], "--backend", "onnx")
    assert r.exit_code == 1 and "cannot write the ONNX export" in r.output and "Traceback" not in r.output


def test_missing_onnxruntime_falls_back_to_torch(trained_run, phantoms_test, tmp_path, monkeypatch):
    import sys

    from braintumor.backends import load_predictor

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    notes: list[str] = []
    pred = load_predictor(run, backend="auto", notice=notes.append)
    assert pred.backend == "torch" and len(notes) == 1 and "onnxruntime is not installed" in notes[0]
    assert not (run / "model.onnx").exists()
    f = _phantom_files(phantoms_test, 1)[0]
    r = _invoke("predict", run, f, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"]["backend"] == "torch"
    assert "onnxruntime is not installed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _invoke("predict", run, f, "--backend", "onnx")
    assert r.exit_code == 2 and "onnxruntime is not installed" in r.output and "Traceback" not in r.output


def test_failed_export_falls_back_to_torch_in_one_line(trained_run, phantoms_test, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import braintumor.export as ex

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    monkeypatch.setattr(ex, "_reference_proba", lambda p, x: p.proba_prepared(x) + 1e-3)  # parity breaks
    f = _phantom_files(phantoms_test, 1)[0]
    r = _invoke("predict", run, f, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["model"]["backend"] == "torch"
    assert "ONNX export refused" in r.stderr and "predicting with torch" in r.stderr
    assert not (run / "model.onnx").exists()
    r = _invoke("predict", run, f, "--backend", "onnx")
    assert r.exit_code == 1 and "ONNX export refused" in r.output and "Traceback" not in r.output


def test_backend_usage_errors(trained_run, onnx_model, phantoms_test):
    f = _phantom_files(phantoms_test, 1)[0]
    r = _invoke("predict", trained_run.run_dir, f, "--backend", "tensorrt")
    assert r.exit_code == 2 and "--backend" in r.output
    r = _invoke("predict", onnx_model, f, "--backend", "torch")
    assert r.exit_code == 2 and "onnxruntime" in r.output and "Traceback" not in r.output
    r = _invoke("predict", onnx_model, f, "--backend", "onnx", "--format", "csv")
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------- preprocessing stays bit-identical for old runs


def _reference_prepare(img, size, crop_brain=True, grayscale=True, threshold=30):
    """The preprocessing recipe as first released (frozen copy): the prepared pixels of existing runs."""
    from PIL import Image as PILImage
    from scipy import ndimage

    def bbox(grey, blur=2.0, margin=0.02):
        g = ndimage.gaussian_filter(grey.astype(np.float32), blur)
        fg = g > threshold
        if not fg.any():
            return None
        lab, n = ndimage.label(fg)
        if n > 1:
            sizes = ndimage.sum_labels(fg, lab, index=np.arange(1, n + 1))
            fg = lab == (int(np.argmax(sizes)) + 1)
        rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
        h, w = grey.shape
        my, mx = int(round(margin * h)), int(round(margin * w))
        return (max(0, rows[0] - my), max(0, cols[0] - mx), min(h, rows[-1] + 1 + my), min(w, cols[-1] + 1 + mx))

    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h, w = img.shape[:2]
    box = (0, 0, h, w)
    if crop_brain:
        b = bbox(img.mean(axis=2))
        if b is not None and (b[2] - b[0]) >= 8 and (b[3] - b[1]) >= 8:
            box = b
    img = img[box[0]:box[2], box[1]:box[3]]
    if grayscale:
        g = np.round(img.astype(np.float32).mean(axis=2)).astype(np.uint8)
        img = np.repeat(g[..., None], 3, axis=2)
    hh, ww = img.shape[:2]
    s = max(hh, ww)
    if hh != ww:
        sq = np.zeros((s, s, 3), img.dtype)
        sq[(s - hh) // 2:(s - hh) // 2 + hh, (s - ww) // 2:(s - ww) // 2 + ww] = img
        img = sq
    if img.shape[0] != size:
        img = np.asarray(PILImage.fromarray(img).resize((size, size), PILImage.BILINEAR))
    return np.ascontiguousarray(img)


ALL_SETTINGS = [dict(img_size=64), dict(img_size=224), dict(img_size=96, grayscale=False),
                dict(img_size=80, crop_brain=False), dict(img_size=72, crop_brain=False, grayscale=False)]


def _check_bit_identical(images, settings=tuple(ALL_SETTINGS)):
    from braintumor.preprocess import Preprocessor

    for kw in settings:
        pre = Preprocessor(**kw)
        ref_kw = dict(size=kw["img_size"], crop_brain=kw.get("crop_brain", True), grayscale=kw.get("grayscale", True))
        for img in images:
            got, want = pre.prepare(img), _reference_prepare(img, **ref_kw)
            assert got.dtype == np.uint8 and got.shape == want.shape and np.array_equal(got, want), kw


def test_prepare_is_bit_identical_to_the_released_recipe(phantoms_test):
    from braintumor.data.read import read_image

    rng = np.random.default_rng(7)
    files = _phantom_files(phantoms_test, 12)
    images = [read_image(f) for f in files]
    images += [np.asarray(Image.open(f).convert("L")) for f in files[:3]]  # greyscale (H, W) arrays too
    images += [rng.integers(0, 256, (101, 67, 3), dtype=np.uint8),  # colour noise: many components
               np.zeros((40, 50, 3), np.uint8),  # nothing above the threshold: no crop
               np.pad(rng.integers(40, 256, (30, 90, 3), dtype=np.uint8), ((50, 20), (5, 9), (0, 0)))]
    _check_bit_identical(images)


@needs_data(NAVONEEL)
def test_prepare_is_bit_identical_on_the_navoneel_images():
    """Real MRI JPEG/PNGs of 150-1920 px (every 12th file): the pixels existing runs were trained on."""
    from braintumor.data.discover import list_images
    from braintumor.data.read import read_image

    _check_bit_identical([read_image(p) for p in list_images(NAVONEEL)[::12]], ALL_SETTINGS[1:3])


def test_normalise_is_bit_identical_to_the_tensor_recipe():
    import torch

    from braintumor.preprocess import Preprocessor

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (5, 33, 33, 3), dtype=np.uint8)
    batch[0, 0, :, :] = np.arange(33 * 3).reshape(33, 3)  # ... and every level somewhere
    batch[1] = np.arange(33 * 33 * 3).reshape(33, 33, 3) % 256
    for mean, std in (((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        pre = Preprocessor(img_size=33, mean=mean, std=std)
        x = torch.from_numpy(batch.copy()).permute(0, 3, 1, 2).float().div_(255.0)
        want = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        got = pre.normalise(batch)
        assert got.dtype == torch.float32 and got.shape == (5, 3, 33, 33) and torch.equal(got, want)
        assert torch.equal(pre.normalise(torch.from_numpy(batch)), want)  # the tensor path, unchanged
        arr = pre.normalise_array(batch)  # the onnxruntime path's NumPy copy: the same bits
        assert arr.dtype == np.float32 and arr.flags.c_contiguous and np.array_equal(arr, want.numpy())
        ro = batch.copy()
        ro.flags.writeable = False  # e.g. a memory-mapped batch: read, never written, no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(pre.normalise(ro), want)
    big = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)  # the vectorised kernels' sizes too
    x = torch.from_numpy(big.copy()).permute(0, 3, 1, 2).float().div_(255.0)
    want = (x - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    assert torch.equal(pre.normalise(big), want)
    assert np.array_equal(pre.normalise_array(big), want.numpy())
