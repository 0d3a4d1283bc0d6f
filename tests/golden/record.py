"""Record the golden training runs that tests/test_engine.py compares against (same seed, same data).

    python tests/golden/record.py        # writes tests/golden/<case>/{history.csv,metrics.json}

Recorded once before the training loop was split into an engine and handlers (issue 20); re-record only on a
change that is meant to alter training's numbers, and say so in the commit.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: case -> TrainConfig keywords (data and output are filled in). fp32 everywhere: bf16 depends on the CPU.
CASES = {
    # two phases (frozen, then fine-tuning), weight averaging, early stopping counted, class weights
    "lite0_two_phase": dict(model="efficientnet-lite0", img_size=32, epochs_frozen=2, epochs=3, batch_size=16,
                            seed=3, precision="fp32", swa=True, patience=2, class_weights=True, ood_check=True),
    # from scratch with a tumour-map decoder (mask loss), mixup and MRI augmentation
    "cnn_masks": dict(model="cnn", img_size=32, epochs=3, batch_size=16, seed=5, precision="fp32", mixup=0.2,
                      mri_augment=True, masks="MASKS", swa=False),
}


def phantom_data(root: Path) -> Path:
    from braintumor.data.synthetic import write_phantoms

    write_phantoms(root, n=72, size=48, seed=11)
    return root


def run_case(name: str, data: Path, out: Path):
    from braintumor import train
    from braintumor.config import TrainConfig

    kw = dict(CASES[name])
    if kw.get("masks") == "MASKS":
        kw["masks"] = str(data / "_masks")
    return train(TrainConfig(data_dir=str(data), **kw), out=out)


def read_case(run: Path) -> tuple[str, dict]:
    return (run / "history.csv").read_text(), json.loads((run / "metrics.json").read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = phantom_data(Path(tmp) / "data")
        for name in (sys.argv[1:] or CASES):
            run_case(name, data, Path(tmp) / name)
            dst = HERE / name
            dst.mkdir(exist_ok=True)
            for f in ("history.csv", "metrics.json"):
                shutil.copy2(Path(tmp) / name / f, dst / f)
            print("recorded", dst)


if __name__ == "__main__":
    main()
