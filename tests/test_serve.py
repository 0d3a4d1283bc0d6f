"""The HTTP API: predictions, Grad-CAM overlays, model info, offline docs/page, and a clear 4xx for every bad input."""

from __future__ import annotations

import base64
import importlib.util
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from braintumor.serve import create_app  # noqa: E402
from conftest import copy_run  # noqa: E402


@pytest.fixture(scope="module")
def client(trained_run):
    with TestClient(create_app(trained_run.run_dir, max_upload_bytes=20 * 1024 * 1024)) as c:
        yield c


@pytest.fixture(scope="module")
def onnx_file(trained_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from braintumor.export import export_onnx

    return export_onnx(trained_run.run_dir, tmp_path_factory.mktemp("onnx") / "model.onnx").path


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _phantom_bytes(phantoms_test, cls="yes", i=0) -> tuple[bytes, str]:
    path = sorted((phantoms_test / cls).glob("*.png"))[i]
    return path.read_bytes(), path.name


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header announces w x h pixels, followed by one tiny (bogus) IDAT: a decompression-bomb probe."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_predict_returns_label_probabilities_threshold_model(client, trained_run, phantoms_test):
    data, name = _phantom_bytes(phantoms_test)
    r = client.post("/v1/predict", files={"file": (name, data, "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()
    pred = trained_run.predictor()
    ref = pred.predict_paths([phantoms_test / "yes" / name])[0]
    assert out["label"] == ref.label
    assert set(out["probabilities"]) == set(pred.classes)
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-5
    for c in pred.classes:
        assert out["probabilities"][c] == pytest.approx(ref.probabilities[c], abs=1e-5)
    assert "threshold" in out and out["threshold"] == pred.threshold
    assert out["model"] == {"name": "cnn", "version": trained_run.run_dir.name, "fingerprint": pred.fingerprint}
    assert len(out["model"]["fingerprint"]) == 16
    assert "overlay" not in out


def test_predict_explain_adds_overlay_png(client, phantoms_test):
    data, name = _phantom_bytes(phantoms_test, "yes", 1)
    r = client.post("/v1/predict?explain=true", files={"file": (name, data, "image/png")})
    assert r.status_code == 200, r.text
    ov = r.json()["overlay"]
    assert ov["method"] == "layercam-tta" and ov["target"] in ("yes", "no")
    img = Image.open(io.BytesIO(base64.b64decode(ov["png_base64"])))
    assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"


def test_raw_image_body_is_accepted(client, phantoms_test):
    data, _ = _phantom_bytes(phantoms_test, "no", 0)
    r = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["label"] in ("yes", "no")


def test_health_model_docs_and_page(client):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["classes"] == ["no", "yes"] and info["explain_available"] is True
    # A run folder: onnxruntime for plain predictions by default (torch where onnxruntime is not installed).
    assert info["backend"] == ("onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch")
    assert info["limits"]["max_upload_bytes"] == 20 * 1024 * 1024
    schema = client.get("/openapi.json").json()
    assert "/v1/predict" in schema["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/v1/predict" in docs.text
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for text in (docs.text, page.text):
        assert "cdn" not in text.lower() and "https://" not in text and "http://" not in text
    assert "not a medical device" in page.text.lower() and "research use only" in page.text.lower()
    assert "default-src 'none'" in page.headers["content-security-policy"]


# ------------------------------------------------------------------------------------------------ bad input


def _detail(r) -> str:
    d = r.json()["detail"]
    assert isinstance(d, str) and len(d) > 10
    return d


def test_a_large_jpeg_gets_the_answer_predict_gives_for_the_same_file(client, trained_run, phantoms_test, tmp_path):
    # The run reduces large images first (reduce_first) and `predict` decodes a JPEG at that size: the API's plain
    # prediction must read the upload the same way (block averages of a whole decode differ by a grey level or two).
    pred = trained_run.predictor()
    assert pred.preprocessor.reduce_first
    src = np.asarray(Image.open(sorted((phantoms_test / "yes").glob("*.png"))[0]).convert("L"))
    big = np.asarray(Image.fromarray(src).resize((pred.preprocessor.img_size * 5, pred.preprocessor.img_size * 4),
                                                 Image.BICUBIC))
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    ref = pred.predict_paths([path])[0]
    r = client.post("/v1/predict", files={"file": ("big.jpg", path.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["image"] == {"width": big.shape[1], "height": big.shape[0]}  # the upload's own size
    for c in pred.classes:
        assert out["probabilities"][c] == pytest.approx(ref.probabilities[c], abs=1e-5)


def test_empty_body(client):
    r = client.post("/v1/predict")
    assert r.status_code == 422 and "empty request" in _detail(r)
    r = client.post("/v1/predict", files={"file": ("x.png", b"", "image/png")})
    assert r.status_code == 422 and "empty" in _detail(r)


def test_text_file(client):
    r = client.post("/v1/predict", files={"file": ("notes.png", b"hello, this is not an image\n" * 20, "image/png")})
    assert r.status_code == 415 and "not an image" in _detail(r)
    r = client.post("/v1/predict", content=b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and "Content-Type" in _detail(r)


def test_truncated_jpeg(client):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()[: len(buf.getvalue()) // 2]
    r = client.post("/v1/predict", files={"file": ("cut.jpg", data, "image/jpeg")})
    assert r.status_code == 422 and "truncated" in _detail(r)


def test_one_pixel_image(client):
    r = client.post("/v1/predict", files={"file": ("dot.png", _png(np.zeros((1, 1), np.uint8)), "image/png")})
    assert r.status_code == 422 and "too small" in _detail(r)


def test_decompression_bomb_header_refused_before_decoding(client):
    r = client.post("/v1/predict", files={"file": ("bomb.png", _png_header_only(30000, 30000), "image/png")})
    assert r.status_code == 413 and "too large" in _detail(r)
    # Under PIL's own bomb limit but over the server's pixel cap: refused from the header alone.
    r = client.post("/v1/predict", files={"file": ("big.png", _png_header_only(8000, 8000), "image/png")})
    assert r.status_code == 413 and "8000x8000" in _detail(r)


def test_upload_over_the_cap(client):
    data = b"\0" * (25 * 1024 * 1024)
    r = client.post("/v1/predict", files={"file": ("huge.png", data, "image/png")})
    assert r.status_code == 413 and "too large" in _detail(r) and "20 MB" in _detail(r)


def test_wrong_field_name(client, phantoms_test):
    data, name = _phantom_bytes(phantoms_test)
    r = client.post("/v1/predict", files={"image_file": (name, data, "image/png")})
    assert r.status_code == 422
    d = _detail(r)
    assert "'file'" in d and "image_file" in d
    r = client.post("/v1/predict", data={"file": "not-a-file"})
    assert r.status_code == 422 and "text, not a file" in _detail(r)


def test_bad_query_and_malformed_multipart(client):
    r = client.post("/v1/predict?explain=maybe", files={"file": ("a.png", b"x", "image/png")})
    assert r.status_code == 422 and "explain" in _detail(r)
    r = client.post("/v1/predict", content=b"--xyz\r\ngarbage", headers={"Content-Type": "multipart/form-data"})
    assert 400 <= r.status_code < 500
    _detail(r)


# ---------------------------------------------------------------------------------------- concurrency, ONNX


def test_concurrent_requests_are_consistent(client, phantoms_test):
    files = [_phantom_bytes(phantoms_test, c, i) for c in ("yes", "no") for i in range(4)]
    serial = [client.post("/v1/predict", files={"file": (n, d, "image/png")}).json() for d, n in files]

    def call(k):
        d, n = files[k % len(files)]
        explain = "true" if k % 3 == 0 else "false"
        return k, client.post(f"/v1/predict?explain={explain}", files={"file": (n, d, "image/png")})

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(48)))
    for k, r in results:
        assert r.status_code == 200, r.text
        ref = serial[k % len(files)]
        assert r.json()["label"] == ref["label"]
        for c, p in ref["probabilities"].items():
            assert r.json()["probabilities"][c] == pytest.approx(p, abs=1e-5)


def test_onnx_model_serves_same_predictions_and_refuses_explain(onnx_file, client, phantoms_test):
    with TestClient(create_app(onnx_file)) as oc:
        info = oc.get("/v1/model").json()
        assert info["backend"] == "onnxruntime" and info["explain_available"] is False
        assert info["fingerprint"] == client.get("/v1/model").json()["fingerprint"]
        for i in range(3):
            d, n = _phantom_bytes(phantoms_test, "yes", i)
            a = oc.post("/v1/predict", files={"file": (n, d, "image/png")}).json()
            b = client.post("/v1/predict", files={"file": (n, d, "image/png")}).json()
            assert a["label"] == b["label"] and a["model"] == b["model"]
            for c in b["probabilities"]:
                assert a["probabilities"][c] == pytest.approx(b["probabilities"][c], abs=1e-4)
        d, n = _phantom_bytes(phantoms_test)
        r = oc.post("/v1/predict?explain=true", files={"file": (n, d, "image/png")})
        assert r.status_code == 400 and "run folder" in _detail(r)


def test_create_app_bad_model_path(tmp_path):
    from braintumor.errors import RunError

    with pytest.raises(RunError):
        create_app(tmp_path / "nothing")


def test_nifti_upload_keeps_its_double_suffix(client, phantoms_test, tmp_path):
    """A .nii.gz upload is read as NIfTI (it used to be saved as '.gz' and refused)."""
    import nibabel as nib

    img = np.asarray(Image.open(sorted((phantoms_test / "yes").glob("*.png"))[0]))
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(img.T[:, ::-1, None].astype(np.uint8), np.eye(4)), path)
    r = client.post("/v1/predict", files={"file": ("scan.nii.gz", path.read_bytes(), "application/gzip")})
    assert r.status_code == 200, r.text
    assert r.json()["label"] in ("no", "yes")


# ------------------------------------------------------------------------------ backends


def test_run_folder_predicts_on_onnxruntime_and_explains_on_torch(client, trained_run, phantoms_test):
    pytest.importorskip("onnxruntime")
    info = client.get("/v1/model").json()
    assert info["backend"] == "onnxruntime" and info["explain_available"] is True
    assert client.app.state.service.explainer.backend == "torch"
    with TestClient(create_app(trained_run.run_dir, backend="torch")) as tc:
        tinfo = tc.get("/v1/model").json()
        assert tinfo["backend"] == "torch"
        assert {k: v for k, v in tinfo.items() if k != "backend"} == {k: v for k, v in info.items() if k != "backend"}
        for cls, i in (("yes", 0), ("no", 1), ("yes", 2)):
            d, n = _phantom_bytes(phantoms_test, cls, i)
            a = client.post("/v1/predict?explain=true", files={"file": (n, d, "image/png")}).json()
            b = tc.post("/v1/predict?explain=true", files={"file": (n, d, "image/png")}).json()
            assert a["label"] == b["label"] and a["model"] == b["model"] and a["threshold"] == b["threshold"]
            for c in b["probabilities"]:
                assert a["probabilities"][c] == pytest.approx(b["probabilities"][c], abs=1e-4)
            assert a["overlay"]["target"] == b["overlay"]["target"]
            assert base64.b64decode(a["overlay"]["png_base64"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_serve_falls_back_to_torch_without_onnxruntime(trained_run, phantoms_test, tmp_path, monkeypatch):
    import sys

    run = copy_run(trained_run.run_dir, tmp_path / "run")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    notes: list[str] = []
    with TestClient(create_app(run, notice=notes.append)) as c:
        info = c.get("/v1/model").json()
        assert info["backend"] == "torch" and info["explain_available"] is True
        d, n = _phantom_bytes(phantoms_test)
        r = c.post("/v1/predict?explain=true", files={"file": (n, d, "image/png")})
        assert r.status_code == 200 and "overlay" in r.json()
    assert len(notes) == 1 and "onnxruntime is not installed" in notes[0] and not (run / "model.onnx").exists()


def test_create_app_unknown_backend(trained_run):
    from braintumor.errors import UsageError

    with pytest.raises(UsageError, match="unknown backend"):
        create_app(trained_run.run_dir, backend="tensorrt")


# ------------------------------------------------------------------------------ the model card


def test_v1_model_returns_the_model_card(client, trained_run, onnx_file, tmp_path):
    from braintumor.model_card import CARD_FILE, embedded_model_card, model_card_text

    run = trained_run.run_dir
    card = client.get("/v1/model").json()["model_card"]
    assert card == (run / CARD_FILE).read_text()  # the run's model_card.md, as training wrote it
    assert "## Evaluation" in card and "Research use only. Not a medical device" in card
    assert f"| accuracy | {trained_run.metrics['accuracy']:.3f} |" in card

    old = copy_run(run, tmp_path / "old")  # a run made before cards existed: generated from its files
    assert not (old / CARD_FILE).exists()
    with TestClient(create_app(old, backend="torch")) as c:
        generated = c.get("/v1/model").json()["model_card"]
    assert generated == model_card_text(old) and "No `metrics.json` in this run" in generated
    assert not (old / CARD_FILE).exists()  # serving writes nothing into the run folder

    with TestClient(create_app(onnx_file)) as oc:  # an ONNX file: the card embedded at export
        served = oc.get("/v1/model").json()["model_card"]
    assert served == card
    from braintumor.export import OnnxPredictor

    assert served == embedded_model_card(OnnxPredictor(onnx_file).session)
