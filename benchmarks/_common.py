"""Shared helpers for the benchmark scripts: machine description, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timeit(fn, repeat: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(obj: dict) -> None:
    json.dump(obj, sys.stdout, indent=None, default=str)
    sys.stdout.write("\n")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, all threads: a busy machine inflates it far less than
    wall-clock time, so report it next to wall times."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (how busy the machine was), or ``None`` where unavailable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


RUN_FILES = ("metadata.json", "config.yaml", "split.csv", "model.onnx", "model.int8.onnx", "ood.npz",
             "checkpoints/best.pt")


def run_copy(run: str, dest: str):
    """Copy what prediction needs from run folder ``run`` into ``dest`` (a temporary folder): the benchmarks
    never write into the user's run folder (an on-demand ONNX export goes into the copy)."""
    import shutil
    from pathlib import Path

    src, out = Path(run), Path(dest)
    for name in RUN_FILES:
        if (src / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, out / name)
    return out


def phantom_folder(dest: str, n: int, size: int = 256, seed: int = 0):
    """``n`` synthetic phantoms (yes/no) written under ``dest`` (a temporary folder)."""
    from pathlib import Path

    from braintumor.data.synthetic import write_phantoms

    write_phantoms(dest, n=n, size=size, seed=seed)
    return Path(dest)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server subprocess)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc) -> None:
    """Terminate a subprocess, kill it after 20 s, and reap it."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_healthy(url: str, proc=None, timeout: float = 900) -> None:
    """Wait until ``url``/healthz answers 200 (a server subprocess starting); ``SystemExit`` when ``proc`` exits
    first or after ``timeout`` seconds."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        time.sleep(0.3)
    raise SystemExit(f"server at {url} not healthy after {timeout:.0f} s")
