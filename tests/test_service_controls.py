"""Service controls of ``braintumor serve``: API keys, rate limit, /metrics, CORS, JSON access logs, the decoding gate
(503/504), read timeouts against slow clients (a real uvicorn server), aborted uploads, and bombs refused with 413.

A tiny untrained torch model stands in for a run (nothing here depends on what it predicts), so the file needs no
training and runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from braintumor.errors import UsageError  # noqa: E402
from braintumor.serve import create_app  # noqa: E402
from braintumor.serve.security import RateLimiter, api_keys_from, key_matches, presented_key  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789"
OTHER_KEY = "other-key-9876543210"


def _abuse_module():
    """benchmarks/service_abuse.py: the bomb builders are shared with the benchmark."""
    spec = importlib.util.spec_from_file_location("service_abuse", REPO / "benchmarks" / "service_abuse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


abuse = _abuse_module()


@pytest.fixture(scope="module")
def predictor():
    """An untrained 64 px CNN behind a real Predictor (fast to build; the controls do not care what it says)."""
    from braintumor.inference import Predictor
    from braintumor.models import build_model
    from braintumor.preprocess import Preprocessor

    model = build_model("cnn", 2, pretrained=False, img_size=64)
    return Predictor(model, Preprocessor(img_size=64), ["no", "yes"], positive_class="yes", device="cpu",
                     metadata={"model": "cnn", "img_size": 64})


@pytest.fixture(scope="module")
def png() -> bytes:
    from PIL import Image

    from braintumor.data.synthetic import make_phantom

    img, _ = make_phantom(np.random.default_rng(0), size=64, tumour=True)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _post(client, data, headers=None, name="scan.png", query=""):
    return client.post("/v1/predict" + query, files={"file": (name, data, "image/png")}, headers=headers or {})


def _detail(r) -> str:
    d = r.json()["detail"]
    assert isinstance(d, str) and "\n" not in d and len(d) > 10
    return d


# ------------------------------------------------------------------------------------------------------ API keys


def test_api_key_required_on_v1_but_not_on_health_page_or_metrics(predictor, png):
    with TestClient(create_app(predictor, api_keys=[KEY, OTHER_KEY])) as c:
        for r in (_post(c, png), c.get("/v1/model")):
            assert r.status_code == 401 and "no API key given" in _detail(r)
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = _post(c, png, {"Authorization": "Bearer not-the-key-at-all"})
        assert r.status_code == 401 and "not valid" in _detail(r)
        assert _post(c, png, {"Authorization": "Basic " + KEY}).status_code == 401  # only Bearer
        assert _post(c, png, {"X-API-Key": KEY[:-1]}).status_code == 401  # a prefix is not the key
        r = _post(c, png, {"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["label"] in ("no", "yes")
        assert _post(c, png, {"X-API-Key": OTHER_KEY}).status_code == 200
        info = c.get("/v1/model", headers={"authorization": f"bearer {KEY}"})
        assert info.status_code == 200 and info.json()["limits"]["api_key_required"] is True
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200 and "api-key" in c.get("/").text
        assert c.get("/metrics").status_code == 200
        assert KEY not in c.get("/metrics").text


def test_api_keys_from_the_environment_and_refused_keys(predictor, png, monkeypatch):
    monkeypatch.setenv("BRAINTUMOR_API_KEYS", f" {KEY},, {OTHER_KEY} ,")
    assert api_keys_from(["third-key-abcdefgh", KEY]) == ["third-key-abcdefgh", KEY, OTHER_KEY]
    with TestClient(create_app(predictor)) as c:  # api_keys=None: the variable's keys
        assert _post(c, png).status_code == 401
        assert _post(c, png, {"X-API-Key": OTHER_KEY}).status_code == 200
    with TestClient(create_app(predictor, api_keys=[])) as c:  # an explicit empty list: no key
        assert _post(c, png).status_code == 200
    monkeypatch.delenv("BRAINTUMOR_API_KEYS")
    for bad in ("short", "has space inside", "ключ-не-ascii-123"):
        with pytest.raises(UsageError, match="API key of") as err:
            api_keys_from([bad])
        assert bad not in str(err.value)  # the message never repeats a key
    monkeypatch.setenv("BRAINTUMOR_API_KEYS", "tiny")
    with pytest.raises(UsageError, match="BRAINTUMOR_API_KEYS"):
        create_app(predictor)
    assert presented_key({"authorization": "Bearer  abc "}) == "abc"
    assert presented_key({"authorization": "Bearer"}) is None and presented_key({}) is None
    assert key_matches(KEY, [OTHER_KEY, KEY]) and not key_matches(None, [KEY]) and not key_matches("\udcff", [KEY])


# ---------------------------------------------------------------------------------------------------- rate limit


def test_rate_limit_gives_429_with_retry_after_per_client(predictor, png):
    with TestClient(create_app(predictor, rate_limit="3/minute")) as c:
        assert [c.get("/v1/model").status_code for _ in range(3)] == [200, 200, 200]
        r = _post(c, png)
        assert r.status_code == 429 and "rate limit" in _detail(r)
        assert 1 <= int(r.headers["retry-after"]) <= 20
        assert c.get("/healthz").status_code == 200  # never limited
    with TestClient(create_app(predictor, rate_limit="2/hour", api_keys=[KEY, OTHER_KEY])) as c:
        a, b = {"X-API-Key": KEY}, {"X-API-Key": OTHER_KEY}
        assert [c.get("/v1/model", headers=a).status_code for _ in range(3)] == [200, 200, 429]
        assert c.get("/v1/model", headers=b).status_code == 200  # another key, its own bucket
        assert int(c.get("/v1/model", headers=a).headers["retry-after"]) > 60


def test_rate_limiter_refills_and_parses():
    lim = RateLimiter.parse("60/minute")
    assert (lim.rate, lim.period, lim.describe()) == (60, 60.0, "60/minute")
    assert all(lim.hit("a", now=0.0) == 0.0 for _ in range(60))
    assert lim.hit("a", now=0.0) == pytest.approx(1.0)
    assert lim.hit("a", now=1.0) == 0.0  # one token back after a second
    assert RateLimiter.parse(" 5 / s ").period == 1.0 and RateLimiter.parse("100/hour").period == 3600
    for bad in ("banana", "0/minute", "5/fortnight", "-1/s", "5", "1e3/minute", ""):
        with pytest.raises(UsageError, match="--rate-limit"):
            RateLimiter.parse(bad)
    small = RateLimiter(1, 1.0, max_clients=10)
    for i in range(50):
        small.hit(f"client-{i}", now=float(i))
    assert len(small._buckets) <= 10


# ------------------------------------------------------------------------------------------------------ /metrics


def test_metrics_are_scraped_in_prometheus_format(predictor, png):
    parser = pytest.importorskip("prometheus_client.parser")
    with TestClient(create_app(predictor, api_keys=[KEY])) as c:
        h = {"X-API-Key": KEY}
        assert _post(c, png, h).status_code == 200
        assert _post(c, abuse.png_header_only(), h, name="bomb.png").status_code == 413
        assert _post(c, b"hello, not an image\n" * 10, h, name="notes.png").status_code == 415
        assert _post(c, png).status_code == 401
        assert c.get("/no/such/path/" + "x" * 50).status_code == 404
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for fam in parser.text_string_to_metric_families(r.text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    req = "braintumor_http_requests_total"
    assert samples[(req, (("method", "POST"), ("route", "/v1/predict"), ("status", "200")))] == 1
    assert samples[(req, (("method", "POST"), ("route", "/v1/predict"), ("status", "401")))] == 1
    assert samples[(req, (("method", "GET"), ("route", "other"), ("status", "404")))] == 1  # paths stay bounded
    for reason in ("too_large", "unsupported_type", "unauthorized"):
        assert samples[("braintumor_rejections_total", (("reason", reason),))] == 1, reason
    assert samples[("braintumor_http_request_duration_seconds_count", (("route", "/v1/predict"),))] == 4
    info = [k for k in samples if k[0] == "braintumor_model_info"]
    assert len(info) == 1 and ("name", "cnn") in info[0][1] and ("backend", "torch") in info[0][1]
    assert samples[("braintumor_decode_slots_busy", ())] == 0
    with TestClient(create_app(predictor, metrics=False)) as c:
        assert c.get("/metrics").status_code == 404


# ----------------------------------------------------------------------------------------------------------- CORS


def test_cors_is_off_by_default_and_allows_only_configured_origins(predictor):
    preflight = {"Origin": "https://viewer.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    with TestClient(create_app(predictor)) as c:
        r = c.get("/v1/model", headers={"Origin": "https://viewer.example.org"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.options("/v1/predict", headers=preflight).headers
    with TestClient(create_app(predictor, cors_origins=["https://viewer.example.org/"], api_keys=[KEY])) as c:
        r = c.options("/v1/predict", headers=preflight)  # a preflight needs no key
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://viewer.example.org"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = c.get("/v1/model", headers={"Origin": "https://viewer.example.org", "X-API-Key": KEY})
        assert r.headers["access-control-allow-origin"] == "https://viewer.example.org"
        r = c.get("/v1/model", headers={"Origin": "https://evil.example.com", "X-API-Key": KEY})
        assert "access-control-allow-origin" not in r.headers
    for bad in ("viewer.example.org", "ftp://x.org", "https://x.org/path", "javascript:alert(1)"):
        with pytest.raises(UsageError, match="--cors-origin"):
            create_app(predictor, cors_origins=[bad])


# ----------------------------------------------------------------------------------------------- JSON access log


def test_json_access_log_has_one_line_per_request_without_image_key_or_query(predictor, png, caplog):
    from braintumor.serve.controls import JsonLogFormatter, json_log_config

    with TestClient(create_app(predictor, access_log=True, api_keys=[KEY])) as c, \
            caplog.at_level(logging.INFO, logger="braintumor.access"):
        _post(c, png, {"Authorization": f"Bearer {KEY}"}, query="?ood_check=false&secret=1")
        c.get("/v1/model")
    records = [r for r in caplog.records if r.name == "braintumor.access"]
    assert len(records) == 2
    lines = [JsonLogFormatter().format(r) for r in records]
    assert all("\n" not in line for line in lines)
    ok, refused = (json.loads(line) for line in lines)
    assert set(ok) >= {"time", "client", "method", "path", "status", "duration_ms", "bytes_in", "bytes_out", "model"}
    assert (ok["method"], ok["path"], ok["status"]) == ("POST", "/v1/predict", 200)
    assert ok["bytes_in"] >= len(png) and ok["bytes_out"] > 0 and ok["duration_ms"] > 0
    assert ok["api_client"].startswith("key:") and refused["status"] == 401 and "api_client" not in refused
    text = "\n".join(lines)
    assert KEY not in text and "secret" not in text and "IHDR" not in text and "PNG" not in text
    cfg = json_log_config("info")
    assert cfg["handlers"]["out"]["stream"] == "ext://sys.stdout" and "braintumor.access" in cfg["loggers"]


# ------------------------------------------------------------------------------------------------- decoding gate


def _slow(service, seconds: float):
    original = service.predict

    def predict(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    service.predict = predict
    return original


def test_decoding_beyond_the_limit_waits_then_gets_503_with_retry_after(predictor, png):
    app = create_app(predictor, max_concurrent=1, queue_timeout=0.3)
    _slow(app.state.service, 1.5)
    with TestClient(app) as c, ThreadPoolExecutor(3) as pool:
        rs = list(pool.map(lambda _: _post(c, png), range(3)))
        codes = sorted(r.status_code for r in rs)
        assert codes == [200, 503, 503], [r.text for r in rs]
        busy = next(r for r in rs if r.status_code == 503)
        assert "server busy" in _detail(busy) and int(busy.headers["retry-after"]) >= 1
        assert c.get("/healthz").status_code == 200
        assert app.state.gate.busy == 0


def test_request_over_its_time_budget_gets_504_and_frees_its_slot_when_done(predictor, png):
    app = create_app(predictor, max_concurrent=1, request_timeout=0.3)
    original = _slow(app.state.service, 1.0)
    with TestClient(app) as c:
        t0 = time.perf_counter()
        r = _post(c, png)
        assert r.status_code == 504 and "0.3 s" in _detail(r)
        assert time.perf_counter() - t0 < 0.9
        assert app.state.gate.busy == 1  # the abandoned work still holds its slot: memory stays bounded
        deadline = time.time() + 5
        while app.state.gate.busy and time.time() < deadline:
            time.sleep(0.05)
        assert app.state.gate.busy == 0
        app.state.service.predict = original
        assert _post(c, png).status_code == 200


def test_bad_limits_are_refused_before_the_model_loads(tmp_path):
    for kwargs, what in ((dict(max_concurrent=0), "max_concurrent"), (dict(request_timeout=float("nan")),
                         "request_timeout"), (dict(body_timeout=-1), "body_timeout"),
                         (dict(max_upload_bytes=0.5), "max_upload_bytes"), (dict(rate_limit="lots"), "rate-limit")):
        with pytest.raises(UsageError, match=what):
            create_app(tmp_path / "no-such-run", **kwargs)


# --------------------------------------------------------------------------------- slow and aborted uploads (ASGI)


async def _asgi_post(app, chunks, gap: float, disconnect: bool = False):
    """POST /v1/predict through the ASGI interface, sending ``chunks`` ``gap`` seconds apart."""
    total = sum(len(c) for c in chunks) + (1000 if disconnect else 0)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
             "headers": [(b"host", b"test"), (b"content-type", b"image/png"),
                         (b"content-length", str(total).encode())],
             "client": ("10.0.0.9", 4000), "server": ("test", 80), "root_path": ""}
    queue = list(chunks)
    sent: list[dict] = []

    async def receive():
        if queue:
            if len(queue) < len(chunks):
                await asyncio.sleep(gap)
            return {"type": "http.request", "body": queue.pop(0), "more_body": bool(queue) or disconnect}
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_slow_upload_gets_408_and_connection_close(predictor, png):
    app = create_app(predictor, body_timeout=0.3)
    sent = asyncio.run(_asgi_post(app, [png[:100], png[100:]], gap=2.0))
    start = sent[0]
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert b"upload too slow" in sent[1]["body"]


def test_aborted_upload_logs_one_line_not_a_traceback(predictor, png, caplog):
    app = create_app(predictor)
    with caplog.at_level(logging.DEBUG):
        asyncio.run(_asgi_post(app, [png[:100]], gap=0.0, disconnect=True))
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) <= 1, [r.getMessage() for r in noisy]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in caplog.records)
    assert "went away" in noisy[0].getMessage()


# -------------------------------------------------------------------------------------- a real uvicorn server


@contextlib.contextmanager
def live_server(app, **kwargs):
    """``app`` under uvicorn with :func:`braintumor.serve.server.server_config`, in a thread; yields the port."""
    import uvicorn

    from braintumor.serve.server import server_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="warning", **kwargs))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


def _healthz_ms(port: int) -> float:
    import urllib.request

    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    return (time.perf_counter() - t0) * 1000


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection (or ``limit`` seconds), and when it closed
    (``time.perf_counter()``)."""
    sock.settimeout(0.1)
    t0, data = time.perf_counter(), b""
    while time.perf_counter() - t0 < limit:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.perf_counter()


def test_slow_clients_are_cut_off_and_health_stays_fast(predictor, png, caplog):
    """60 slowloris connections, an idle one, a trickled body: /healthz answers within 1 s meanwhile; the server
    closes each after its deadline (headers: 408)."""
    app = create_app(predictor)
    with live_server(app, header_timeout=1.0, body_timeout=1.0) as port, caplog.at_level(logging.INFO):
        slow = []
        opened = time.perf_counter()
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(s)
        idle = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"\0" * 10)
        latencies = [_healthz_ms(port) for _ in range(5)]
        assert max(latencies) < 1000, latencies
        answers = [_read_until_closed(s, 4.0) for s in slow]
        assert all(a.startswith(b"HTTP/1.1 408") for a, _ in answers), answers[0]
        assert all(0.9 < t - opened < 3.5 for _, t in answers), [round(t - opened, 2) for _, t in answers]
        data, t = _read_until_closed(idle, 4.0)
        assert data.startswith(b"HTTP/1.1 408") and t - opened < 3.5
        data, t = _read_until_closed(trickle, 4.0)
        assert t - opened < 3.5  # the early 200 of /healthz, then the body's deadline closes it
        for s in (*slow, idle, trickle):
            s.close()
        assert _healthz_ms(port) < 1000
        # An upload aborted half-way: one log line at most, never a traceback.
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 50000\r\n\r\n"
                  + png[:200])
        time.sleep(0.2)
        s.close()
        time.sleep(0.5)
        assert _healthz_ms(port) < 1000
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1


# --------------------------------------------------------------------------------------------------------- bombs


@pytest.fixture(scope="module")
def bomb_client(predictor):
    with TestClient(create_app(predictor)) as c:
        yield c


@pytest.mark.parametrize("name, build", [
    ("bomb_9000x9000.dcm", lambda: abuse.dicom_bomb(9000, 9000)),
    ("header_9000x9000.dcm", lambda: abuse.dicom_header_only(9000, 9000)),
    ("bomb_512mib.nii.gz", lambda: abuse.nifti_bomb(512)),
    ("bomb_30000x30000.png", lambda: abuse.png_header_only(30000, 30000)),
])
def test_bombs_are_refused_with_413_in_under_a_second(bomb_client, name, build):
    pytest.importorskip("pydicom")
    pytest.importorskip("nibabel")
    data = build()
    assert len(data) < 1_000_000  # small on the wire
    t0 = time.perf_counter()
    r = bomb_client.post("/v1/predict", files={"file": (name, data, "application/octet-stream")})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 413, r.text
    assert "limit" in _detail(r) and "too large" in _detail(r)
    assert elapsed < 1.0, f"{name}: {elapsed:.2f} s"


def test_request_files_and_cached_volumes_do_not_outlive_the_request(bomb_client, tmp_path, monkeypatch):
    import tempfile

    nifti = pytest.importorskip("braintumor.data.nifti")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if hasattr(nifti, "clear_cache"):
        nifti.clear_cache()  # volumes other tests of this process read (their files, not requests)
    vol = abuse.nifti_bomb(1, dims=(64, 64, 3))
    r = bomb_client.post("/v1/predict", files={"file": ("vol.nii.gz", vol, "application/gzip")})
    assert r.status_code == 200, r.text
    assert list(tmp_path.iterdir()) == []
    if hasattr(nifti, "cached_bytes"):
        assert nifti.cached_bytes() == 0


def test_the_service_limits_are_its_own_and_never_looser_than_the_operators(predictor, monkeypatch):
    pytest.importorskip("braintumor.data.limits")
    with TestClient(create_app(predictor, max_pixels=1_000_000, max_voxels=2_000_000)) as c:
        limits = c.get("/v1/model").json()["limits"]
        assert limits["max_pixels"] == 1_000_000 and limits["max_voxels"] == 2_000_000
        data = abuse.png_header_only(1100, 1000)
        r = c.post("/v1/predict", files={"file": ("wide.png", data, "image/png")})
        assert r.status_code == 413 and "1100x1000" in _detail(r)
    monkeypatch.setenv("BRAINTUMOR_MAX_PIXELS", "500000")
    with TestClient(create_app(predictor)) as c:
        assert c.get("/v1/model").json()["limits"]["max_pixels"] == 500_000


# ------------------------------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("args, needle", [
    (["--rate-limit", "lots"], "--rate-limit 'lots'"),
    (["--api-key", "short"], "API key of 5 characters"),
    (["--cors-origin", "ftp://x.org"], "--cors-origin 'ftp://x.org'"),
    (["--log-format", "xml"], "--log-format 'xml'"),
    (["--request-timeout", "nan"], "--request-timeout nan"),
    (["--max-connections", "0"], "--max-connections 0"),
])
def test_serve_refuses_bad_options_in_one_line(tmp_path, args, needle):
    from typer.testing import CliRunner

    from braintumor.cli import app

    res = CliRunner().invoke(app, ["serve", str(tmp_path / "no-such-run"), *args])
    assert res.exit_code == 2, res.output
    out = res.output.strip()
    assert needle in out and "Traceback" not in out and len(out.splitlines()) <= 2, out
