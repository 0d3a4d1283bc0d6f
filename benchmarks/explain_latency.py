"""Explanation latency per image, per method (gradcam, gradcam++, hirescam, layercam, occlusion), on one model.

    python benchmarks/explain_latency.py [RUN_DIR] [--images FOLDER] [--n 8] [--occlusion-n 3]
                                         [--methods default,gradcam,layercam]
    python benchmarks/explain_latency.py --model efficientnet-lite0 --img-size 224     # no run: random weights

``braintumor.explain(predictor, image, method)`` on one raw image at a time (preprocessing, forward, backward or
occlusion passes, heat map and overlay included), after one warm-up call per method. Without RUN_DIR the default
model at 224 px with random weights is timed (the cost does not depend on the weights). Images: the files of
``--images``, else 256 px synthetic phantoms made in memory. Reports wall-clock p50/p95/mean ms and CPU ms per
image (all threads). ``--methods`` takes the package's method names and ``default`` (``DEFAULT_METHOD``). Prints
one JSON object; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from _common import cpu_seconds, emit, load_average, machine, percentile  # noqa: E402


def _predictor(args):
    from braintumor.inference import Predictor
    from braintumor.models import build_model, get_spec
    from braintumor.preprocess import Preprocessor

    if args.run:
        return Predictor.from_run(args.run, device="cpu")
    spec = get_spec(args.model)
    model = build_model(args.model, 2, pretrained=False, img_size=args.img_size)
    pre = Preprocessor(img_size=args.img_size, mean=spec.mean, std=spec.std)
    return Predictor(model, pre, ["no", "yes"], "yes", metadata={"model": args.model}, device="cpu")


def _images(args, n: int) -> list[np.ndarray]:
    from braintumor.data.read import read_image

    if args.images:
        from braintumor.data.discover import list_images

        return [read_image(p) for p in list_images(args.images)[:n]]
    from braintumor.data.synthetic import make_phantom

    rng = np.random.default_rng(0)
    return [np.repeat(make_phantom(rng, size=256, tumour=bool(i % 2))[0][..., None], 3, axis=2) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", nargs="?", help="a run folder (default: --model at --img-size, random weights)")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--images", help="a folder of images (default: synthetic phantoms)")
    ap.add_argument("--methods", default="gradcam,gradcam++,hirescam,layercam,occlusion")
    ap.add_argument("--n", type=int, default=8, help="images per method")
    ap.add_argument("--occlusion-n", type=int, default=3, help="images for occlusion (many forward passes each)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from braintumor.explanation import DEFAULT_METHOD, check_method, explain

    pred = _predictor(args)
    images = _images(args, max(args.n, args.occlusion_n) + 1)
    rows = {}
    for method in args.methods.split(","):
        method = check_method(DEFAULT_METHOD if method == "default" else method)
        n = args.occlusion_n if method == "occlusion" else args.n
        explain(pred, images[-1], method=method).overlay()  # warm-up
        lat = []
        c0 = cpu_seconds()
        for im in images[:n]:
            t0 = time.perf_counter()
            explain(pred, im, method=method).overlay()
            lat.append(time.perf_counter() - t0)
        cpu = cpu_seconds() - c0
        rows[method] = {"images": n, "p50_ms": round(percentile(lat, 50) * 1000, 1),
                        "p95_ms": round(percentile(lat, 95) * 1000, 1), "mean_ms": round(float(np.mean(lat)) * 1000, 1),
                        "cpu_ms_per_image": round(cpu / n * 1000, 1)}
    emit({"benchmark": "explain_latency", "machine": machine(), "load_average": load_average(),
          "model": pred.metadata.get("model"), "img_size": pred.preprocessor.img_size,
          "weights": "run" if args.run else "random", "image_source": args.images or "phantoms 256 px",
          "default_method": DEFAULT_METHOD,
          "results": rows})


if __name__ == "__main__":
    main()
