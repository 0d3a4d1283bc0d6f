"""The run folder layout. Nothing else hard-codes file names inside a run.

::

    RUN/
      config.yaml            everything needed to reproduce the run
      metadata.json          classes, preprocessing, input size, normalisation, fingerprint, seed, versions
      history.csv            per epoch: phase, loss, accuracy, val loss, val accuracy, lr, seconds
      metrics.json           validation metrics of the best checkpoint
      predictions.csv        validation predictions (path, label, predicted, probabilities)
      curves.png  confusion_matrix.png  roc.png
      checkpoints/best.pt  checkpoints/last.pt
      evaluations/<name>/    ``braintumor evaluate`` outputs for other folders
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import RunError


def atomic_write_bytes(path: Path, write) -> None:
    """Write through ``write(fileobj)`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    config = property(lambda self: self.root / "config.yaml")
    metadata = property(lambda self: self.root / "metadata.json")
    history = property(lambda self: self.root / "history.csv")
    metrics = property(lambda self: self.root / "metrics.json")
    predictions = property(lambda self: self.root / "predictions.csv")
    curves = property(lambda self: self.root / "curves.png")
    confusion = property(lambda self: self.root / "confusion_matrix.png")
    roc = property(lambda self: self.root / "roc.png")
    report = property(lambda self: self.root / "report.html")
    checkpoints = property(lambda self: self.root / "checkpoints")
    best = property(lambda self: self.root / "checkpoints" / "best.pt")
    last = property(lambda self: self.root / "checkpoints" / "last.pt")
    onnx = property(lambda self: self.root / "model.onnx")

    def evaluation(self, name: str) -> Path:
        return self.root / "evaluations" / name

    def create(self) -> RunDir:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    def read_metadata(self) -> dict:
        if not self.metadata.is_file():
            raise RunError(f"{self.root}: not a run folder (no metadata.json)")
        return json.loads(self.metadata.read_text())

    def write_json(self, path: Path, data: dict) -> None:
        atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")

    def save_checkpoint(self, path: Path, state: dict) -> None:
        atomic_write_bytes(path, lambda fh: torch.save(state, fh))

    def load_checkpoint(self, which: str = "best") -> dict:
        path = self.best if which == "best" else self.last
        if not path.is_file():
            raise RunError(f"{self.root}: no checkpoint {path.relative_to(self.root)}")
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise RunError(f"{path}: unreadable checkpoint ({exc})") from None

    @staticmethod
    def default_for(data_dir: str | Path, model: str, base: str | Path = "runs") -> Path:
        import time

        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = Path(data_dir).resolve().name or "data"
        path = Path(base) / f"{stamp}-{name}-{model}"
        i = 1
        while path.exists():
            i += 1
            path = Path(base) / f"{stamp}-{name}-{model}-{i}"
        return path


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
