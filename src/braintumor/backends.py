"""Which engine runs a model: :func:`load_predictor` picks torch, onnxruntime FP32 or onnxruntime INT8.

A run folder can run on torch (its checkpoint, :class:`~braintumor.inference.Predictor`), on onnxruntime (its
cached FP32 export, :func:`braintumor.export.onnx_for_run`) or on its INT8 copy (:mod:`braintumor.quantize`); an
``.onnx`` file runs on onnxruntime. This module sits above all three, so that none of them imports another one's
caller.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import RunError, UsageError
from .inference import Predictor, _adopt_dicom_window, _device_type, require_complete
from .rundir import RunDir

#: Inference engines of :func:`load_predictor`.
BACKENDS = ("auto", "onnx", "torch")


#: ``precision`` choices of :func:`load_predictor`.
PRECISIONS = ("auto", "fp32", "int8")


def load_predictor(path: str | Path, device: str = "auto", backend: str | None = None, *,
                   notice: Callable[[str], None] | None = None, torch_predictor: Predictor | None = None,
                   cache_dir: str | Path | None = None, precision: str = "auto") -> Predictor:
    """A run folder or an ``.onnx`` file -> a predictor on the chosen engine.

    Args:
        path: a run folder or an ``.onnx`` file written by ``braintumor.export.export_onnx``.
        device: torch device of a run folder (``auto``: CUDA when available).
        backend: ``torch`` (a run folder's torch model), ``onnx`` (onnxruntime: a run folder's cached export,
            exported on demand, see ``braintumor.export.onnx_for_run``) or ``auto`` (onnxruntime when it is
            installed and the device is the CPU, else torch; if the export cannot be made, torch with a notice).
            ``None`` (default): torch for a run folder. An ``.onnx`` file always runs on onnxruntime (``torch``
            is refused).
        notice: called with one line when ``auto`` falls back to torch, or when an export is made on demand.
        torch_predictor: the run's torch predictor when it is already loaded (it is not loaded twice).
        cache_dir: where exports go when the run folder is read-only (default ``$XDG_CACHE_HOME/braintumor/onnx``).
        precision: for a run folder on onnxruntime: ``auto`` uses the run's INT8 model (``model.int8.onnx``, made
            by ``braintumor export RUN --int8``) when it passed its agreement check and still matches the run, else
            FP32; ``int8`` insists on it (an error when there is none); ``fp32`` never uses it. The torch backend
            is always FP32; an ``.onnx`` file runs as it is.

    Raises:
        RunError: not a run folder or an ``.onnx`` file; ``precision="int8"`` without a current INT8 model.
        UsageError: an unknown backend or precision, ``torch`` for an ``.onnx`` file, or ``onnx`` without
            onnxruntime.

    Example:
        >>> from braintumor.backends import load_predictor
        >>> load_predictor("runs/navoneel/model.onnx")     # doctest: +SKIP
        OnnxPredictor('runs/navoneel/model.onnx', model='efficientnet-lite0', classes=['no', 'yes'], img_size=224)
        >>> load_predictor("runs/navoneel", backend="auto").backend           # doctest: +SKIP
        'onnxruntime'
    """
    explicit = backend is not None
    backend = {"onnxruntime": "onnx"}.get(str(backend or "torch").lower(), str(backend or "torch").lower())
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}': choose auto, onnx or torch")
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}': choose {', '.join(PRECISIONS)}")
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".onnx":
        if backend == "torch" and explicit:
            raise UsageError(f"{p}: an .onnx file runs on onnxruntime; the torch backend needs a run folder")
        from .export import OnnxPredictor

        pred = OnnxPredictor(p)
        _adopt_dicom_window(pred.metadata, p, notice)
        return pred
    if p.is_dir():
        meta = RunDir(p).read_metadata()
        require_complete(p, meta)
        _adopt_dicom_window(meta, p, notice)
        if precision == "int8" and backend == "torch":
            raise UsageError("--precision int8 runs on onnxruntime: use --backend auto or onnx, not torch")
        if precision != "fp32" and backend != "torch" and (backend == "onnx" or _device_type(device) == "cpu"):
            int8 = _int8_predictor(p, meta, precision == "int8", notice)
            if int8 is not None:
                return int8
        return _run_predictor(p, device, backend, notice, torch_predictor, cache_dir)
    if p.suffix.lower() == ".onnx":
        raise RunError(f"{p}: no such ONNX file")
    raise RunError(f"{p}: not a run folder or an .onnx file")


def _int8_predictor(run_dir: Path, meta: dict, required: bool,
                    notice: Callable[[str], None] | None = None) -> Predictor | None:
    """The run's current, checked INT8 model as a predictor reporting the run (``None``: there is none, or it was
    checked on a CPU with VNNI and this one has none, unless ``required``)."""
    from . import quantize
    from .quantize import INT8_FILE, int8_for_run

    info = meta.get("int8") if isinstance(meta.get("int8"), dict) else {}
    if not required and info.get("passed") is True and info.get("cpu_vnni") is True \
            and quantize.cpu_has_vnni() is False:  # decided before the INT8 sessions are made, not after
        if notice is not None and (run_dir / INT8_FILE).is_file():
            notice(f"{run_dir}: its INT8 model was checked on a CPU with VNNI and this one has none (8-bit results "
                   f"drift further from FP32 without it): FP32 used; `braintumor export {run_dir} --int8` checks "
                   f"it here, --precision int8 uses it anyway")
        return None
    try:
        pred = int8_for_run(run_dir)
    except ImportError:
        pred = None  # onnxruntime missing: the FP32 path says so
    if pred is None:
        if required:
            if info.get("passed") is False:
                raise RunError(f"{run_dir}: no INT8 model to use: its check failed ({info.get('reason')}); use "
                               "--precision auto or fp32")
            raise RunError(f"{run_dir}: no INT8 model to use (no current {INT8_FILE}); make one with `braintumor "
                           f"export {run_dir} --int8`, or use --precision fp32")
        return None
    pred.metadata = dict(meta)
    pred.run_dir = run_dir
    pred.checkpoint_file = run_dir / "checkpoints" / "best.pt"
    pred.precision = "int8"
    return pred


def _run_predictor(run_dir: Path, device: str, backend: str, notice: Callable[[str], None] | None,
                   torch_predictor: Predictor | None, cache_dir: str | Path | None) -> Predictor:
    def torch_path() -> Predictor:
        return torch_predictor if torch_predictor is not None else Predictor.from_run(run_dir, device=device)

    if backend == "torch":
        return torch_path()
    RunDir(run_dir).read_metadata()  # not a run folder: the same error whatever the backend
    if backend == "auto" and _device_type(device) != "cpu":
        return torch_path()  # a GPU beats onnxruntime on the CPU
    from .export import onnx_for_run

    if backend == "onnx":
        return onnx_for_run(run_dir, predictor=torch_predictor, cache_dir=cache_dir, notice=notice)
    try:
        return onnx_for_run(run_dir, predictor=torch_predictor, cache_dir=cache_dir, notice=notice)
    except RunError:
        raise  # the run folder itself is broken: torch would fail the same way
    except Exception as exc:  # noqa: BLE001 - any failure of the fast path falls back to torch, in one line
        if notice is not None:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            notice(f"onnxruntime fast path not used ({reason}); predicting with torch")
        return torch_path()
