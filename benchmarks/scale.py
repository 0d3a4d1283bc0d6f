"""How ``evaluate`` and ``train``'s set-up scale with the folder, against ``predict`` on the same folder.

    python benchmarks/scale.py [--n 10000] [--size 64] [--img-size 64] [--train-size 32] [--only predict,evaluate,train]

Writes ``--n`` synthetic phantoms (``write_phantoms``, ``--size`` px, seed 0) into a temporary folder, trains a
tiny run once (``cnn``, ``--img-size`` px, 1 epoch, defaults otherwise) on them, then times the whole CLI as
subprocesses (start-up and imports included) on the same folder:

* ``braintumor predict RUN FOLDER --format csv --out X``
* ``braintumor evaluate RUN --data FOLDER --out Y``
* ``braintumor train FOLDER --model cnn --img-size 32 --epochs 1 --out Z``: its set-up, the time until it prints
  the line that opens the first epoch (``cnn (random init) on ... images``): discovery, the duplicate audit, the
  split and reading the images; the epoch itself and what follows it are not counted (wall total reported too).

Reports the three wall times and the ratios ``evaluate / predict`` and ``train_setup / predict`` (targets: 1.5
and 2), and each subprocess's peak RSS. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, load_average, machine, phantom_folder  # noqa: E402

CLI = [sys.executable, "-m", "braintumor"]
FIRST_EPOCH_MARK = " train / "  # "<model> (<init>) on N train / M val images, ..." right before epoch 1


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def run_cli(args: list[str], mark: str | None = None) -> dict:
    """Run the CLI; wall seconds, exit code, and (with ``mark``) the seconds until a line holding ``mark``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "TERM": "dumb"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            errors="replace")
    seen: dict = {}
    tail: list[str] = []

    def reader() -> None:
        for line in proc.stdout:
            if mark and "t_mark" not in seen and mark in line:
                seen["t_mark"] = time.perf_counter() - t0
            tail.append(line.rstrip())
            del tail[:-20]

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    th.join(timeout=5)
    out = {"seconds": round(wall, 2), "rc": rc}
    if mark:
        out["seconds_to_mark"] = round(seen["t_mark"], 2) if "t_mark" in seen else None
    if rc != 0:
        out["tail"] = tail
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="phantoms (default 10000)")
    ap.add_argument("--size", type=int, default=64, help="phantom side in px (default 64)")
    ap.add_argument("--img-size", type=int, default=64, help="the tiny run's input side (default 64)")
    ap.add_argument("--train-size", type=int, default=32, help="input side of the timed train (default 32)")
    ap.add_argument("--only", default="predict,evaluate,train", help="which commands to time")
    args = ap.parse_args()
    only = set(args.only.split(","))

    from braintumor.config import TrainConfig
    from braintumor.training import train

    rows: dict = {"n": args.n, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = phantom_folder(str(Path(tmp) / "data"), args.n, size=args.size, seed=0)
        rows["phantoms_s"] = round(time.perf_counter() - t0, 2)
        run = Path(tmp) / "run"
        t0 = time.perf_counter()
        train(TrainConfig(data_dir=str(folder), model="cnn", img_size=args.img_size, epochs=1, pretrained=False,
                          seed=0), out=run)
        rows["tiny_run_s"] = round(time.perf_counter() - t0, 2)
        out = Path(tmp) / "out"
        out.mkdir()
        if "predict" in only:
            rows["predict"] = run_cli(["predict", str(run), str(folder), "--format", "csv",
                                       "--out", str(out / "predictions.csv")])
        if "evaluate" in only:
            rows["evaluate"] = run_cli(["evaluate", str(run), "--data", str(folder), "--out", str(out / "eval")])
        if "train" in only:
            rows["train"] = run_cli(["train", str(folder), "--model", "cnn", "--img-size", str(args.train_size),
                                     "--epochs", "1", "--out", str(out / "train")], mark=FIRST_EPOCH_MARK)
            rows["train"]["setup_s"] = rows["train"].pop("seconds_to_mark")
        rows["children_peak_rss_mb"] = round(_children_peak_mb(), 1)
    pred = (rows.get("predict") or {}).get("seconds")
    ratios = {}
    if pred:
        if "evaluate" in rows:
            ratios["evaluate_over_predict"] = round(rows["evaluate"]["seconds"] / pred, 2)
        if rows.get("train", {}).get("setup_s") is not None:
            ratios["train_setup_over_predict"] = round(rows["train"]["setup_s"] / pred, 2)
    emit({"benchmark": "scale", "machine": machine(), "load_average": load_average(), "results": rows,
          "ratios": ratios, "targets": {"evaluate_over_predict": 1.5, "train_setup_over_predict": 2.0}})


if __name__ == "__main__":
    main()
