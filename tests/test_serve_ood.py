"""The HTTP API says whether an input is trustworthy: the input check's verdict on /v1/predict and /v1/model."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from braintumor.ood import NOT_BRAIN, UNFAMILIAR, VERDICTS  # noqa: E402
from braintumor.serve import create_app  # noqa: E402
from conftest import old_run_copy  # noqa: E402

CHECK_FIELDS = {"verdict", "in_distribution", "ood_score", "ood_reasons"}


@pytest.fixture(scope="module")
def client(trained_run):
    with TestClient(create_app(trained_run.run_dir)) as c:
        yield c


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A colour photograph (scikit-image's astronaut, 512x512 RGB) as PNG."""
    skdata = pytest.importorskip("skimage.data")
    return _png(skdata.astronaut())


def _training_images(phantoms, n=4):
    return [(p.name, p.read_bytes()) for p in sorted((phantoms / "yes").glob("*.png"))[:n]]


def _post(client, data: bytes, name="scan.png", query=""):
    r = client.post("/v1/predict" + query, files={"file": (name, data, "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert CHECK_FIELDS <= set(out), out.keys()
    return out


def test_colour_photo_is_not_a_brain_mri(client, photo):
    out = _post(client, photo, "astronaut.png")
    assert out["verdict"] == NOT_BRAIN
    assert out["in_distribution"] is False
    assert any("colour" in why for why in out["ood_reasons"]), out["ood_reasons"]
    # The model's class is still given for inspection.
    assert out["label"] in ("no", "yes") and set(out["probabilities"]) == {"no", "yes"}


def test_training_phantoms_are_in_distribution(client, trained_run, phantoms):
    classes = trained_run.predictor().classes
    for name, data in _training_images(phantoms):
        out = _post(client, data, name)
        assert out["in_distribution"] is True, (name, out)
        assert out["ood_reasons"] == []
        assert isinstance(out["ood_score"], float) and 0 <= out["ood_score"] <= 1.0
        assert out["verdict"] in classes and out["verdict"] == out["label"], (name, out)


def test_ood_check_false_gives_the_class(client, photo, phantoms):
    out = _post(client, photo, "astronaut.png", "?ood_check=false")
    assert out["verdict"] == out["label"] and out["in_distribution"] is None
    assert out["ood_score"] is None and out["ood_reasons"] == []
    name, data = _training_images(phantoms, 1)[0]
    on, off = _post(client, data, name), _post(client, data, name, "?ood_check=false")
    assert off["verdict"] == off["label"] == on["label"] and off["in_distribution"] is None
    assert off["probabilities"] == pytest.approx(on["probabilities"], abs=1e-6)
    # The request did not switch the shared check off.
    assert _post(client, photo, "astronaut.png")["verdict"] == NOT_BRAIN
    assert client.get("/v1/model").json()["input_check"]["enabled"] is True


def test_explain_on_a_photo_withholds_the_overlay(client, photo, phantoms):
    out = _post(client, photo, "astronaut.png", "?explain=true")
    assert out["verdict"] == NOT_BRAIN
    assert "overlay" in out and out["overlay"] is None
    assert isinstance(out["overlay_withheld"], str) and NOT_BRAIN in out["overlay_withheld"]
    # A brain slice still gets its overlay, and no withheld reason.
    name, data = _training_images(phantoms, 1)[0]
    ok = _post(client, data, name, "?explain=true")
    assert ok["overlay"]["png_base64"] and "overlay_withheld" not in ok
    # With the check off, the photo gets an overlay again (the verdict is the class).
    off = _post(client, photo, "astronaut.png", "?explain=true&ood_check=false")
    assert off["overlay"]["png_base64"] and "overlay_withheld" not in off


def test_blank_and_noise_images_are_refused(client):
    blank = _post(client, _png(np.full((128, 128), 90, np.uint8)))
    assert blank["verdict"] == NOT_BRAIN and blank["in_distribution"] is False
    assert blank["ood_reasons"] == ["no contrast (a blank image)"]
    # Grey noise passes the rules (contrast, some dark pixels on the border) or not; either way it is refused, and
    # no explanation is given.
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    out = _post(client, _png(noise), query="?explain=true")
    assert out["verdict"] in (NOT_BRAIN, UNFAMILIAR) and out["in_distribution"] is False
    if out["verdict"] == UNFAMILIAR:
        assert out["ood_score"] > 1 and out["ood_reasons"] == []
    assert out["overlay"] is None and out["verdict"] in out["overlay_withheld"]


def test_model_info_describes_the_check(client):
    info = client.get("/v1/model").json()
    check = info["input_check"]
    assert check["available"] is True and check["enabled"] is True
    assert check["threshold"] > 0 and 0 <= check["min_confidence"] <= 1
    assert check["rules"]["max_colour"] > 0
    json.dumps(info)  # serialisable as it is


def test_server_level_switch(trained_run, photo):
    with TestClient(create_app(trained_run.run_dir, ood_check=False)) as c:
        out = _post(c, photo, "astronaut.png")
        assert out["verdict"] == out["label"] and out["in_distribution"] is None and out["ood_score"] is None
        # A request cannot turn a server-level "off" back on.
        assert _post(c, photo, "astronaut.png", "?ood_check=true")["in_distribution"] is None
        check = c.get("/v1/model").json()["input_check"]
        assert check["available"] is True and check["enabled"] is False


def test_torch_backend_gives_the_same_verdicts(client, trained_run, photo, phantoms):
    with TestClient(create_app(trained_run.run_dir, backend="torch")) as tc:
        assert tc.get("/v1/model").json()["backend"] == "torch"
        for name, data in [("astronaut.png", photo), *_training_images(phantoms, 2)]:
            a, b = _post(client, data, name), _post(tc, data, name)
            assert a["verdict"] == b["verdict"] and a["in_distribution"] == b["in_distribution"]
            if a["ood_score"] is not None:
                assert a["ood_score"] == pytest.approx(b["ood_score"], rel=1e-3, abs=1e-4)


def test_old_run_without_a_check(trained_run, tmp_path, photo, phantoms):
    run = old_run_copy(trained_run.run_dir, tmp_path / "old")
    with TestClient(create_app(run)) as c:
        check = c.get("/v1/model").json()["input_check"]
        assert check["available"] is False and check["enabled"] is False and "fit-input-check" in check["note"]
        for name, data in [("astronaut.png", photo), *_training_images(phantoms, 1)]:
            out = _post(c, data, name, "?explain=true")
            assert out["verdict"] == out["label"] and out["in_distribution"] is None
            assert out["ood_score"] is None and out["ood_reasons"] == []
            assert out["overlay"]["png_base64"]


def test_openapi_documents_the_verdict(client):
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/predict"]["post"]
    assert "verdict" in op["description"] and NOT_BRAIN in op["description"] and UNFAMILIAR in op["description"]
    assert any(p["name"] == "ood_check" for p in op["parameters"])
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    props = schema["components"]["schemas"][ref]["properties"]
    assert CHECK_FIELDS | {"label", "overlay_withheld", "outline_withheld"} <= set(props)
    assert all(v in props["verdict"]["description"] for v in VERDICTS)
    docs = client.get("/docs").text
    assert "verdict" in docs and "ood_check" in docs


@pytest.fixture(scope="module")
def masked_run(phantoms, tmp_path_factory):
    """A tiny CNN with a tumour-map decoder (one epoch: the rules refuse a photo whatever the weights)."""
    from braintumor.config import TrainConfig
    from braintumor.training import train

    out = tmp_path_factory.mktemp("ood_runs") / "masked"
    cfg = TrainConfig(data_dir=str(phantoms), model="cnn", img_size=64, epochs=1, batch_size=32, seed=0,
                      masks=str(phantoms / "_masks"))
    return train(cfg, out=out).run_dir


def test_outline_on_a_photo_is_withheld(masked_run, photo):
    with TestClient(create_app(masked_run, backend="torch")) as c:
        assert c.get("/v1/model").json()["tumour_map"] is True
        out = _post(c, photo, "astronaut.png", "?outline=true&explain=true")
        assert out["verdict"] == NOT_BRAIN and out["in_distribution"] is False
        assert out["outline"] is None and NOT_BRAIN in out["outline_withheld"]
        assert out["overlay"] is None and NOT_BRAIN in out["overlay_withheld"]
        off = _post(c, photo, "astronaut.png", "?outline=true&ood_check=false")
        assert off["verdict"] == off["label"] and isinstance(off["outline"], dict) and "outline_withheld" not in off
