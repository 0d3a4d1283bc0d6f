"""Shared fixtures: synthetic phantoms and one tiny trained run, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NAVONEEL = SHARED_DATA / "brain_mri_yes_no"
NICKPARVAR = SHARED_DATA / "brain_tumor_mri_4class" / "Training"


def copy_run(src: Path, dst: Path) -> Path:
    """What prediction needs from a run folder (no model.onnx: the first fast-path call exports it)."""
    import shutil

    for name in ("metadata.json", "config.yaml", "split.csv", "checkpoints/best.pt", "ood.npz"):
        if (src / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)
    return dst


def old_run_copy(src: Path, dst: Path) -> Path:
    """:func:`copy_run` of a run as made before the input check existed (no ``input_check``, no ``ood.npz``)."""
    import json

    run = copy_run(src, dst)
    meta = json.loads((run / "metadata.json").read_text())
    meta.pop("input_check", None)
    (run / "metadata.json").write_text(json.dumps(meta))
    (run / "ood.npz").unlink(missing_ok=True)
    return run


def needs_data(path: Path):
    """Skip cleanly when ../shared/data (or the given folder in it) is not there."""
    return pytest.mark.skipif(not path.is_dir(), reason=f"{path} not available")


def write_erasable_tumours(out: Path, n: int, seed: int, size: int = 64) -> None:
    """``n`` tumour phantoms (``out/yes``) whose lesion lies off the mid-line, so that it can be erased (and
    pasted), with their masks in ``out/_masks/yes``."""
    import numpy as np
    from PIL import Image

    from braintumor.data.erase import erase_lesion
    from braintumor.data.synthetic import make_phantom

    rng = np.random.default_rng(seed)
    (out / "yes").mkdir(parents=True)
    (out / "_masks" / "yes").mkdir(parents=True)
    made = 0
    while made < n:
        img, mask = make_phantom(rng, size, tumour=True)
        if erase_lesion(img, mask) is None:
            continue
        Image.fromarray(img).save(out / "yes" / f"p{made:04d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "_masks" / "yes" / f"p{made:04d}.png")
        made += 1


def train_with_lesion_copies(phantoms: Path, out: Path, flag: str):
    """``braintumor train`` of a tiny CNN on the phantoms with their masks and ``flag`` (``--erase-lesions``,
    ``--paste-lesions``): the CLI result, metadata.json, and the training images per class in split.csv (files
    only)."""
    import csv
    import json

    from typer.testing import CliRunner

    from braintumor.cli import app

    res = CliRunner().invoke(app, ["train", str(phantoms), "--masks", str(phantoms / "_masks"), flag, "--model",
                                   "cnn", "--img-size", "48", "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "metadata.json").read_text())
    rows = list(csv.DictReader((out / "split.csv").open()))
    n_train = {c: sum(r["label"] == c and r["subset"] == "train" for r in rows) for c in ("yes", "no")}
    return res, meta, rows, n_train


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    """400 phantoms (yes/no, 64 px) with lesion masks in _masks/yes."""
    from braintumor.data.synthetic import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, n=400, size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def phantoms_test(tmp_path_factory) -> Path:
    """A second, independent phantom set (another seed) for evaluation."""
    from braintumor.data.synthetic import write_phantoms

    out = tmp_path_factory.mktemp("phantoms_test")
    write_phantoms(out, n=100, size=64, seed=123)
    return out


TINY = dict(model="cnn", img_size=64, epochs=14, batch_size=32, seed=0)


@pytest.fixture(scope="session")
def trained_run(phantoms, tmp_path_factory):
    """A tiny CNN trained on the phantoms: the shared model for evaluation/explanation/serving tests."""
    from braintumor.config import TrainConfig
    from braintumor.training import train

    out = tmp_path_factory.mktemp("runs") / "cnn"
    return train(TrainConfig(data_dir=str(phantoms), **TINY), out=out)
