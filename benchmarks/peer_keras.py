"""The seed's engine beside ours, in one invocation: Keras EfficientNetB0 (TensorFlow) vs our model (onnxruntime).

The project started from a Kaggle notebook that ran Keras EfficientNetB0 in TensorFlow. This script times that
engine and ours on the same machine, interleaved round by round (so a machine that gets busier affects both), and
prints the ratios:

* inference throughput at ``--batch`` (img/s): Keras ``tf.function`` vs onnxruntime FP32 (and INT8 when the run
  has ``model.int8.onnx``);
* batch-1 latency (ms, median): the same engines;
* one training step's throughput at 224 px (img/s): Keras ``train_on_batch`` vs our model in torch (Adam, fp32; and
  bf16 autocast where the CPU has native bf16).

TensorFlow is not a dependency of braintumor: the first run creates a virtual environment with ``tensorflow-cpu``
from PyPI (``--venv``, default ``~/.cache/braintumor/peer-keras``) and runs the Keras side in a child process of that
environment, which answers timing requests over its stdin/stdout. Keras weights are not needed for timing (random
initialisation, ``weights=None``); nothing is downloaded at run time besides the one-off ``pip install``.

    python benchmarks/peer_keras.py runs/navoneel                       # 3 rounds, batch 32, 224 px
    python benchmarks/peer_keras.py runs/navoneel --rounds 5 --train-steps 3
    python benchmarks/peer_keras.py runs/navoneel --venv /opt/tfvenv    # an existing environment with tensorflow

Prints one JSON object (machine, CPU flags, per-round figures, medians and ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "braintumor" / "peer-keras"
TF_REQUIREMENT = "tensorflow-cpu>=2.16"


# --------------------------------------------------------------------------------------------- the Keras child


def _child(size: int, threads: int) -> None:  # pragma: no cover - runs inside the TensorFlow environment
    """Answer JSON requests on stdin: {"op": "infer"|"latency"|"train", ...} -> {"seconds": [...]}."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = tf.keras.applications.EfficientNetB0(weights=None, input_shape=(size, size, 3), classes=2)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    infer = tf.function(lambda x: model(x, training=False))
    rng = np.random.default_rng(0)
    cache: dict[int, tf.Tensor] = {}

    def batch(n: int):
        if n not in cache:
            cache[n] = tf.constant(rng.uniform(0, 255, (n, size, size, 3)).astype("float32"))
        return cache[n]

    print(json.dumps({"ready": True, "tensorflow": tf.__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        n, repeat = int(req.get("batch", 1)), int(req.get("repeat", 1))
        x = batch(n)
        if req["op"] == "train":
            y = np.zeros((n,), "int64")
            model.train_on_batch(x, y)  # warm-up (graph tracing)
            fn = lambda x=x, y=y: model.train_on_batch(x, y)  # noqa: E731
        else:
            infer(x).numpy()  # warm-up
            fn = lambda x=x: infer(x).numpy()  # noqa: E731
        secs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            secs.append(time.perf_counter() - t0)
        print(json.dumps({"seconds": secs}), flush=True)


# --------------------------------------------------------------------------------------------- the parent


def ensure_venv(venv: Path) -> Path:
    """The environment's python, creating it with tensorflow-cpu when missing (one-off, needs PyPI)."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import tensorflow"], capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} with {TF_REQUIREMENT} (one-off, about 600 MB)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", TF_REQUIREMENT, "numpy"], check=True)
    return py


class KerasPeer:
    def __init__(self, python: Path, size: int, threads: int):
        self.proc = subprocess.Popen([str(python), __file__, "--child", "--size", str(size), "--threads",
                                      str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline())
        self.version = hello["tensorflow"]

    def ask(self, **req) -> list[float]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the Keras child process died")
        return json.loads(line)["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def cpu_flags() -> dict:
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        flags = []
    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(f.startswith("amx") for f in flags)}


def ours(run: Path, size: int, threads: int):
    """Timers for our engines on the run's model: onnxruntime FP32 (+ INT8 when present) and a torch train step."""
    import tempfile

    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from _common import run_copy

    from braintumor.export import INPUT_NAME, OnnxPredictor, onnx_for_run
    from braintumor.inference import Predictor

    torch.set_num_threads(threads)
    tmp = tempfile.mkdtemp(prefix="bt-peer-")
    copy = run_copy(str(run), tmp)
    pred = Predictor.from_run(copy, device="cpu")
    engines = {"onnx_fp32": onnx_for_run(copy, predictor=pred)}
    int8 = Path(copy) / "model.int8.onnx"
    if int8.is_file():
        engines["onnx_int8"] = OnnxPredictor(int8)
    rng = np.random.default_rng(0)

    def infer(name: str, n: int, repeat: int) -> list[float]:
        eng = engines[name]
        x = eng.preprocessor.normalise(rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)).numpy()
        run_once = lambda: eng.session.run(["logits"], {INPUT_NAME: x})  # noqa: E731  (the classifier alone)
        run_once()
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run_once()
            out.append(time.perf_counter() - t0)
        return out

    from braintumor.models.registry import build_model

    model = build_model(pred.metadata["model"], len(pred.classes), pretrained=False, img_size=size).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def train(n: int, repeat: int, bf16: bool = False) -> list[float]:
        x, y = torch.randn(n, 3, size, size), torch.zeros(n, dtype=torch.long)

        def step():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
            with ctx:
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        out = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            step()
            out.append(time.perf_counter() - t0)
        return out

    return engines, infer, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="a run folder (its model, exported to ONNX in a temporary copy)")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="environment with tensorflow (created if missing)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="timed batches per engine per round")
    ap.add_argument("--latency-n", type=int, default=30)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=None, help="input side (default: the run's img_size)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.size, args.threads)
        return
    if not args.run:
        ap.error("give a run folder (e.g. runs/navoneel)")
    sys.path.insert(0, str(HERE))
    from _common import emit, machine

    if args.size is None:
        meta = json.loads((Path(args.run) / "metadata.json").read_text())
        args.size = int(meta["preprocessing"]["img_size"] if "preprocessing" in meta else meta["img_size"])
    peer = KerasPeer(ensure_venv(args.venv), args.size, args.threads)
    engines, infer, train = ours(Path(args.run), args.size, args.threads)
    flags = cpu_flags()
    rows = []
    try:
        for r in range(args.rounds):
            row = {"round": r}
            kb = peer.ask(op="infer", batch=args.batch, repeat=args.repeat)
            row["keras_b32_img_s"] = args.batch * len(kb) / sum(kb)
            for name in engines:
                t = infer(name, args.batch, args.repeat)
                row[f"{name}_b32_img_s"] = args.batch * len(t) / sum(t)
            row["keras_b1_ms"] = 1000 * statistics.median(peer.ask(op="latency", batch=1, repeat=args.latency_n))
            for name in engines:
                row[f"{name}_b1_ms"] = 1000 * statistics.median(infer(name, 1, args.latency_n))
            kt = peer.ask(op="train", batch=args.train_batch, repeat=args.train_steps)
            row["keras_train_img_s"] = args.train_batch * len(kt) / sum(kt)
            t = train(args.train_batch, args.train_steps)
            row["torch_train_img_s"] = args.train_batch * len(t) / sum(t)
            if flags["avx512_bf16"] or flags["amx"]:
                t = train(args.train_batch, args.train_steps, bf16=True)
                row["torch_bf16_train_img_s"] = args.train_batch * len(t) / sum(t)
            rows.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        peer.close()
    med = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0] if k != "round"}
    ratios = {}
    for name in engines:
        ratios[f"{name}_vs_keras_b32"] = round(statistics.median(r[f"{name}_b32_img_s"] / r["keras_b32_img_s"]
                                                                 for r in rows), 2)
        ratios[f"keras_vs_{name}_b1_latency"] = round(statistics.median(r["keras_b1_ms"] / r[f"{name}_b1_ms"]
                                                                        for r in rows), 2)
    if "onnx_int8" in engines:
        ratios["int8_vs_fp32_b32"] = round(statistics.median(r["onnx_int8_b32_img_s"] / r["onnx_fp32_b32_img_s"]
                                                             for r in rows), 2)
    ratios["torch_vs_keras_train"] = round(statistics.median(r["torch_train_img_s"] / r["keras_train_img_s"]
                                                             for r in rows), 2)
    emit({"benchmark": "peer_keras", "machine": machine(), "cpu_flags": flags, "tensorflow": peer.version,
          "size": args.size, "batch": args.batch, "threads": args.threads, "load_average": os.getloadavg(),
          "rounds": rows, "median": med, "ratios": ratios})


if __name__ == "__main__":
    main()
