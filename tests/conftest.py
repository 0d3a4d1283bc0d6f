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
