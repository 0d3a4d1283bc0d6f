"""End-to-end prediction over a folder (decoding and preprocessing included), img/s, per backend.

    python benchmarks/predict_e2e.py RUN_DIR FOLDER [--backends torch,onnx,int8] [--batch-size 32] [--repeat 2]
    python benchmarks/predict_e2e.py RUN_DIR FOLDER --profile        # + where the time goes (cProfile, onnx)

What ``braintumor predict RUN_DIR FOLDER --backend B`` does after loading the model: ``predict_paths`` (read-ahead
of the next batch while the model runs). ``onnx`` is the default fast path (the run's cached export, made on
demand into a temporary copy of the run folder, so nothing is written to RUN_DIR). Reports wall-clock img/s (best
of ``--repeat``) and CPU milliseconds per image (all threads; a busy machine inflates it far less than wall time),
plus the preprocessing alone (decode + crop + resize, one thread). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import cpu_seconds, emit, load_average, machine, run_copy  # noqa: E402

from braintumor.backends import load_predictor  # noqa: E402
from braintumor.data.discover import list_images  # noqa: E402
from braintumor.data.read import read_image  # noqa: E402


def _top_functions(fn, n: int = 12) -> list[dict]:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO()).sort_stats("tottime")
    rows = []
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2]
                                                                         )[:n]:
        rows.append({"function": f"{Path(file).name}:{line}({name})", "calls": ncalls,
                     "tottime_s": round(tottime, 3), "cumtime_s": round(cumtime, 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("folder")
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also profile one pass of the first backend "
                                                           "(main thread) and the preprocessing (one thread)")
    args = ap.parse_args()
    paths = list_images(args.folder)
    rows: dict[str, dict] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        run = run_copy(args.run, tmp)
        engines = {}
        for backend in args.backends.split(","):
            t0 = time.perf_counter()
            # "onnx" is FP32 here; "int8" the run's model.int8.onnx (`braintumor export RUN --int8`)
            engine, precision = ("onnx", "int8") if backend == "int8" else (backend, "fp32")
            engines[backend] = load_predictor(run, device="cpu", backend=engine, notice=notes.append,
                                              precision=precision)
            rows[backend] = {"engine": engines[backend].backend, "precision": engines[backend].precision,
                             "load_s": round(time.perf_counter() - t0, 2)}
        for name, eng in engines.items():
            eng.predict_paths(paths[:4], batch_size=4)  # warm-up
            best, cpu = None, None
            for _ in range(args.repeat):
                c0, t0 = cpu_seconds(), time.perf_counter()
                res = eng.predict_paths(paths, batch_size=args.batch_size)
                dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
                if best is None or dt < best:
                    best, cpu = dt, dc
            rows[name].update({"images": len(paths), "errors": sum(not r.ok for r in res), "seconds": round(best, 2),
                               "img_per_s": round(len(paths) / best, 1),
                               "cpu_ms_per_image": round(cpu / len(paths) * 1000, 1)})
        first = next(iter(engines.values()))
        pre = first.preprocessor
        prep = {}
        for stage, fn in (("decode", lambda p: read_image(p)), ("decode_and_prepare", lambda p: pre.prepare(
                read_image(p)))):
            t0 = time.thread_time()
            for p in paths:
                fn(p)
            prep[f"{stage}_cpu_ms_per_image"] = round((time.thread_time() - t0) / len(paths) * 1000, 2)
        out = {"benchmark": "predict_e2e", "machine": machine(), "load_average": load_average(),
               "folder": args.folder, "batch_size": args.batch_size, "results": rows, "preprocessing": prep,
               "notes": notes}
        if args.profile:
            out["profile_predict_paths_main_thread"] = _top_functions(
                lambda: first.predict_paths(paths, batch_size=args.batch_size))
            out["profile_preprocessing_one_thread"] = _top_functions(lambda: [pre.prepare(read_image(p))
                                                                              for p in paths])
    emit(out)


if __name__ == "__main__":
    main()
