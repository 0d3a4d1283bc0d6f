"""Bounded load test of ``braintumor serve``: latency of single requests, then N requests at C concurrent, each
without and with ``explain=true`` (Grad-CAM).

Starts its own server on a free port of 127.0.0.1 (or uses ``--url`` pointing at 127.0.0.1/localhost only),
stops by itself (fixed request count, plus a wall-clock deadline), and prints ONE JSON object:

* ``latency``: ``--latency-requests`` requests one at a time (no queueing): client p50/p95 and the server's own
  ``elapsed_ms`` p50, without and with Grad-CAM, against the targets (p50 <= 30 ms / <= 120 ms).
* ``without_explain`` / ``with_explain``: p50/p95/mean/max in ms, errors and throughput at ``--concurrency``
  (latencies there include queueing behind the busy cores).

A run folder is served from a temporary copy (``--backend``, default ``auto``: an on-demand ONNX export goes into
the copy, never into RUN_DIR).

Example:
    python benchmarks/load_test.py runs/navoneel --requests 500 --concurrency 16
    python benchmarks/load_test.py runs/navoneel --backend torch --requests 100
    python benchmarks/load_test.py runs/navoneel/model.onnx --requests 200      # ONNX: no explain phase
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port, run_copy, stop_process, wait_healthy  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: Targets of issue 7 for p50 latency of single requests (ms).
TARGETS_MS = {"predict": 30, "predict_explain": 120}


def _phantom_png(size: int = 256) -> bytes:
    from PIL import Image

    from braintumor.data.synthetic import make_phantom

    img, _ = make_phantom(np.random.default_rng(0), size=size, tumour=True)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _stats(latencies: list[float], errors: int, wall: float, n: int, not_run: int, codes: dict,
           server_ms: list[float] | None = None) -> dict:
    lat = np.asarray(latencies) * 1000
    q = (lambda p: round(float(np.percentile(lat, p)), 1)) if len(lat) else (lambda p: None)
    return {"requests": n, "ok": len(latencies), "errors": errors, "not_run": not_run, "status_codes": codes,
            "p50_ms": q(50), "p95_ms": q(95), "mean_ms": round(float(lat.mean()), 1) if len(lat) else None,
            "max_ms": round(float(lat.max()), 1) if len(lat) else None,
            "server_p50_ms": round(float(np.median(server_ms)), 1) if server_ms else None, "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 2) if wall > 0 else None}


async def _phase(url: str, image: bytes, n: int, concurrency: int, explain: bool, deadline: float) -> dict:
    import httpx

    target = url + "/v1/predict" + ("?explain=true" if explain else "")
    latencies: list[float] = []
    server_ms: list[float] = []
    codes: dict[str, int] = {}
    errors = 0
    not_run = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient):
        nonlocal errors, not_run
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if time.time() > deadline:
                not_run += 1
                continue
            t0 = time.perf_counter()
            try:
                r = await client.post(target, files={"file": ("phantom.png", image, "image/png")})
                codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
                body = r.json()
                if r.status_code == 200 and "label" in body and (not explain or "overlay" in body):
                    latencies.append(time.perf_counter() - t0)
                    server_ms.append(float(body.get("elapsed_ms") or 0.0))
                else:
                    errors += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return _stats(latencies, errors, time.perf_counter() - t0, n, not_run, codes, server_ms)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="run folder or .onnx file to serve (omit with --url)")
    ap.add_argument("--url", help="an already running server on 127.0.0.1/localhost")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--explain-requests", type=int, default=None, help="default: same as --requests")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency-requests", type=int, default=40,
                    help="requests sent one at a time for the latency figures (0: skip)")
    ap.add_argument("--backend", default="auto", help="serve --backend for a run folder: auto, onnx or torch")
    ap.add_argument("--image", type=Path, help="image to upload (default: a 256 px synthetic phantom)")
    ap.add_argument("--max-seconds", type=float, default=900, help="stop sending after this long in total")
    args = ap.parse_args(argv)
    if (args.model is None) == (args.url is None):
        ap.error("give MODEL or --url")
    if not 1 <= args.concurrency <= 256 or not 1 <= args.requests <= 100_000:
        ap.error("--concurrency in 1..256 and --requests in 1..100000")

    image = args.image.read_bytes() if args.image else _phantom_png()
    proc = None
    tmp = tempfile.TemporaryDirectory()
    if args.url:
        host = urllib.parse.urlsplit(args.url).hostname
        if host not in LOOPBACK:
            ap.error(f"--url must point at 127.0.0.1/localhost, not {host!r}")
        url = args.url.rstrip("/")
    else:
        model = args.model
        if Path(model).is_dir():
            model = str(run_copy(model, tmp.name))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "braintumor", "serve", model, "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning", "--backend", args.backend],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_healthy(url, proc)
        with urllib.request.urlopen(url + "/v1/model", timeout=10) as r:
            info = json.loads(r.read())
        deadline = time.time() + args.max_seconds
        # Warm-up (not measured): first calls allocate buffers.
        asyncio.run(_phase(url, image, 4, 2, False, deadline))
        can_explain = bool(info.get("explain_available"))
        if can_explain:
            asyncio.run(_phase(url, image, 2, 1, True, deadline))
        result = {"url": url, "model": {k: info.get(k) for k in ("name", "version", "fingerprint", "backend")},
                  "explain_available": can_explain, "image_bytes": len(image), "concurrency": args.concurrency,
                  "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}
        if args.latency_requests > 0:
            one = asyncio.run(_phase(url, image, args.latency_requests, 1, False, deadline))
            lat = {"requests": args.latency_requests, "predict_p50_ms": one["p50_ms"],
                   "predict_p95_ms": one["p95_ms"], "predict_server_p50_ms": one["server_p50_ms"],
                   "predict_target_ms": TARGETS_MS["predict"], "errors": one["errors"]}
            if can_explain:
                ex = asyncio.run(_phase(url, image, args.latency_requests, 1, True, deadline))
                lat.update({"predict_explain_p50_ms": ex["p50_ms"], "predict_explain_p95_ms": ex["p95_ms"],
                            "predict_explain_server_p50_ms": ex["server_p50_ms"],
                            "predict_explain_target_ms": TARGETS_MS["predict_explain"],
                            "errors": one["errors"] + ex["errors"]})
            result["latency"] = lat
        result["without_explain"] = asyncio.run(_phase(url, image, args.requests, args.concurrency, False, deadline))
        n_explain = args.requests if args.explain_requests is None else args.explain_requests
        if can_explain and n_explain > 0:
            result["with_explain"] = asyncio.run(_phase(url, image, n_explain, args.concurrency, True, deadline))
        else:
            result["with_explain"] = None
    finally:
        if proc is not None:
            stop_process(proc)
        tmp.cleanup()
    print(json.dumps(result))
    errors = (result["without_explain"]["errors"] + ((result["with_explain"] or {}).get("errors") or 0)
              + (result.get("latency") or {}).get("errors", 0))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
