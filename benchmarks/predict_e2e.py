"""End-to-end prediction over a folder (decoding and preprocessing included), img/s, per engine.

    python benchmarks/predict_e2e.py RUN_DIR FOLDER [--onnx MODEL.onnx] [--batch-size 32]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, machine  # noqa: E402

from braintumor.data.discover import list_images  # noqa: E402
from braintumor.inference import Predictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("folder")
    ap.add_argument("--onnx")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    paths = list_images(args.folder)
    engines = {"torch": Predictor.from_run(args.run, device="cpu")}
    if args.onnx:
        from braintumor.export import OnnxPredictor

        engines["onnxruntime"] = OnnxPredictor(args.onnx)
    rows = {}
    for name, eng in engines.items():
        eng.predict_paths(paths[:4], batch_size=4)  # warm-up
        t0 = time.perf_counter()
        res = eng.predict_paths(paths, batch_size=args.batch_size)
        dt = time.perf_counter() - t0
        rows[name] = {"images": len(paths), "errors": sum(not r.ok for r in res), "seconds": round(dt, 2),
                      "img_per_s": round(len(paths) / dt, 1)}
    emit({"benchmark": "predict_e2e", "machine": machine(), "folder": args.folder, "results": rows})


if __name__ == "__main__":
    main()
