"""Side by side with hand-written references, in one process: ratios rather than absolute times.

    python benchmarks/reference.py [RUN_DIR] [--images FOLDER] [--train-images 64] [--parts inference,predict,train]

* ``inference``: the same prepared batch through (a) a plain torch eager forward of the same network
  (``model(x)`` under ``inference_mode``, NCHW), (b) our torch ``Predictor.proba_prepared`` (normalisation, forward,
  temperature softmax) and (c) our ``OnnxPredictor``. Ratios: ``predictor_over_reference`` (overhead, ~1 is good)
  and ``onnxruntime_speedup`` (reference time / onnxruntime time).
* ``predict``: files -> labels. Reference: a minimal loop (PIL open, greyscale, resize to the input size, normalise,
  torch eager forward in batches; no brain crop). Ours: ``predict_paths`` on the default backend (onnxruntime;
  brain crop included). Ratio: ``ours_speedup``.
* ``train``: one full fine-tuning epoch plus validation through ``braintumor.training`` (augmentation, the run's
  precision and memory format) vs a minimal loop over the same prepared images (Adam, cross-entropy, fp32 eager,
  no augmentation) with the same batch size and counts. Ratio: ``ours_over_reference`` (time; > 1: slower).

Without RUN_DIR, the default model (efficientnet-lite0, 224 px) with random weights is used for ``inference`` and
``predict``; ``train`` always trains that model (ImageNet weights) on synthetic phantoms. Images: ``--images``,
else 256 px phantoms. Everything is written to a temporary folder. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import cpu_seconds, emit, load_average, machine, phantom_folder, run_copy, timeit  # noqa: E402


def _timed(fn, repeat: int) -> dict:
    fn()  # warm-up
    c0 = cpu_seconds()
    times = timeit(fn, repeat, warmup=0)
    return {"best_s": min(times), "cpu_s": (cpu_seconds() - c0) / repeat}


def _fake_run(root: Path, model_name: str, img_size: int) -> Path:
    """A run folder around a random-init model (speed does not depend on the weights)."""
    from braintumor.models import build_model, get_spec
    from braintumor.preprocess import Preprocessor
    from braintumor.rundir import RunDir

    run = RunDir(root).create()
    spec = get_spec(model_name)
    torch.manual_seed(0)
    model = build_model(model_name, 2, pretrained=False, img_size=img_size).eval()
    pre = Preprocessor(img_size=img_size, mean=spec.mean, std=spec.std)
    run.write_json(run.metadata, {"model": model_name, "classes": ["no", "yes"], "positive_class": "yes",
                                  "img_size": img_size, "preprocessing": pre.to_dict()})
    run.save_checkpoint(run.best, {"model": model.state_dict()})
    return run.root


def part_inference(run: Path, batch: int, repeat: int) -> dict:
    from braintumor.backends import load_predictor

    ours = load_predictor(run, device="cpu", backend="torch")
    fast = load_predictor(run, device="cpu", backend="onnx")
    size = ours.preprocessor.img_size
    prepared = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    x = ours.preprocessor.normalise(prepared)
    net = ours.model

    def reference():
        with torch.inference_mode():
            net(x)

    ref = _timed(reference, repeat)
    mine = _timed(lambda: ours.proba_prepared(prepared, batch_size=batch), repeat)
    onnx = _timed(lambda: fast.proba_prepared(prepared, batch_size=batch), repeat)
    rows = {name: {"img_per_s": round(batch / t["best_s"], 1), "cpu_ms_per_image": round(t["cpu_s"] / batch * 1000, 1)}
            for name, t in (("reference_torch_eager", ref), ("predictor_torch", mine), ("onnxruntime", onnx))}
    return {"batch": batch, "results": rows,
            "predictor_over_reference": round(mine["best_s"] / ref["best_s"], 2),
            "onnxruntime_speedup": round(ref["best_s"] / onnx["best_s"], 2)}


def part_predict(run: Path, paths: list[Path], batch: int, repeat: int) -> dict:
    from PIL import Image

    from braintumor.backends import load_predictor

    torch_pred = load_predictor(run, device="cpu", backend="torch")
    ours = load_predictor(run, device="cpu", backend="auto")
    pre, net, size = torch_pred.preprocessor, torch_pred.model, torch_pred.preprocessor.img_size

    def reference():
        for i in range(0, len(paths), batch):
            arr = []
            for p in paths[i:i + batch]:
                with Image.open(p) as im:
                    g = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR))
                arr.append(np.repeat(g[..., None], 3, axis=2))
            with torch.inference_mode():
                torch.softmax(net(pre.normalise(np.stack(arr))), dim=1)

    ref = _timed(reference, repeat)
    mine = _timed(lambda: ours.predict_paths(paths, batch_size=batch), repeat)
    rows = {name: {"img_per_s": round(len(paths) / t["best_s"], 1),
                   "cpu_ms_per_image": round(t["cpu_s"] / len(paths) * 1000, 1)}
            for name, t in (("reference_minimal_torch", ref), (f"ours_{ours.backend}", mine))}
    return {"images": len(paths), "batch": batch, "results": rows,
            "ours_speedup": round(ref["best_s"] / mine["best_s"], 2)}


def part_train(tmp: Path, n_images: int, batch: int) -> dict:
    import csv

    from braintumor.config import TrainConfig
    from braintumor.data.cache import load_images
    from braintumor.inference import Predictor
    from braintumor.training import train

    data = phantom_folder(str(tmp / "train_phantoms"), n_images, size=256, seed=1)
    out = tmp / "train_run"
    threads = torch.get_num_threads()  # both loops on the same thread count
    cfg = TrainConfig(data_dir=str(data), model="efficientnet-lite0", img_size=224, epochs_frozen=0, epochs=1,
                      batch_size=batch, seed=0, num_threads=threads)
    train(cfg, out=out)
    torch.set_num_threads(threads)
    with open(out / "history.csv", newline="") as fh:
        hist = list(csv.DictReader(fh))
    ours_s = float(hist[-1]["seconds"])
    with open(out / "split.csv", newline="") as fh:
        split = list(csv.DictReader(fh))
    # The same images, the same counts and batch size, through a minimal loop.
    pred = Predictor.from_run(out, device="cpu")
    pre = pred.preprocessor
    classes = pred.classes
    tr = [r for r in split if r["subset"] == "train"]
    va = [r for r in split if r["subset"] == "val"]
    x_tr = load_images([r["path"] for r in tr], pre).images
    y_tr = torch.tensor([classes.index(r["label"]) for r in tr])
    x_va = load_images([r["path"] for r in va], pre).images
    from braintumor.models import build_model

    model = build_model("efficientnet-lite0", len(classes), pretrained=False, img_size=224)
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def epoch():
        model.train()
        order = torch.randperm(len(y_tr))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            if len(idx) < 2:
                continue
            loss = torch.nn.functional.cross_entropy(model(pre.normalise(x_tr[idx.numpy()])), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(x_va), 64):
                model(pre.normalise(x_va[i:i + 64]))

    t0 = time.perf_counter()
    epoch()
    ref_s = time.perf_counter() - t0
    return {"train_images": len(tr), "val_images": len(va), "batch": batch,
            "ours_epoch_s": round(ours_s, 2), "reference_epoch_s": round(ref_s, 2),
            "ours_over_reference": round(ours_s / ref_s, 2), "torch_threads": threads,
            "ours_settings": "augmentation on, the run's precision/memory format (see metadata.json)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", nargs="?", help="a run folder (default: random-init efficientnet-lite0 at 224 px)")
    ap.add_argument("--images", help="image folder for the predict part (default: 96 phantoms of 256 px)")
    ap.add_argument("--parts", default="inference,predict,train")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=64)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    out = {"benchmark": "reference", "machine": machine(), "load_average": load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = run_copy(args.run, str(tmp / "run")) if args.run else _fake_run(tmp / "run", "efficientnet-lite0", 224)
        if "inference" in parts:
            out["inference"] = part_inference(run, args.batch, args.repeat)
        if "predict" in parts:
            from braintumor.data.discover import list_images

            folder = args.images or str(phantom_folder(str(tmp / "phantoms"), 96, size=256))
            out["predict"] = part_predict(run, list_images(folder), args.batch, max(1, args.repeat - 1))
        if "train" in parts:
            out["train"] = part_train(tmp, args.train_images, args.batch)
    emit(out)


if __name__ == "__main__":
    main()
