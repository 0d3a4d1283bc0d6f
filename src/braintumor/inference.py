"""Predictor: the run's preprocessing + its model + temperature/threshold. One way to run a trained model.

Example:
    >>> from braintumor.inference import Predictor
    >>> pred = Predictor.from_run("runs/my-run")                    # doctest: +SKIP
    >>> [p.label for p in pred.predict_paths(["scan.jpg"])]         # doctest: +SKIP
    ['yes']
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.cache import load_images
from .errors import RunError, UsageError
from .lazy import inference_mode, torch
from .metrics import predict_labels
from .preprocess import Preprocessor
from .rundir import RunDir

#: the one-line error of a tumour-map request to a run trained without masks
NO_TUMOUR_MAP = "this run has no tumour-map decoder: train it with --masks DIR"


@dataclass
class Prediction:
    """One file's result: ``label`` and ``probabilities`` (class -> p), or ``error`` when unreadable.

    The input check (:mod:`braintumor.ood`) adds ``verdict`` (the answer to give: the class, ``not_brain_mri``,
    ``unfamiliar`` or ``uncertain``), ``in_distribution`` (``None`` when the run has no fitted check or it was
    switched off), ``ood_score`` (feature distance / threshold: above 1 is unfamiliar) and ``ood_reasons`` (the
    rules that failed). ``label`` stays the model's class whatever the verdict.
    """

    path: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    verdict: str | None = None
    in_distribution: bool | None = None
    ood_score: float | None = None
    ood_reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "probabilities": self.probabilities, "error": self.error,
                "verdict": self.verdict, "in_distribution": self.in_distribution, "ood_score": self.ood_score,
                "ood_reasons": list(self.ood_reasons)}


@dataclass
class Assessment:
    """The input check's answer for one image (see :meth:`Predictor.assess`)."""

    verdict: str | None
    in_distribution: bool | None
    ood_score: float | None
    ood_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "in_distribution": self.in_distribution, "ood_score": self.ood_score,
                "ood_reasons": list(self.ood_reasons)}

    def apply(self, pred: Prediction) -> Prediction:
        pred.verdict, pred.in_distribution = self.verdict, self.in_distribution
        pred.ood_score, pred.ood_reasons = self.ood_score, list(self.ood_reasons)
        return pred


@dataclass
class ModelOutputs:
    """What one model pass gives for a batch of prepared images: ``proba`` ``(N, K)``, tumour ``maps``
    ``(N, S, S)`` (when asked and available) and ``scores`` (the input check's ``ood_score`` ``(N,)``, when the
    run has a fitted check and it is on)."""

    proba: np.ndarray
    maps: np.ndarray | None = None
    scores: np.ndarray | None = None


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over the model's parameter/buffer names, shapes and values.

    The same weights give the same fingerprint whether they come from a run folder or an exported ONNX file.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes.

    Example:
        >>> from braintumor.inference import file_sha256
        >>> file_sha256("runs/demo/checkpoints/best.pt")[:16]             # doctest: +SKIP
        '3f9a0c1d2b4e5f60'
    """
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _torch_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if _cuda_available() else "cpu")
    return torch.device(device)


def _device_type(device: str = "auto") -> str:
    """``_torch_device(device).type``, without importing torch for ``auto`` on a CPU-only torch build (where the
    onnxruntime path is chosen and torch is never needed)."""
    return ("cuda" if _cuda_available() else "cpu") if device == "auto" else _torch_device(device).type


def _cuda_available() -> bool:
    """Whether torch sees a GPU; ``False`` at once for a CPU-only build (its version ends in ``+cpu``) that is not
    imported yet."""
    import sys

    if "torch" not in sys.modules:
        from importlib.metadata import PackageNotFoundError, version

        try:
            if version("torch").endswith("+cpu"):
                return False
        except PackageNotFoundError:
            pass
    return bool(torch.cuda.is_available())


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
                 metadata: dict | None = None, device: str = "auto", input_check=None):
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
        #: The run's fitted :class:`~braintumor.ood.InputCheck` (``None``: a run made before the check existed).
        self.input_check = input_check
        #: Apply the input check (``False``: ``--no-ood-check``, every verdict is the class).
        self.check_inputs = True
        #: Mirror test-time augmentation: the probabilities (and tumour maps) of each image averaged with those of
        #: its left-right mirror image (twice the model work; the input check scores the image itself).
        self.tta = False
        self.run_dir: Path | None = None
        #: The checkpoint file the weights were loaded from (run folders), and its (size, mtime, inode) then.
        self.checkpoint_file: Path | None = None
        self._checkpoint_stat: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return (f"Predictor(model={self.metadata.get('model', '?')!r}, classes={self.classes}, "
                f"img_size={self.preprocessor.img_size}, temperature={self.temperature:.3g}, "
                f"threshold={self.threshold})")

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto", *,
                 allow_incomplete: bool = False) -> Predictor:
        """Load a run folder's model and preprocessing.

        ``metadata.json`` is checked against the schema (:mod:`braintumor.schema`) before anything is built, and
        the checkpoint's head against its classes before the weights are loaded.

        Args:
            run_dir: a run folder written by ``braintumor train``.
            checkpoint: ``best`` or ``last``.
            device: torch device (``auto``: CUDA when available).
            allow_incomplete: load a run whose training has not finished (``status`` other than ``complete``);
                only training's own final stage does.

        Raises:
            RunError: not a run folder, metadata that breaks the schema, a run that did not finish, a checkpoint
                that cannot be loaded or whose head does not match the classes: one line.

        Example:
            >>> from braintumor.inference import Predictor
            >>> Predictor.from_run("runs/cut")                            # doctest: +SKIP
            Traceback (most recent call last):
            ...
            braintumor.errors.RunError: runs/cut: the run did not finish (status: running); finish it with ...
        """
        run = RunDir(run_dir)
        meta = run.read_metadata()
        if not allow_incomplete:
            require_complete(run.root, meta)
        ckpt_file = run.best if checkpoint == "best" else run.last
        try:
            stat = _stat_key(ckpt_file)
        except OSError:
            stat = None
        ckpt = run.load_checkpoint(checkpoint)
        state = ckpt.get("model") if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise RunError(f"{ckpt_file}: not a braintumor checkpoint (no 'model' weights)")
        _adopt_dicom_window(meta, run.root)
        from .models import build_model

        model = build_model(meta["model"], len(meta["classes"]), pretrained=False, img_size=meta["img_size"])
        check_head(model, state, meta["classes"], f"{ckpt_file}", run.metadata, ckpt.get("classes"))
        tm = meta.get("tumour_map")
        if isinstance(tm, dict):
            from .models.segmentation import attach_decoder

            try:
                attach_decoder(model, meta["model"], meta["img_size"], width=int(tm.get("width", 32)),
                               layers=[str(n) for n in tm.get("layers") or []] or None)
            except (TypeError, ValueError, UsageError) as exc:
                raise RunError(f"{run.metadata}: tumour_map is not valid ({exc})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            from . import __version__

            made_by = (meta.get("versions") or {}).get("braintumor", "?")
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunError(f"{run.root}: checkpoint does not match model '{meta['model']}' of braintumor "
                           f"{__version__} (the run was made by braintumor {made_by}; the architecture may have "
                           f"changed): {first[:200]}") from None
        calib = meta.get("calibration") or {}
        from .ood import InputCheck

        check = InputCheck.from_metadata(meta, run.root)
        p = cls(model, Preprocessor.from_dict(meta["preprocessing"]), meta["classes"], meta.get("positive_class"),
                calib.get("temperature", 1.0), meta.get("threshold"), meta, device, input_check=check)
        p.run_dir = run.root
        p.checkpoint_file, p._checkpoint_stat = ckpt_file, stat
        return p

    def checkpoint_stamp(self) -> dict | None:
        """``{file, size, mtime_ns, sha256}`` of the checkpoint the weights came from, while that file is unchanged.

        ``None`` when the predictor was not loaded from a run folder, or the file changed since it was loaded.
        An ONNX export records it, so a later run can tell whether the export still matches the checkpoint.
        """
        if self.checkpoint_file is None or self._checkpoint_stat is None:
            return None
        path = Path(self.checkpoint_file)
        try:
            before = _stat_key(path)
            digest = file_sha256(path)
            if not before == _stat_key(path) == self._checkpoint_stat:
                return None  # replaced since it was loaded: the hash would not describe these weights
        except OSError:
            return None
        name = path.name
        if self.run_dir is not None:
            try:
                name = path.relative_to(self.run_dir).as_posix()
            except ValueError:
                pass
        return {"file": name, "size": before[0], "mtime_ns": before[1], "sha256": digest}

    backend = "torch"
    #: The arithmetic: ``fp32``, or ``int8`` (a run's ``model.int8.onnx``, :mod:`braintumor.quantize`).
    precision = "fp32"
    _fingerprint: str | None = None
    checkpoint_file: Path | None = None
    _checkpoint_stat: tuple[int, int, int] | None = None

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
                "temperature": self.temperature, "threshold": self.threshold, "precision": self.precision,
                "input_check": self.input_check_info()}

    # ------------------------------------------------------------------------------------------- the input check

    @property
    def has_input_check(self) -> bool:
        """Whether the run has a fitted input check (feature distance + threshold, :mod:`braintumor.ood`)."""
        return self.input_check is not None and self.input_check.has_distance

    @property
    def _scoring(self) -> bool:
        return self.check_inputs and self.has_input_check

    def input_check_info(self) -> dict:
        """``{available, enabled, threshold, min_confidence, rules}`` of the input check (for ``/v1/model``)."""
        c = self.input_check
        if c is None:
            return {"available": False, "enabled": False,
                    "note": "this run has no input check (made before it existed): every input gets a class; "
                            "fit one with `braintumor fit-input-check RUN`"}
        return {"available": self.has_input_check, "enabled": bool(self.check_inputs),
                "threshold": c.threshold, "min_confidence": c.min_confidence, "rules": c.rules.to_dict()}

    def assess(self, proba: np.ndarray, labels: Sequence[str], stats: Sequence | None = None,
               scores: np.ndarray | None = None) -> list[Assessment]:
        """The verdict of each image from its probabilities, predicted label, :class:`~braintumor.ood.ImageStats`
        (the rules; ``None`` skips them) and ``ood_score`` (``None``: no feature check).

        Without a fitted check, or with :attr:`check_inputs` off, every verdict is the label and
        ``in_distribution`` is ``None``.
        """
        from .ood import verdict

        out = []
        c = self.input_check
        for i, lab in enumerate(labels):
            if c is None or not self.check_inputs:
                out.append(Assessment(lab, None, None))
                continue
            reasons = c.rules.reasons(stats[i]) if stats is not None and stats[i] is not None else []
            score = None if scores is None else float(scores[i])
            conf = float(proba[i][self.classes.index(lab)]) if lab in self.classes else None
            ind = not reasons and (score is None or score <= 1.0)
            out.append(Assessment(verdict(lab, conf, reasons, score, c.min_confidence), ind, score, reasons))
        return out

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class) if self.positive_class in self.classes else 1

    @inference_mode
    def logits(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Logits for a normalised ``(N, 3, S, S)`` tensor."""
        outs = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(self.device).contiguous()
            outs.append(self.model(xb).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0, len(self.classes))

    @property
    def has_tumour_map(self) -> bool:
        """Whether the model also predicts a tumour probability map (a run trained with ``--masks``)."""
        return getattr(self.model, "decoder", None) is not None

    def proba_and_maps_prepared(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``(N, K)`` and tumour probability maps ``float32`` ``(N, S, S)`` in one pass.

        Raises:
            UsageError: the model has no tumour-map decoder.
        """
        out = self.outputs_prepared(images, maps=True, scores=False, batch_size=batch_size)
        return out.proba, out.maps

    def outputs_prepared(self, images: np.ndarray, *, maps: bool = False, scores: bool = True,
                         batch_size: int = 32) -> ModelOutputs:
        """Probabilities, and in the same model pass tumour maps (``maps=True``) and the input check's scores
        (``scores=True``, when the run has a fitted check and :attr:`check_inputs` is on), of prepared ``uint8``
        images ``(N, S, S, 3)``.

        Raises:
            UsageError: ``maps=True`` and the model has no tumour-map decoder.
        """
        if maps and not self.has_tumour_map:
            raise UsageError(NO_TUMOUR_MAP)
        scores = scores and self._scoring
        s = self.preprocessor.img_size
        if len(images) == 0:
            return ModelOutputs(np.zeros((0, len(self.classes)), np.float32),
                                np.zeros((0, s, s), np.float32) if maps else None,
                                np.zeros(0, np.float64) if scores else None)
        parts = [self._outputs_batch(images[i:i + batch_size], maps, scores) for i in range(0, len(images), batch_size)]
        out = ModelOutputs(np.concatenate([p[0] for p in parts]),
                           np.concatenate([p[1] for p in parts]).astype(np.float32) if maps else None,
                           np.concatenate([p[2] for p in parts]).astype(np.float64) if scores else None)
        if self.tta:  # the mirror image's outputs, its maps mirrored back, averaged in
            mirror = [self._outputs_batch(np.ascontiguousarray(images[i:i + batch_size, :, ::-1]), maps, False)
                      for i in range(0, len(images), batch_size)]
            out.proba = (out.proba + np.concatenate([p[0] for p in mirror])) / 2
            if maps:
                out.maps = (out.maps + np.concatenate([p[1] for p in mirror])[:, :, ::-1].astype(np.float32)) / 2
        return out

    @inference_mode
    def _outputs_batch(self, images: np.ndarray, maps: bool, scores: bool
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One batch of :meth:`outputs_prepared` (the ONNX predictor runs its graph here instead)."""
        x = self.preprocessor.normalise(images).to(self.device).contiguous()
        got: list[torch.Tensor] = []
        handle = self.model.pool.register_forward_hook(lambda _m, _i, o: got.append(o)) if scores else None
        try:
            if maps:
                logits, m = self.model.forward_with_map(x)
            else:
                logits, m = self.model(x), None
        finally:
            if handle is not None:
                handle.remove()
        proba = torch.softmax(logits.float().cpu() / self.temperature, dim=1).numpy()
        # The distance in torch, on torch's own threads (a NumPy BLAS call right after the forward pass waits for
        # them: 20 ms instead of 1 on 2 cores).
        score = self.input_check.torch_scores(got[-1].flatten(1)).double().cpu().numpy() if scores else None
        return proba, (torch.sigmoid(m.float()[:, 0]).cpu().numpy() if maps else None), score

    def tumour_maps_prepared(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Tumour probability maps ``float32`` ``(N, S, S)`` in ``[0, 1]`` for prepared ``uint8`` images."""
        return self.proba_and_maps_prepared(images, batch_size)[1]

    def proba_prepared(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities for already prepared ``uint8`` images ``(N, S, S, 3)``."""
        if self.tta:
            return self.outputs_prepared(images, maps=False, scores=False, batch_size=batch_size).proba
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
        """Predict files in batches; an unreadable file gets an error row and the batch goes on.

        The next batch is read and preprocessed (threads) while the model runs on the current one.
        """
        chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        results: list[Prediction] = []
        stats = self.input_check is not None and self.check_inputs
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="braintumor-read-ahead") as ahead:
            pending = ahead.submit(load_images, chunks[0], self.preprocessor, stats=stats) if chunks else None
            for k, chunk in enumerate(chunks):
                loaded = pending.result()
                if k + 1 < len(chunks):
                    pending = ahead.submit(load_images, chunks[k + 1], self.preprocessor, stats=stats)
                results.extend(self._rows(chunk, loaded, batch_size))
                if progress is not None:
                    progress(len(chunk))
        return results

    def _rows(self, chunk: Sequence[str | Path], loaded, batch_size: int) -> list[Prediction]:
        rows = [Prediction(str(p)) for p in chunk]
        kept = set(loaded.kept)
        failed = [j for j in range(len(chunk)) if j not in kept]
        for j, (_, reason) in zip(failed, loaded.skipped, strict=True):
            rows[j].error = reason
        if loaded.kept:
            out = self.outputs_prepared(loaded.images, batch_size=batch_size)
            labels = self.labels_from_proba(out.proba)
            checks = self.assess(out.proba, labels, loaded.stats, out.scores)
            for j, pr, lab, a in zip(loaded.kept, out.proba, labels, checks, strict=True):
                rows[j].label = lab
                rows[j].probabilities = {c: float(v) for c, v in zip(self.classes, pr, strict=True)}
                a.apply(rows[j])
        return rows


def head_key(model: torch.nn.Module) -> str | None:
    """The state-dict key of the classification head's last weight (its rows are the classes)."""
    head = getattr(model, "head", None)
    if head is None:
        return None
    last = None
    for name, mod in head.named_modules():
        if isinstance(mod, torch.nn.Linear):
            last = name
    return None if last is None else f"head.{last}.weight" if last else "head.weight"


def check_head(model: torch.nn.Module, state: dict, classes: Sequence[str], ckpt_name: str, meta_name,
               ckpt_classes=None) -> None:
    """Refuse a checkpoint whose head does not give one output per class of the metadata (before loading it).

    Raises:
        RunError: the head's output count differs from ``len(classes)``, or the checkpoint names other classes.
    """
    key = head_key(model)
    weight = state.get(key) if key is not None else None
    n_out = int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None
    if n_out is not None and n_out != len(classes):
        raise RunError(f"{ckpt_name}: the model's head has {n_out} outputs but {meta_name} lists {len(classes)} "
                       f"classes ({', '.join(map(str, classes))[:200]}): the checkpoint and the metadata do not "
                       f"belong together")
    if isinstance(ckpt_classes, list) and all(isinstance(c, str) for c in ckpt_classes) \
            and list(ckpt_classes) != list(classes):
        raise RunError(f"{ckpt_name}: trained for classes {', '.join(ckpt_classes)[:200]} but {meta_name} lists "
                       f"{', '.join(map(str, classes))[:200]}: the checkpoint and the metadata do not belong together")


def require_complete(run_root: str | Path, meta: dict) -> None:
    """Refuse a run whose training did not finish (``status`` present and not ``"complete"``; absent: an older
    run, complete).

    Raises:
        RunError: one line naming the run and its status, with the way to finish it.
    """
    status = meta.get("status")
    if status is not None and status != "complete":
        raise RunError(f"{run_root}: the run did not finish (status: {status}); finish it with "
                       f"`braintumor train --resume {run_root}`")


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> Predictor:
    """Load a run folder for prediction: shorthand for :meth:`Predictor.from_run`.

    Example:
        >>> import braintumor as bt
        >>> predictor = bt.load_run("runs/demo")                          # doctest: +SKIP
        >>> [p.label for p in predictor.predict_paths(["a.png", "b.png"])]  # doctest: +SKIP
        ['yes', 'no']
    """
    return Predictor.from_run(run_dir, checkpoint, device)


_WINDOW_WARNED: set[str] = set()


def _adopt_dicom_window(meta: dict, where, notice: Callable[[str], None] | None = None) -> None:
    """Prepare DICOM inputs with the run's training window (see ``data.dicom.adopt_window``)."""
    from .data.dicom import adopt_window

    message = adopt_window((meta or {}).get("dicom_window"))
    key = f"{Path(where).resolve()} {message}"
    if not message or key in _WINDOW_WARNED:
        return
    _WINDOW_WARNED.add(key)
    message = f"{where}: {message}"
    if notice is not None:
        notice(message)
    else:
        import warnings

        warnings.warn(message, stacklevel=3)


def refit_input_check(run_dir: str | Path, *, quantile: float | None = None, min_confidence: float | None = None,
                      on_skip=None):
    """Fit (or refit) the input check (:mod:`braintumor.ood`) of a finished run from its own ``split.csv`` and
    write it into the run (``ood.npz`` and ``metadata.json``'s ``input_check``): the way to give a run made before
    the check existed one. Returns the fitted :class:`~braintumor.ood.InputCheck`.

    Raises:
        RunError: not a run folder, no ``split.csv``, or a split side with no readable image.
    """
    from .data.split import read_split_file
    from .ood import DEFAULT_MIN_CONFIDENCE, DEFAULT_QUANTILE, fit_input_check

    quantile = DEFAULT_QUANTILE if quantile is None else quantile

    run = RunDir(run_dir)
    meta = run.read_metadata()
    rows = read_split_file(run.root)
    classes = list(meta["classes"])
    pred = Predictor.from_run(run.root, device="cpu")
    sides = {}
    for name, want in (("training", lambda s: s == "train"), ("validation", lambda s: s != "train")):
        chosen = [r for r in rows if want(r.get("subset", "")) and r.get("label") in classes]
        loaded = load_images([r["path"] for r in chosen], pred.preprocessor, stats=True, on_skip=on_skip)
        if not loaded.kept:
            raise RunError(f"{run.root}: no readable {name} image listed in split.csv (moved data folder?)")
        y = np.array([classes.index(chosen[i]["label"]) for i in loaded.kept])
        sides[name] = (loaded.images, y, loaded.stats)
    if min_confidence is None:
        min_confidence = float((meta.get("input_check") or {}).get("min_confidence", DEFAULT_MIN_CONFIDENCE))
    (tx, ty, _), (vx, vy, vs) = sides["training"], sides["validation"]
    check = fit_input_check(pred, tx, ty, vx, vy, quantile=quantile, min_confidence=min_confidence, val_stats=vs)
    check.save(run.root)
    meta["input_check"] = check.to_metadata()
    run.write_json(run.metadata, meta)
    from .model_card import refresh_model_card

    refresh_model_card(run.root)  # the card describes the check
    return check
