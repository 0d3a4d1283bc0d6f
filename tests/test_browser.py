"""A real ``braintumor serve`` process: the web page in Debian's chromium (Playwright), and the load-test script.

Skips cleanly without chromium (``apt-get install chromium``) or Playwright (``pip install playwright``; no browser
download: the system chromium is launched).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()),
                shutil.which("chromium"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


API_KEY = "page-test-key-0123456789"


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """``braintumor serve RUN`` on a random free port of 127.0.0.1; stopped after the module."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with _serve(trained_run.run_dir, log) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(trained_run, tmp_path_factory):
    """``braintumor serve RUN --api-key KEY --log-format json``; yields its URL and its log file."""
    log = tmp_path_factory.mktemp("keyed") / "server.log"
    with _serve(trained_run.run_dir, log, "--api-key", API_KEY, "--log-format", "json") as url:
        yield url, log


@contextlib.contextmanager
def _serve(run_dir, log: Path, *extra: str):
    port = _free_port()
    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "braintumor", "serve", str(run_dir), "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra],
                            stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        fh.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_upload_shows_label_bars_and_overlay(server, phantoms_test, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    image = sorted((phantoms_test / "yes").glob("*.png"))[0]
    external: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("request", lambda req: external.append(req.url)
                    if not req.url.startswith((server, "data:", "blob:")) else None)
            console_errors: list[str] = []
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.goto(server + "/")
            assert "not a medical device" in page.locator("#notice").inner_text().lower()
            # Locator waits (not wait_for_function: the page's CSP forbids eval, as it should).
            page.locator("#model", has_text="cnn").wait_for(timeout=30_000)
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#overlay-fig:not(.hidden)", timeout=60_000)
            label = page.locator("#label").inner_text().strip()
            assert label in ("yes", "no")
            assert page.locator("#bars .bar").count() == 2
            assert page.locator(f"#bars .bar.top[data-cls='{label}']").count() == 1
            widths = page.eval_on_selector_all("#bars .fill", "els => els.map(e => parseFloat(e.style.width))")
            assert abs(sum(widths) - 100) < 0.5
            assert page.eval_on_selector("#overlay", "img => img.complete && img.naturalWidth") == 64
            assert page.eval_on_selector("#preview", "img => img.complete && img.naturalWidth") > 0
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            # A bad file shows the server's message, not a crash.
            bad = tmp_path / "notes.png"
            bad.write_text("not an image\n")
            page.set_input_files("#file", str(bad))
            page.locator("#error", has_text="415").wait_for(timeout=30_000)
            assert "not an image" in page.locator("#error").inner_text()
        finally:
            browser.close()
    assert external == [], f"the page requested external assets: {external}"
    assert not [e for e in console_errors if "415" not in e], console_errors
    print(f"screenshot: {shot}")


def test_load_test_script_against_real_server(server, capsys):
    """benchmarks/load_test.py: a bounded run against the live server, 0 errors, one JSON object printed."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("load_test", REPO / "benchmarks" / "load_test.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--url", server, "--requests", "12", "--explain-requests", "4", "--concurrency", "4"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0
    assert out["without_explain"]["ok"] == 12 and out["without_explain"]["errors"] == 0
    assert out["with_explain"]["ok"] == 4 and out["with_explain"]["p50_ms"] > 0
    with pytest.raises(SystemExit):
        mod.main(["--url", "http://example.com:8000"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_colour_photo_is_refused_on_the_page(server, tmp_path):
    """The input check on the page: a colour photograph gets the refusal, not a class, and no Grad-CAM overlay."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    photo = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(photo)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            console_errors: list[str] = []
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.goto(server + "/")
            page.locator("#model", has_text="input check on").wait_for(timeout=30_000)
            with page.expect_response(lambda r: "/v1/predict" in r.url, timeout=60_000) as answer:
                page.set_input_files("#file", str(photo))
            served = answer.value.json()
            assert served["verdict"] == "not_brain_mri" and served["overlay"] is None
            page.locator("#label", has_text="Not a brain MRI slice").wait_for(timeout=30_000)
            page.locator("#status", has_text="done").wait_for(timeout=30_000)
            shown = page.locator("#label").inner_text().strip()
            assert shown not in ("yes", "no") and "model gives no class" in shown
            assert "colour image" in page.locator("#verdict-note").inner_text()
            assert f'would have said "{served["label"]}"' in page.locator("#raw-label").inner_text()
            assert page.locator("#bars .bar").count() == 0
            assert page.locator("#overlay-fig").is_hidden() and page.locator("#outline-svg").is_hidden()
        finally:
            browser.close()
    assert not console_errors, console_errors


def _status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_page_asks_for_the_api_key_and_sends_it(keyed_server, phantoms_test, tmp_path):
    """``serve --api-key``: 401 without the key, 200 with it; the page asks for the key, keeps it for the tab and
    sends it as a Bearer token; the JSON access log has one line per request and never the key."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    url, log = keyed_server
    assert _status(url + "/v1/model") == 401
    assert _status(url + "/v1/model", {"Authorization": f"Bearer {API_KEY}"}) == 200
    assert _status(url + "/healthz") == 200
    image = sorted((phantoms_test / "yes").glob("*.png"))[0]
    sent_auth: list[str | None] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.on("request", lambda req: sent_auth.append(req.headers.get("authorization"))
                    if "/v1/predict" in req.url else None)
            console_errors: list[str] = []
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url + "/")
            page.locator("#model", has_text="needs an API key").wait_for(timeout=30_000)
            assert page.locator("#key-form").is_visible()
            page.fill("#api-key", "wrong-key-000000000")
            page.click("#key-use")
            page.locator("#key-note", has_text="not accepted").wait_for(timeout=30_000)
            page.fill("#api-key", API_KEY)
            page.click("#key-use")
            page.locator("#model", has_text="cnn").wait_for(timeout=30_000)
            assert page.locator("#key-form").is_hidden()
            page.set_input_files("#file", str(image))
            page.locator("#status", has_text="done").wait_for(timeout=60_000)
            assert page.locator("#label").inner_text().strip() in ("yes", "no")
            assert sent_auth == [f"Bearer {API_KEY}"]
            page.reload()  # the key is kept for the tab (sessionStorage), not asked again
            page.locator("#model", has_text="cnn").wait_for(timeout=30_000)
            assert page.locator("#key-form").is_hidden()
        finally:
            browser.close()
    assert all("401" in e for e in console_errors), console_errors
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [r for r in lines if "path" in r]
    assert [r["status"] for r in access if r["path"] == "/v1/predict"] == [200]
    assert {401, 200} <= {r["status"] for r in access if r["path"] == "/v1/model"}
    assert API_KEY not in log.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_audit_section_reads_as_findings(trained_run, tmp_path):
    """A run's report.html in the browser: no dictionary dump in the rendered text, and the audit section's first
    screen holds the duplicates and the source-confounder findings (planted in a phantom folder)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    from braintumor.data.audit import audit
    from braintumor.report import write_report
    from test_report import write_planted_folder

    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "report.html"))
    (run / "audit.json").write_text(json.dumps(audit(write_planted_folder(tmp_path / "data")).to_dict()))
    report = write_report(run, n_samples=1, n_gradcam=0, n_boot=20)
    height = 800
    external: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": height})
            page.on("request", lambda req: external.append(req.url)
                    if not req.url.startswith(("file:", "data:")) else None)
            page.goto(report.as_uri() + "#audit")
            body = page.inner_text("body")
            assert '{"' not in body and "{'" not in body and "': " not in body
            section = page.locator("#audit")
            top = section.bounding_box()["y"]
            for words in ("3 groups of duplicates (6 images), 1 of them across classes",
                          "Classes differ by source: a model could tell yes from no"):
                item = page.locator("#audit ul.findings li", has_text=words)
                assert item.count() == 1 and item.is_visible(), words
                box = item.bounding_box()
                assert box["y"] + box["height"] - top <= height, (words, box, top)  # on the section's first screen
            thumbs = page.locator("#audit .grid.small img")
            assert thumbs.count() == 6
            assert all(thumbs.nth(k).evaluate("img => img.complete && img.naturalWidth > 0") for k in range(6))
            page.screenshot(path=str(tmp_path / "audit.png"))
        finally:
            browser.close()
    assert external == [], f"the report requested external assets: {external}"
