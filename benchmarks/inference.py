"""Inference engines side by side, in one process: torch eager vs channels_last vs onnxruntime.

    python benchmarks/inference.py RUN_DIR [--batch 32] [--repeat 5] [--latency-n 50]

Throughput (img/s) at ``--batch`` and latency p50/p95 at batch 1 for each engine, on the run's own model and input
size (and the run's INT8 model, ``model.int8.onnx``, when ``braintumor export RUN --int8`` kept one), plus the
onnxruntime/eager and INT8/FP32 ratios (ratios survive a busy machine better than absolute times).
Prints one JSON object; writes nothing but a temporary ONNX file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit, machine, percentile, timeit  # noqa: E402

from braintumor.export import OnnxPredictor, export_onnx  # noqa: E402
from braintumor.inference import Predictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--latency-n", type=int, default=50)
    args = ap.parse_args()

    pred = Predictor.from_run(args.run, device="cpu")
    size = pred.preprocessor.img_size
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 255, (args.batch, size, size, 3), dtype=np.uint8)
    one = batch[:1]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            onnx = export_onnx(args.run, Path(tmp) / "m.onnx").path
        except Exception as exc:  # noqa: BLE001 - report, don't die
            onnx = None
            err = str(exc)
        engines = {}
        engines["torch_eager"] = pred
        cl = Predictor.from_run(args.run, device="cpu")
        cl.model = cl.model.to(memory_format=torch.channels_last)
        engines["torch_channels_last"] = cl
        if onnx is not None:
            engines["onnxruntime"] = OnnxPredictor(onnx)
        int8 = Path(args.run) / "model.int8.onnx"  # `braintumor export RUN --int8`
        if int8.is_file():
            engines["onnxruntime_int8"] = OnnxPredictor(int8)
        rows = {}
        for name, eng in engines.items():
            if name == "torch_channels_last":
                x = eng.preprocessor.normalise(batch).contiguous(memory_format=torch.channels_last)
                x1 = eng.preprocessor.normalise(one).contiguous(memory_format=torch.channels_last)

                def run_b(x=x, eng=eng):
                    with torch.inference_mode():
                        eng.model(x)

                def run_1(x1=x1, eng=eng):
                    with torch.inference_mode():
                        eng.model(x1)
            else:
                def run_b(eng=eng):
                    eng.proba_prepared(batch, args.batch)

                def run_1(eng=eng):
                    eng.proba_prepared(one, 1)
            tb = timeit(run_b, args.repeat)
            t1 = timeit(run_1, args.latency_n, warmup=3)
            rows[name] = {"img_per_s": round(args.batch * len(tb) / sum(tb), 1),
                          "latency_ms_p50": round(1000 * percentile(t1, 50), 2),
                          "latency_ms_p95": round(1000 * percentile(t1, 95), 2)}
    out = {"benchmark": "inference", "machine": machine(), "model": pred.metadata.get("model"), "img_size": size,
           "batch": args.batch, "results": rows}
    if "onnxruntime" in rows:
        out["onnxruntime_over_eager"] = round(rows["onnxruntime"]["img_per_s"] / rows["torch_eager"]["img_per_s"], 2)
    if "onnxruntime_int8" in rows and "onnxruntime" in rows:
        out["int8_over_fp32"] = round(rows["onnxruntime_int8"]["img_per_s"] / rows["onnxruntime"]["img_per_s"], 2)
    else:
        out["onnx_error"] = err
    emit(out)


if __name__ == "__main__":
    main()
