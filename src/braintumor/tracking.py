"""Experiment tracking: a run's parameters, per-epoch metrics, final metrics (with their 95% intervals) and files,
logged to MLflow or TensorBoard while it trains.

Turned on with ``TrainConfig(track="mlflow")`` / ``"tensorboard"`` (``braintumor train ... --track mlflow``). The
training engine then adds a :class:`TrackingHandler` (rank 0 only), which logs:

* **MLflow** (``pip install 'braintumor[track]'``): one MLflow run per run folder, named after it, in the experiment
  ``braintumor`` (``MLFLOW_EXPERIMENT_NAME`` to change it) of the store ``MLFLOW_TRACKING_URI``, else the local
  store ``./mlruns/mlflow.db`` (SQLite; artefacts under ``mlruns/``). Parameters: the config. Metrics: each epoch's
  history row (step = epoch); at the end the final validation metrics with ``<metric>_ci_low`` /
  ``<metric>_ci_high``. Artefacts: ``report.html``, ``model_card.md``, ``config.yaml``, ``history.csv``,
  ``metrics.json``, ``metadata.json``, the plots, and the model as ONNX (``model/model.onnx``; skipped with one
  warning line when onnx is not installed). A cross-validation (:func:`braintumor.cv`) is one parent run (pooled
  metrics with intervals, the cross-validation report) with one nested run per fold.
* **TensorBoard**: event files in ``<run>/tensorboard/``: every history column per epoch (``epoch/loss``,
  ``epoch/val_accuracy``...), the final metrics (``final/...``, also as hparams) and the config as text.

The MLflow run id goes to ``<run>/tracking.json`` (``{"kind", "uri", "run_id", ...}``), so a run folder leads to
its tracked run; ``train --resume`` continues the same MLflow run.

Example:
    >>> from braintumor import TrainConfig, train
    >>> cfg = TrainConfig(data_dir="data/phantoms", model="cnn", img_size=64, epochs=3, track="mlflow")
    >>> result = train(cfg, out="runs/tracked")                                 # doctest: +SKIP
    >>> import json; json.load(open("runs/tracked/tracking.json"))["uri"]      # doctest: +SKIP
    'sqlite:////home/me/project/mlruns/mlflow.db'
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .display import finite_number
from .engine import Handler, TrainState
from .errors import BrainTumorError, UsageError

#: What ``track`` accepts (``None``: no tracking).
KINDS = ("mlflow", "tensorboard")
#: The folder of the local MLflow store used when ``MLFLOW_TRACKING_URI`` is not set (in the working directory):
#: its database ``mlflow.db`` (SQLite) and its artefacts.
DEFAULT_STORE = "mlruns"
DEFAULT_EXPERIMENT = "braintumor"
#: Files of a finished run folder logged as artefacts (those that exist), besides its ``*.png`` plots.
RUN_FILES = ("report.html", "model_card.md", "config.yaml", "history.csv", "metrics.json", "metadata.json")
#: The file in a run folder that names its tracked run.
TRACKING_FILE = "tracking.json"

_PACKAGES = {"mlflow": ("mlflow",), "tensorboard": ("tensorboard", "torch.utils.tensorboard")}
_log = logging.getLogger("braintumor.tracking")
#: The tracked run a cross-validation opened around its folds (their runs nest under it).
_PARENT: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar("braintumor_tracking_parent", default=None)


def default_uri() -> str:
    """The local MLflow store, ``sqlite:///<working directory>/mlruns/mlflow.db`` (an absolute path: the same
    store however the working directory changes later, and ``tracking.json`` names it wherever it is read).

    Example:
        >>> from braintumor.tracking import default_uri
        >>> default_uri().startswith("sqlite:///") and default_uri().endswith("/mlruns/mlflow.db")
        True
    """
    return f"sqlite:///{(Path(DEFAULT_STORE) / 'mlflow.db').resolve().as_posix()}"


def check_available(kind: str | None) -> None:
    """Refuse, before any work, a tracker that cannot run here.

    Raises:
        UsageError: ``kind`` is not ``mlflow`` or ``tensorboard``, or its package is not installed (one line
            saying what to install).

    Example:
        >>> from braintumor.tracking import check_available
        >>> check_available(None)                       # no tracking: nothing to check
        >>> check_available("wandb")
        Traceback (most recent call last):
        ...
        braintumor.errors.UsageError: --track must be mlflow or tensorboard, got 'wandb'
    """
    if kind is None:
        return
    if kind not in KINDS:
        raise UsageError(f"--track must be {' or '.join(KINDS)}, got {kind!r}")
    for module in _PACKAGES[kind]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise UsageError(f"--track {kind} needs the {kind} package: pip install 'braintumor[track]'") from None


# ---------------------------------------------------------------------------------------------- what is logged


def params_of(config: Mapping[str, Any]) -> dict[str, str]:
    """A config as tracker parameters: text as is, everything else as JSON (``null``, ``true``, ``["a", "b"]``).

    Example:
        >>> from braintumor.tracking import params_of
        >>> params_of({"model": "cnn", "lr": None, "data_dir": ["a", "b"], "epochs": 3})
        {'model': 'cnn', 'lr': 'null', 'data_dir': '["a", "b"]', 'epochs': '3'}
    """
    return {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in config.items()}


def metric_key(name: Any) -> str:
    """A metric name MLflow and TensorBoard accept (class names can hold any character).

    Example:
        >>> from braintumor.tracking import metric_key
        >>> metric_key("no tumour (T1)")
        'no tumour _T1_'
    """
    return re.sub(r"[^A-Za-z0-9_.\- ]+", "_", str(name)).strip() or "_"


def _interval(iv: Any) -> tuple[float, float] | None:
    """``{"low", "high", ...}`` or ``[low, high]`` -> ``(low, high)``; anything else -> ``None``."""
    if isinstance(iv, Mapping):
        lo, hi = finite_number(iv.get("low")), finite_number(iv.get("high"))
    elif isinstance(iv, list | tuple) and len(iv) == 2:
        lo, hi = finite_number(iv[0]), finite_number(iv[1])
    else:
        return None
    return None if lo is None or hi is None else (lo, hi)


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Final metrics (a ``metrics.json``) as flat numbers: each number, each interval of ``ci`` as
    ``<metric>_ci_low`` / ``<metric>_ci_high``, per-class values as ``per_class/<class>/<metric>``.

    Example:
        >>> from braintumor.tracking import flat_metrics
        >>> flat_metrics({"accuracy": 0.9, "threshold": None, "classes": ["no", "yes"],
        ...               "ci": {"accuracy": {"estimate": 0.9, "low": 0.8, "high": 0.97}, "n_boot": 1000},
        ...               "per_class": {"yes": {"sensitivity": 0.95}}})
        {'accuracy': 0.9, 'per_class/yes/sensitivity': 0.95, 'accuracy_ci_low': 0.8, 'accuracy_ci_high': 0.97}
    """
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if (x := finite_number(v)) is not None:
            out[prefix + metric_key(k)] = x
    for c, values in (metrics.get("per_class") or {}).items():
        for k, v in (values.items() if isinstance(values, Mapping) else ()):
            if (x := finite_number(v)) is not None:
                out[f"{prefix}per_class/{metric_key(c)}/{metric_key(k)}"] = x
    ci = metrics.get("ci")
    for k, iv in (ci.items() if isinstance(ci, Mapping) else ()):
        if (lohi := _interval(iv)) is not None:
            out[f"{prefix}{metric_key(k)}_ci_low"], out[f"{prefix}{metric_key(k)}_ci_high"] = lohi
    return out


def run_files(root: str | Path) -> list[Path]:
    """The files of a finished run (or cross-validation) folder worth keeping with its tracked run: those of
    :data:`RUN_FILES` (and a cross-validation's ``cv.json``, tables and predictions) that exist, and its plots."""
    root = Path(root)
    names = (*RUN_FILES, "cv.json", "folds.csv", "by_source.csv", "oof_predictions.csv")
    return [root / n for n in names if (root / n).is_file()] + sorted(root.glob("*.png"))


# ------------------------------------------------------------------------------------------------- trackers


class Tracker:
    """One tracked run: an MLflow run, or a TensorBoard log folder. Made by :func:`open_tracker`.

    Attributes:
        kind: ``"mlflow"`` or ``"tensorboard"``.
        root: the run (or cross-validation) folder it belongs to.
        info: what goes to ``tracking.json`` (``kind``, ``uri``, ``run_id``...).
    """

    kind = ""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.info: dict = {}
        self.open = False

    def start(self, name: str, params: Mapping[str, str], tags: Mapping[str, str] | None = None) -> None: ...
    def log_metrics(self, values: Mapping[str, float], step: int | None = None) -> None: ...
    def log_final(self, values: Mapping[str, float], step: int | None = None) -> None: ...
    def log_files(self, paths: list[Path], folder: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None: ...

    def write_info(self) -> None:
        from .rundir import RunDir

        self.root.mkdir(parents=True, exist_ok=True)
        RunDir(self.root).write_json(self.root / TRACKING_FILE, self.info)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's and Alembic's INFO lines (creating a store's tables...) kept off the console."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class MlflowTracker(Tracker):
    """An MLflow run, written through ``MlflowClient`` (the process-wide active run of ``mlflow.start_run`` is
    left alone: a run already active there becomes the parent, as a cross-validation's run does)."""

    kind = "mlflow"

    def __init__(self, root: str | Path):
        super().__init__(root)
        from mlflow import MlflowClient

        self.local = not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = default_uri() if self.local else os.environ["MLFLOW_TRACKING_URI"]
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        if self.local:
            Path(DEFAULT_STORE).mkdir(exist_ok=True)
        try:
            with _quiet():  # a new local store prints its table creation
                self.client = MlflowClient(self.uri)
        except Exception as exc:  # noqa: BLE001 - an unknown scheme, a store that cannot be opened
            raise UsageError(f"--track mlflow: cannot use the tracking store {self.uri} ({_one_line(exc)})") from None
        self.run_id: str | None = None

    def _call(self, what: str, fn, *args, **kw):
        """``fn(*args, **kw)``; a failure of the store is one line naming it."""
        try:
            with _quiet():
                return fn(*args, **kw)
        except BrainTumorError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow's, SQLAlchemy's and requests' errors alike
            raise BrainTumorError(f"--track mlflow: cannot {what} at {self.uri} ({_one_line(exc)})") from None

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = Path(DEFAULT_STORE).resolve().as_uri() if self.local else None
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # noqa: BLE001 - another process created it meanwhile
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def _parent_id(self) -> str | None:
        """The run to nest under: the cross-validation's, else a run active in this process in the same store."""
        parent = _PARENT.get()
        if isinstance(parent, MlflowTracker) and parent.open and parent.uri == self.uri:
            return parent.run_id
        import mlflow

        active = mlflow.active_run()
        if active is None:
            return None
        try:
            self.client.get_run(active.info.run_id)
        except Exception:  # noqa: BLE001 - a run of another store: not ours to nest under
            return None
        return active.info.run_id

    def _resumable(self) -> str | None:
        """The run id of ``tracking.json`` when it names a run of this store (``train --resume``)."""
        try:
            old = json.loads((self.root / TRACKING_FILE).read_text())
            if old.get("kind") == "mlflow" and old.get("uri") == self.uri and isinstance(old.get("run_id"), str):
                self.client.get_run(old["run_id"])
                return old["run_id"]
        except Exception:  # noqa: BLE001 - no file, not JSON, another store, a deleted run: a new run
            return None
        return None

    def start(self, name, params, tags=None) -> None:
        self._call("start a run", self._start, name, params, dict(tags or {}))

    def _start(self, name: str, params: Mapping[str, str], tags: dict) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        resumed = self._resumable()
        if resumed:
            self.run_id = resumed
            self.client.update_run(resumed, status="RUNNING")
        else:
            from mlflow.tracking.context.registry import resolve_tags

            parent = self._parent_id()
            if parent:
                tags["mlflow.parentRunId"] = parent
            tags.setdefault("braintumor.run_dir", str(self.root.resolve()))
            run = self.client.create_run(self._experiment_id(), tags=resolve_tags(tags), run_name=name)
            self.run_id = run.info.run_id
            items = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
            for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS_TAGS_PER_BATCH])
        self.open = True
        exp = self.client.get_run(self.run_id).info.experiment_id
        self.info = {"kind": "mlflow", "uri": self.uri, "run_id": self.run_id, "experiment": self.experiment,
                     "experiment_id": exp, "run_name": name}
        self.write_info()

    def log_metrics(self, values, step=None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in values.items()]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self._call("log metrics", self.client.log_batch, self.run_id, metrics=items[i:i + MAX_METRICS_PER_BATCH])

    def log_final(self, values, step=None) -> None:
        self.log_metrics(values, step)

    def log_files(self, paths, folder=None) -> None:
        for p in paths:
            self._call(f"log {p.name}", self.client.log_artifact, self.run_id, str(p), folder)

    def finish(self, status="FINISHED", reason=None) -> None:
        if not self.open:
            return
        self.open = False
        if reason:
            self._call("tag the run", self.client.set_tag, self.run_id, "braintumor.failure", reason[:5000])
        self._call("end the run", self.client.set_terminated, self.run_id, status)


class TensorBoardTracker(Tracker):
    """TensorBoard event files in ``<root>/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``)."""

    kind = "tensorboard"

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.logdir = self.root / "tensorboard"
        self.writer = None
        self.params: dict[str, str] = {}

    def start(self, name, params, tags=None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.params = dict(params)
        self.open = True
        if params:
            self.writer.add_text("config", _markdown_table(["parameter", "value"], params.items()))
        self.info = {"kind": "tensorboard", "uri": str(self.logdir.resolve()), "run_id": None, "run_name": name}
        self.write_info()

    def log_metrics(self, values, step=None) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"epoch/{k}", v, step)
        self.writer.flush()

    def log_final(self, values, step=None) -> None:
        from torch.utils.tensorboard.summary import hparams

        final = {f"final/{k}": float(v) for k, v in values.items()}
        for k, v in final.items():
            self.writer.add_scalar(k, v, step)
        lines = [(k, f"{v:.4g}") for k, v in values.items()]
        self.writer.add_text("final metrics", _markdown_table(["metric", "value"], lines), step)
        if self.params:  # the HParams tab: this run's config beside its final metrics
            for summary in hparams(self.params, {k: v for k, v in final.items() if "/per_class/" not in k}):
                self.writer.file_writer.add_summary(summary, step)
        self.writer.flush()

    def finish(self, status="FINISHED", reason=None) -> None:
        if not self.open:
            return
        self.open = False
        if status != "FINISHED":
            self.writer.add_text("status", f"{status.lower()}" + (f": {reason}" if reason else ""))
        self.writer.close()


def _markdown_table(header: list[str], rows) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    return "\n".join([" | ".join(header), " | ".join("---" for _ in header),
                      *(" | ".join(cell(v) for v in row) for row in rows)])


def open_tracker(kind: str, root: str | Path) -> Tracker:
    """A tracker of ``kind`` for the folder ``root`` (not started yet).

    Raises:
        UsageError: an unknown kind or its package missing (:func:`check_available`).
    """
    check_available(kind)
    return MlflowTracker(root) if kind == "mlflow" else TensorBoardTracker(root)


def _status(exc: BaseException) -> str:
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _name_under_parent(root: Path) -> str:
    """The run folder's name; inside the folder of the cross-validation that tracks it, its path there
    (``folds/r0-f1``, ``naive/folds/r0-f1``)."""
    parent = _PARENT.get()
    if parent is not None:
        try:
            return root.resolve().relative_to(parent.root.resolve()).as_posix()
        except ValueError:
            pass
    return root.name


# ------------------------------------------------------------------------------------------------- handlers


class TrackingHandler(Handler):
    """The training engine's handler that logs a run to MLflow or TensorBoard (see the module doc).

    Args:
        kind: ``"mlflow"`` or ``"tensorboard"``.
        run_dir: the run folder.

    Raises:
        UsageError: an unknown kind, or its package is not installed.

    Example:
        >>> from braintumor.tracking import TrackingHandler
        >>> handler = TrackingHandler("tensorboard", "runs/demo")         # doctest: +SKIP
        >>> # the engine calls handler.on_fit_start(state), on_epoch_end(state)... for every epoch
    """

    def __init__(self, kind: str, run_dir: str | Path):
        self.kind = kind
        self.run_dir = Path(run_dir)
        self.tracker = open_tracker(kind, run_dir)

    def on_fit_start(self, state: TrainState) -> None:
        cfg = state.cfg
        params = params_of(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
        meta = state.meta or {}
        tags = {"braintumor.model": str(meta.get("model", getattr(cfg, "model", ""))),
                "braintumor.classes": ", ".join(map(str, meta.get("classes") or state.classes or []))}
        self.tracker.start(_name_under_parent(self.run_dir), params, tags)

    def on_epoch_end(self, state: TrainState) -> None:
        if not state.history:
            return
        row = state.history[-1]
        values = {metric_key(k): x for k, v in row.items() if k != "epoch" and (x := finite_number(v)) is not None}
        self.tracker.log_metrics(values, int(row.get("epoch", state.epoch)))

    def on_run_complete(self, state: TrainState) -> None:
        metrics = state.metrics
        if not metrics:
            from .rundir import RunDir

            path = RunDir(self.run_dir).metrics
            metrics = json.loads(path.read_text()) if path.is_file() else {}
        last = int(state.history[-1].get("epoch", state.epoch)) if state.history else state.epoch
        self.tracker.log_final(flat_metrics(metrics), last)
        self.tracker.log_files(run_files(self.run_dir))
        if self.kind == "mlflow":
            model = onnx_model(self.run_dir, warn=lambda text: _warn(state, text))
            if model is not None:
                self.tracker.log_files([model], "model")
        self.tracker.finish("FINISHED")

    def on_exception(self, state: TrainState, exc: BaseException) -> None:
        try:
            self.tracker.finish(_status(exc), f"{type(exc).__name__}: {_one_line(exc)}")
        except BrainTumorError as err:  # the store's own failure must not hide the run's
            _log.warning("warning: %s", err)


def _warn(state: TrainState, text: str) -> None:
    """One warning line: on the run's console, else through the ``braintumor.tracking`` logger (stderr)."""
    if getattr(state, "console", None) is not None:
        from .display import markup

        state.console.print(f"[yellow]warning[/yellow]: {markup(text)}", highlight=False)
    else:
        _log.warning("warning: %s", text)


def onnx_model(run_dir: str | Path, warn=None) -> Path | None:
    """The run's ONNX export (``RUN/model.onnx``, made if needed: :func:`braintumor.export.onnx_for_run`), or
    ``None`` with one warning line (``warn(text)``; default: the ``braintumor.tracking`` logger) when it cannot be
    made (onnx or onnxruntime not installed...).

    Example:
        >>> from braintumor.tracking import onnx_model
        >>> onnx_model("runs/demo").name                                   # doctest: +SKIP
        'model.onnx'
    """
    from .export import onnx_for_run

    try:
        path = onnx_for_run(run_dir).path
    except BrainTumorError as exc:
        text = f"the model is not logged as ONNX ({_one_line(exc)})"
        if warn is not None:
            warn(text)
        else:
            _log.warning("warning: %s", text)
        return None
    return path if path is not None and path.is_file() else None


# ---------------------------------------------------------------------------------------- cross-validations


class GroupTracking:
    """What :func:`track_group` yields: the group's tracker (``None`` without tracking) and :meth:`complete`."""

    def __init__(self, tracker: Tracker | None):
        self.tracker = tracker

    def complete(self, metrics: Mapping[str, float], files: list[Path]) -> None:
        """Log the group's final metrics and files and close its run."""
        if self.tracker is None:
            return
        self.tracker.log_final(metrics)
        self.tracker.log_files(files)
        self.tracker.finish("FINISHED")


@contextlib.contextmanager
def track_group(kind: str | None, root: str | Path, params: Mapping[str, Any], name: str | None = None
                ) -> Iterator[GroupTracking]:
    """One tracked run around several trainings (a cross-validation's folds): their runs nest under it (MLflow).

    The run is marked failed (killed on Ctrl-C) if the block raises. Without ``kind``, it does nothing.

    Example:
        >>> from braintumor.tracking import track_group
        >>> with track_group(None, "runs/cv", {"folds": 5}) as group:
        ...     group.complete({"accuracy": 0.9}, [])                     # nothing tracked: does nothing
    """
    if kind is None:
        yield GroupTracking(None)
        return
    tracker = open_tracker(kind, root)
    tracker.start(name or Path(root).name, params_of(params), {"braintumor.kind": "cv"})
    token = _PARENT.set(tracker)
    try:
        yield GroupTracking(tracker)
        tracker.finish("FINISHED")  # (complete() has closed it already)
    except BaseException as exc:
        try:
            tracker.finish(_status(exc), f"{type(exc).__name__}: {_one_line(exc)}")
        except BrainTumorError as err:
            _log.warning("warning: %s", err)
        raise
    finally:
        _PARENT.reset(token)
