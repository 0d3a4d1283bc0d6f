"""Predictor: the run's preprocessing + its model + temperature/threshold. One way to run a trained model.

Example:
    >>> from braintumor.inference import Predictor
    >>> pred = Predictor.from_run("runs/my-run")                    # doctest: +SKIP
    >>> [p.label for p in pred.predict_paths(["scan.jpg"])]         # doctest: +SKIP
    ['yes']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data.cache import load_images
from .errors import RunError
from .metrics import predict_labels
from .models import build_model
from .preprocess import Preprocessor
from .rundir import RunDir


@dataclass
class Prediction:
    """One file's result: ``label`` and ``probabilities`` (class -> p), or ``error`` when unreadable."""

    path: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "probabilities": self.probabilities, "error": self.error}


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over the model's parameter/buffer names, shapes and values.

    The same weights give the same fingerprint whether they come from a run folder or an exported ONNX file.
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def _torch_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Preprocess images exactly as in training and return class probabilities.

    Args:
        model: a torch module returning logits.
        preprocessor: the run's :class:`Preprocessor`.
        classes: class names in label order.
        positive_class: the 'tumour' class of a binary problem (used by ``threshold``).
        temperature: logits are divided by it before the softmax (calibration).
        threshold: binary decision threshold on the positive class probability (``None``: argmax).
        metadata: the run's metadata.

    Example:
        >>> from braintumor import Predictor
        >>> pred = Predictor.from_run("runs/demo")                        # doctest: +SKIP
        >>> pred                                                          # doctest: +SKIP
        Predictor(model='efficientnet-lite0', classes=['no', 'yes'], img_size=96, temperature=1.1, threshold=0.5)
        >>> pred.predict_paths(["scan.png"])[0].probabilities             # doctest: +SKIP
        {'no': 0.03, 'yes': 0.97}
    """

    def __init__(self, model: torch.nn.Module, preprocessor: Preprocessor, classes: Sequence[str],
                 positive_class: str | None = None, temperature: float = 1.0, threshold: float | None = None,
                 metadata: dict | None = None, device: str = "auto"):
        self.device = _torch_device(device)
        # Plain (NCHW) memory format: channels_last was slower for inference on AVX2 CPUs (benchmarks/inference.py);
        # the fast CPU path is onnxruntime (braintumor.export.OnnxPredictor).
        self.model = model.to(self.device, memory_format=torch.contiguous_format).eval()
        self.preprocessor = preprocessor
        self.classes = list(classes)
        self.positive_class = positive_class
        self.temperature = float(temperature or 1.0)
        self.threshold = threshold
        self.metadata = metadata or {}
        self.run_dir: Path | None = None

    def __repr__(self) -> str:
        return (f"Predictor(model={self.metadata.get('model', '?')!r}, classes={self.classes}, "
                f"img_size={self.preprocessor.img_size}, temperature={self.temperature:.3g}, "
                f"threshold={self.threshold})")

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> Predictor:
        """Load a run folder's model and preprocessing."""
        run = RunDir(run_dir)
        meta = run.read_metadata()
        ckpt = run.load_checkpoint(checkpoint)
        model = build_model(meta["model"], len(meta["classes"]), pretrained=False, img_size=meta["img_size"])
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise RunError(f"{run.root}: checkpoint does not match model '{meta['model']}' ({exc})") from None
        calib = meta.get("calibration") or {}
        p = cls(model, Preprocessor.from_dict(meta["preprocessing"]), meta["classes"], meta.get("positive_class"),
                calib.get("temperature", 1.0), meta.get("threshold"), meta, device)
        p.run_dir = run.root
        return p

    backend = "torch"
    _fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the model weights (see :func:`weights_fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def model_info(self) -> dict:
        """``name`` (architecture), ``version`` (the run's name), ``fingerprint`` (of the weights) and more."""
        meta = self.metadata
        version = meta.get("run_name") or (Path(self.run_dir).resolve().name if self.run_dir else None)
        return {"name": meta.get("model"), "version": version, "fingerprint": self.fingerprint,
                "data_fingerprint": (meta.get("data") or {}).get("fingerprint"), "backend": self.backend,
                "classes": self.classes, "positive_class": self.positive_class, "img_size": self.preprocessor.img_size,
                "temperature": self.temperature, "threshold": self.threshold}

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class) if self.positive_class in self.classes else 1

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Logits for a normalised ``(N, 3, S, S)`` tensor."""
        outs = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(self.device).contiguous()
            outs.append(self.model(xb).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0, len(self.classes))

    def proba_prepared(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities for already prepared ``uint8`` images ``(N, S, S, 3)``."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        z = self.logits(self.preprocessor.normalise(images), batch_size) / self.temperature
        return torch.softmax(z, dim=1).numpy()

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Probabilities for raw ``(H, W, 3)`` ``uint8`` images (any size)."""
        return self.proba_prepared(np.stack([self.preprocessor.prepare(im) for im in images]), batch_size)

    def labels_from_proba(self, proba: np.ndarray) -> list[str]:
        return [self.classes[i] for i in predict_labels(proba, self.threshold, self.positive_index)]

    def predict_paths(self, paths: Sequence[str | Path], batch_size: int = 32,
                      progress: Callable[[int], None] | None = None) -> list[Prediction]:
        """Predict files in batches; an unreadable file gets an error row and the batch goes on."""
        results: list[Prediction] = []
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            loaded = load_images(chunk, self.preprocessor)
            rows = [Prediction(str(p)) for p in chunk]
            kept = set(loaded.kept)
            failed = [j for j in range(len(chunk)) if j not in kept]
            for j, (_, reason) in zip(failed, loaded.skipped, strict=True):
                rows[j].error = reason
            if loaded.kept:
                proba = self.proba_prepared(loaded.images, batch_size)
                labels = self.labels_from_proba(proba)
                for j, pr, lab in zip(loaded.kept, proba, labels, strict=True):
                    rows[j].label = lab
                    rows[j].probabilities = {c: float(v) for c, v in zip(self.classes, pr, strict=True)}
            results.extend(rows)
            if progress is not None:
                progress(len(chunk))
        return results


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> Predictor:
    """Load a run folder for prediction: shorthand for :meth:`Predictor.from_run`.

    Example:
        >>> import braintumor as bt
        >>> predictor = bt.load_run("runs/demo")                          # doctest: +SKIP
        >>> [p.label for p in predictor.predict_paths(["a.png", "b.png"])]  # doctest: +SKIP
        ['yes', 'no']
    """
    return Predictor.from_run(run_dir, checkpoint, device)


def load_predictor(path: str | Path, device: str = "auto") -> Predictor:
    """A run folder -> torch :class:`Predictor`; an ``.onnx`` file -> ``braintumor.export.OnnxPredictor``.

    Example:
        >>> from braintumor.inference import load_predictor
        >>> load_predictor("runs/navoneel/model.onnx")     # doctest: +SKIP
        OnnxPredictor('runs/navoneel/model.onnx', model='efficientnet-lite0', classes=['no', 'yes'], img_size=224)
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".onnx":
        from .export import OnnxPredictor

        return OnnxPredictor(p)
    if p.is_dir():
        return Predictor.from_run(p, device=device)
    if p.suffix.lower() == ".onnx":
        raise RunError(f"{p}: no such ONNX file")
    raise RunError(f"{p}: not a run folder or an .onnx file")
