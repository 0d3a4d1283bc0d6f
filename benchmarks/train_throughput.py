"""Training throughput (img/s) per registered model and input size: eager, channels_last, bf16/fp16 autocast.

    python benchmarks/train_throughput.py [--models cnn,efficientnet-lite0] [--sizes 224,128] [--batch 16] [--steps 3]
    python benchmarks/train_throughput.py --device cuda --batch 64 --variants eager,channels_last,bf16,fp16

Prints one JSON object. Random inputs, full fine-tuning steps (forward, backward, Adam step).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _common import emit, machine, timeit  # noqa: E402

from braintumor.models import available_models, build_model  # noqa: E402
from braintumor.training import backward_step  # noqa: E402


def step_fn(model, x, y, opt, variant, device_type="cpu", scaler=None):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(variant)

    def step():
        ctx = torch.autocast(device_type, dtype=dtype) if dtype else torch.autocast(device_type, enabled=False)
        with ctx:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        backward_step(loss, opt, scaler)  # what training does (loss scaling for fp16 on CUDA)
        if device_type == "cuda":
            torch.cuda.synchronize()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(available_models()))
    ap.add_argument("--sizes", default="224,128")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--variants", default="eager,channels_last,bf16")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            for variant in args.variants.split(","):
                dev = torch.device(args.device)
                model = build_model(name, 2, pretrained=False, img_size=size).train().to(dev)
                x = torch.randn(args.batch, 3, size, size, device=dev)
                if variant in ("channels_last", "bf16", "fp16"):
                    model = model.to(memory_format=torch.channels_last)
                    x = x.contiguous(memory_format=torch.channels_last)
                y = torch.randint(0, 2, (args.batch,), device=dev)
                opt = torch.optim.Adam(model.parameters(), 1e-4)
                scaler = torch.amp.GradScaler("cuda") if variant == "fp16" and dev.type == "cuda" else None
                times = timeit(step_fn(model, x, y, opt, variant, dev.type, scaler), args.steps, warmup=2)
                rows.append({"model": name, "size": size, "variant": variant, "batch": args.batch,
                             "img_per_s": round(args.batch * len(times) / sum(times), 2)})
    emit({"benchmark": "train_throughput", "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
