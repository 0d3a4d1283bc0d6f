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

import csv
import io
import json
import os
import pickle
import pickletools
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
        """The run's ``metadata.json``, checked against the schema (:func:`braintumor.schema.read_metadata_file`).

        Any status is accepted (training reads its own running run); the loaders that predict refuse a run that
        did not finish (:func:`braintumor.inference.require_complete`).

        Raises:
            RunError: no ``metadata.json`` (not a run folder), or one that is empty, not JSON, not an object, or
                breaks the schema (a missing or malformed field): one line naming the file and the field.
        """
        if not self.metadata.is_file():
            if self.metadata.exists() or self.metadata.is_symlink():
                raise RunError(f"{self.metadata}: not a regular file")
            raise RunError(f"{self.root}: not a run folder (no metadata.json)")
        from .schema import read_metadata_file

        return read_metadata_file(self.metadata)

    def write_json(self, path: Path, data: dict) -> None:
        atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")

    def save_checkpoint(self, path: Path, state: dict) -> None:
        import torch  # here, not at the top: writing reports and JSON (audit, evaluate) never needs torch

        atomic_write_bytes(path, lambda fh: torch.save(state, fh))

    def load_checkpoint(self, which: str = "best") -> dict:
        """The checkpoint's contents, loaded as plain data: nothing in the file is ever run.

        Run folders are shared, and a ``.pt`` file is a pickle, which can hold code. So the file is loaded with
        ``torch.load(..., weights_only=True)``, and first its pickle is checked to name no global beyond
        :data:`CHECKPOINT_GLOBALS` (what braintumor's checkpoints hold), whatever other libraries added to torch's
        process-wide ``weights_only`` allow-list.

        Raises:
            RunError: no such file, a file that is not a readable checkpoint, or one that holds anything other than
                tensors and plain values (``refused to load``).
        """
        path = self.best if which == "best" else self.last
        if not path.is_file():
            raise RunError(f"{self.root}: no checkpoint {path.relative_to(self.root)}")
        refused = f"{path}: refused to load: the checkpoint holds code or objects that are not plain weights"
        advice = "braintumor never writes such files; do not use it: retrain, or get the run from a source you trust"
        try:
            data = path.read_bytes()  # checked and loaded from the same bytes
            unsafe = _unsafe_globals(data)
        except OSError as exc:
            raise RunError(f"{path}: unreadable checkpoint ({_one_line(exc)})") from None
        except _Unreadable as exc:
            raise RunError(f"{path}: unreadable checkpoint ({exc})") from None
        if unsafe:
            raise RunError(f"{refused} ({unsafe}); {advice}")
        import torch

        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # what torch's weights-only unpickler raises for what it refuses
            raise RunError(f"{refused} ({_weights_only_reason(exc)}); {advice}") from None
        except Exception as exc:  # noqa: BLE001
            raise RunError(f"{path}: unreadable checkpoint ({_one_line(exc)})") from None

    @staticmethod
    def default_for(data_dir: str | Path | list, model: str, base: str | Path = "runs") -> Path:
        """``runs/<time>-<data>-<model>``; several data folders are named ``a+b``."""
        import time

        stamp = time.strftime("%Y%m%d-%H%M%S")
        dirs = data_dir if isinstance(data_dir, list | tuple) else [data_dir]
        name = "+".join(Path(d).resolve().name for d in dirs) or "data"
        path = Path(base) / f"{stamp}-{name}-{model}"
        i = 1
        while path.exists():
            i += 1
            path = Path(base) / f"{stamp}-{name}-{model}-{i}"
        return path


# Every global a braintumor checkpoint's pickle names (``GLOBAL module name``): state dicts are OrderedDicts of
# tensors, a tensor is rebuilt by ``_rebuild_tensor_v2`` from a storage whose class only says its dtype; the rest
# (epochs, losses, history rows, optimizer and scheduler state, the weight average) is dicts, lists, tuples, str,
# int, float, bool and None, which need no global. torch's weights-only unpickler allows all of these by default.
CHECKPOINT_GLOBALS = frozenset(
    ["collections OrderedDict", "torch._utils _rebuild_tensor_v2"]
    + [f"torch {dt}Storage" for dt in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte",
                                       "Bool", "ComplexFloat", "ComplexDouble")]
)
_MAX_PICKLE_BYTES = 64 << 20  # a checkpoint's data.pkl holds structure only (tensor bytes are separate records)


class _Unreadable(Exception):
    pass


def _unsafe_globals(data: bytes) -> str | None:
    """What in a checkpoint's pickle is outside :data:`CHECKPOINT_GLOBALS` (``None``: nothing).

    The pickle is only disassembled (``pickletools``), so this runs nothing. It makes the load independent of
    globals other libraries add to torch's process-wide allow-list (MONAI adds its ``MetaTensor`` classes, for
    one). torch's weights-only unpickler resolves globals through ``GLOBAL`` alone; the other routes are refused.

    Raises:
        _Unreadable: not torch's zip format (all ``torch.save`` writes since torch 1.6), or a damaged file.
    """
    try:
        if data[:4] != b"PK\x03\x04":  # the test torch.load itself uses to choose the zip reader
            raise _Unreadable("not in the zip format torch.save writes")
        found: set[str] = set()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            pickles = [i for i in zf.infolist() if i.filename.rsplit("/", 1)[-1] == "data.pkl"]
            if not pickles:
                raise _Unreadable("no data.pkl in the zip")
            for info in pickles:  # every one, duplicates included: the reader torch uses may pick another
                with zf.open(info) as fh:
                    pkl = fh.read(_MAX_PICKLE_BYTES + 1)
                if len(pkl) > _MAX_PICKLE_BYTES:
                    raise _Unreadable(f"{info.filename} larger than {_MAX_PICKLE_BYTES >> 20} MiB")
                for op, arg, _ in pickletools.genops(pkl):
                    if op.name in ("GLOBAL", "INST"):
                        if arg not in CHECKPOINT_GLOBALS:
                            found.add(_py3_name(str(arg)))
                    elif op.name in ("STACK_GLOBAL", "EXT1", "EXT2", "EXT4", "OBJ"):  # objects by other routes
                        found.add(f"pickle opcode {op.name}")
    except _Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001  (a damaged zip or pickle: zipfile, zlib and pickletools errors)
        raise _Unreadable(_one_line(exc)) from None
    return ", ".join(sorted(found)[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "") if found else None


def _py3_name(arg: str) -> str:
    """``module.name`` of a pickle ``GLOBAL`` argument, with Python 2 names as unpickling maps them (for messages)."""
    import _compat_pickle

    module, _, name = arg.partition(" ")
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _weights_only_reason(exc: BaseException) -> str:
    """The one line of torch's (long, multi-line) weights-only refusal that says what was refused."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if any(w in ln for w in ("GLOBAL", "Unsupported", "unsupported", "blocked", "not an allowed")):
            # the first sentence: the rest advises widening torch's allow-list, which is not the way here
            return ln.split("WeightsUnpickler error: ")[-1].split(". ")[0].rstrip(".")[:200]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:300]


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


def read_predictions(path: Path) -> tuple[list[str], list[str], list[str], np.ndarray, list[str]]:
    """A run's (or an evaluation's) ``predictions.csv`` -> paths, true labels, predicted labels, probabilities,
    class names."""
    from .display import name_from_row

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.DictReader(fh))
    classes = [k[2:] for k in (rows[0].keys() if rows else []) if k.startswith("p_")]
    proba = np.asarray([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64)
    return ([name_from_row(r) for r in rows], [r["label"] for r in rows], [r["predicted"] for r in rows],
            proba.reshape(len(rows), len(classes)), classes)
