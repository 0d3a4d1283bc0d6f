"""Peak memory (RSS) of training and of serving, each in its own subprocess.

    python benchmarks/memory.py [--model efficientnet-lite0] [--img-size 224] [--images 120] [--requests 30]
    python benchmarks/memory.py --serve-run RUN_DIR            # serve this run instead of the one trained here

Training: ``braintumor train`` on ``--images`` synthetic phantoms (256 px) for one frozen and one fine-tuning
epoch; its peak RSS is the child's ``ru_maxrss`` (``wait4``). Serving: ``braintumor serve`` on the run just
trained (or ``--serve-run``, copied first), once per backend (``auto``: onnxruntime for predictions + the torch
model for Grad-CAM; ``torch``), answering ``--requests`` uploads without and as many with ``explain=true`` one at a
time; its peak RSS is ``VmHWM`` from ``/proc/PID/status`` just before it is stopped. The ONNX export is made
beforehand in this process, so the servers' peaks are those of serving. Everything is written to a temporary
folder. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, free_port, load_average, machine, phantom_folder, run_copy, stop_process  # noqa: E402


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _wait4(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """Wait for ``proc``; its exit status and peak RSS in MB (``ru_maxrss`` of that child alone)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024.0
        time.sleep(0.2)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0


def _png(size: int = 256) -> bytes:
    import numpy as np
    from PIL import Image

    from braintumor.data.synthetic import make_phantom

    img, _ = make_phantom(np.random.default_rng(0), size=size, tumour=True)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, body: bytes) -> int:
    boundary = "braintumorbenchmark"
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()
        return r.status


def _serve_peak(run: Path, backend: str, requests: int, timeout: float) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "braintumor", "serve", str(run), "--port", str(port),
                             "--backend", backend, "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.perf_counter()
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                    return {"error": (err or ["server did not start"])[-1]}
                time.sleep(0.3)
        startup = time.perf_counter() - t0
        idle = _status_kb(proc.pid, "VmRSS")
        image = _png()
        codes = [_post(url + "/v1/predict", image) for _ in range(requests)]
        after_predict = _status_kb(proc.pid, "VmHWM")
        codes += [_post(url + "/v1/predict?explain=true", image) for _ in range(requests)]
        peak = _status_kb(proc.pid, "VmHWM")
        return {"backend": backend, "startup_s": round(startup, 1), "rss_idle_mb": round((idle or 0) / 1024, 1),
                "peak_rss_after_predict_mb": round((after_predict or 0) / 1024, 1),
                "peak_rss_with_gradcam_mb": round((peak or 0) / 1024, 1),
                "requests": len(codes), "non_200": sum(c != 200 for c in codes)}
    finally:
        stop_process(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--images", type=int, default=120, help="synthetic phantoms to train on")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--requests", type=int, default=30, help="uploads per phase (without, with explain=true)")
    ap.add_argument("--backends", default="auto,torch")
    ap.add_argument("--serve-run", help="serve this run folder (copied) instead of the one trained here")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed to each subprocess")
    args = ap.parse_args()

    out = {"benchmark": "memory", "machine": machine(), "load_average": load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = phantom_folder(str(tmp / "phantoms"), args.images, size=256)
        run = tmp / "run"
        cmd = [sys.executable, "-m", "braintumor", "train", str(data), "--model", args.model, "--img-size",
               str(args.img_size), "--epochs-frozen", "1", "--epochs", "1", "--batch-size", str(args.batch_size),
               "--out", str(run)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        code, peak = _wait4(proc, args.timeout)
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        out["training"] = {"model": args.model, "img_size": args.img_size, "images": args.images,
                           "batch_size": args.batch_size, "epochs": "1 frozen + 1 fine-tuning", "exit_code": code,
                           "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak, 1)}
        if code != 0:
            out["training"]["error"] = (err or ["?"])[-1]
        serve_run = run_copy(args.serve_run, str(tmp / "serve_run")) if args.serve_run else run
        if (serve_run / "metadata.json").is_file():
            from braintumor.export import onnx_for_run

            try:
                onnx_for_run(serve_run)  # export now, in this process: the servers find it current
            except Exception as exc:  # noqa: BLE001 - report, the torch rows still run
                out["export_error"] = str(exc).splitlines()[0]
            out["serving"] = [_serve_peak(serve_run, b, args.requests, args.timeout)
                              for b in args.backends.split(",")]
    emit(out)


if __name__ == "__main__":
    main()
