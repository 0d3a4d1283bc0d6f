"""The training engine: a small loop over phases and epochs that emits events, and the handlers that do the rest.

The loop itself (:class:`Engine`) knows nothing of files, progress bars or reports: each epoch it calls the
training step and the validation it was given, puts their numbers in a history row and tells its handlers what
happened. Each job is one :class:`Handler`, in the manner of MONAI's ``engines`` + ``handlers`` and Lightning's
``Trainer`` + callbacks. The built-in ones, in the order :func:`braintumor.training.train` runs them:

* :class:`ReduceAcrossRanks` - sums each epoch's numbers over every process (torchrun / DDP), waits for all at
  the end;
* :class:`EarlyStopping` - tracks the best epoch (lowest validation loss), stops when it no longer improves;
* :class:`Checkpoints` - ``best.pt`` and ``last.pt`` (atomic; all a resume needs after ``kill -9``), restored on
  a resume;
* :class:`WeightAveraging` - the average of the last epochs' weights (SWA), made the model kept;
* :class:`HistoryWriter` - ``history.csv``, one row per epoch;
* :class:`ConsoleLog` - a progress bar during each epoch, one line per epoch

(plus ``TrackingHandler`` of :mod:`braintumor.tracking` with ``track=``, and any handler given to ``train``).
The end of a run (final evaluation, calibration, input check, metrics, report, model card) is the *final stage*
that :mod:`braintumor.training` gives the engine (``final=``).

Events, in order (``state`` is the one :class:`TrainState` of the run)::

    fit_start                once, before the first epoch (after a resume: its saved state is loaded)
      phase_start            each phase (frozen warm-up, fine-tuning), before its first epoch; the optimizer is made
        epoch_start          each epoch, before its training steps
        train_epoch_end      each epoch, after its training steps, before validation (its weights are final)
        epoch_end            each epoch, after validation: ``state.history[-1]`` is its row
      phase_end              each phase, after its last epoch (or a stop)
    fit_end                  once, after the loop: the weights to keep are chosen
    run_complete             once, after the final stage (rank 0 only, like the final stage)
    exception                when anything from fit_start on raised (the exception is re-raised afterwards)

A handler subclasses :class:`Handler` and overrides the hooks it needs (``on_<event>``); hooks run in the order
the handlers were given, on every process (only ``state.is_main`` may write files). A handler stops the run by
setting ``state.stop = True`` (the loop ends after the current epoch). Example::

    class PrintLR(Handler):
        def on_epoch_end(self, state):
            print(state.epoch, state.history[-1]["lr"])

    bt.train(cfg, out="runs/demo", handlers=[PrintLR()])
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import RunError
from .rundir import atomic_write_text

EVENTS = ("fit_start", "phase_start", "epoch_start", "train_epoch_end", "epoch_end", "phase_end", "fit_end",
          "run_complete", "exception")

HISTORY_FIELDS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
#: extra columns of runs trained with tumour masks: the mask part of the training loss, validation Dice (images
#: with a lesion mask, map >= 0.5) and the mean highest tumour probability on no-tumour validation images
MAP_HISTORY_FIELDS = ["mask_loss", "val_dice", "val_negative_max"]


@dataclass
class Phase:
    """One stretch of epochs trained alike (``frozen`` warm-up, ``finetune``, or ``train`` from scratch)."""

    name: str
    epochs: int
    lr: float = 0.0
    freeze_backbone: bool = False
    freeze_bn: bool = False
    scheduler: str = "constant"
    early_stopping: bool = True


@dataclass
class Mean:
    """A mean kept as its sum and count, so that processes can add theirs up (:class:`ReduceAcrossRanks`).

    Example:
        >>> float(Mean(3.0, 4))
        0.75
    """

    total: float
    n: float

    def __float__(self) -> float:
        return self.total / max(self.n, 1)


@dataclass
class TrainState:
    """What the loop knows, shared with every handler (handlers may read everything and set ``stop``)."""

    cfg: Any                                  # TrainConfig
    run: Any                                  # RunDir
    meta: dict                                # metadata.json being written
    classes: list[str]
    is_main: bool = True                      # rank 0 (or no distributed run): the only one that writes files
    model: Any = None                         # the model (not wrapped in DistributedDataParallel)
    net: Any = None                           # what the training step runs: the model, or its DDP wrapper
    optimizer: Any = None                     # of the current phase (made at its start)
    scheduler: Any = None
    console: Any = None                       # something with .print(...) (and .progress(...)); None: quiet
    phases: list = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    epoch: int = 0                            # epochs done, over all phases
    phase: Any = None                         # the current Phase
    phase_index: int = 0
    epoch_in_phase: int = 0                   # epochs done in the current phase (> 0 at phase_start: resumed)
    best: dict = field(default_factory=lambda: {"val_loss": float("inf"), "val_accuracy": 0.0, "epoch": 0})
    improved: bool = False                    # this epoch's validation loss is the phase's best so far
    bad_epochs: int = 0                       # epochs without improvement that count for early stopping
    stop: bool = False                        # a handler asks the loop to stop after this epoch
    stop_reason: str = ""                     # said on the console when the phase ends
    swa: dict | None = None                   # the running weight average ({"state", "epochs"}), or None
    sums: dict = field(default_factory=dict)  # this epoch's Means of this process (before ReduceAcrossRanks)
    progress: Any = None                      # the running epoch's progress bar (.advance(n, info)), or None
    metrics: dict = field(default_factory=dict)  # final metrics (with "ci"), set before run_complete
    evaluation: Any = None                    # the final EvaluationResult, set before run_complete
    extra: dict = field(default_factory=dict)    # anything handlers share with each other

    def say(self, text: str, **kw) -> None:
        """One line on the console (rank 0 with a console only)."""
        if self.console is not None:
            self.console.print(text, **kw)


class Handler:
    """Base class of the engine's handlers: every hook does nothing."""

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_phase_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_train_epoch_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_phase_end(self, state: TrainState) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...
    def on_run_complete(self, state: TrainState) -> None: ...
    def on_exception(self, state: TrainState, exc: BaseException) -> None: ...


def fire(handlers: Sequence[Handler], event: str, state: TrainState, *args) -> None:
    """Call ``on_<event>`` of every handler, in order."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; one of {', '.join(EVENTS)}")
    for h in handlers:
        getattr(h, f"on_{event}")(state, *args)


# ------------------------------------------------------------------------------------------------- the loop


class Engine:
    """The loop: phases of epochs; each epoch trains, validates, adds a row to ``state.history`` and fires events.

    Args:
        phases: what to train, in order (:class:`Phase`: a name and a number of epochs, and what the steps need).
        train_epoch: ``train_epoch(state) -> dict`` trains one epoch (``state.epoch`` epochs were done before it)
            and returns the row's training columns: numbers, or :class:`Mean` for those summed over processes.
        validate: ``validate(state) -> dict`` the row's validation columns, alike.
        handlers: the handlers, in the order their hooks run.
        setup_phase: ``setup_phase(state)``, at each phase's start before ``phase_start`` (layers to train,
            ``state.optimizer``...).
        final: ``final(state)``, the final stage: after ``fit_end``, on rank 0 only, before ``run_complete``.

    Example:
        >>> class Say(Handler):
        ...     def on_epoch_end(self, state):
        ...         print(state.epoch, state.phase.name, state.history[-1]["loss"])
        >>> engine = Engine([Phase("warm-up", 1), Phase("main", 2)], handlers=[Say()],
        ...                 train_epoch=lambda s: {"loss": 1 / (s.epoch + 1)}, validate=lambda s: {})
        >>> state = engine.run(TrainState(cfg=None, run=None, meta={}, classes=[]))
        1 warm-up 1.0
        2 main 0.5
        3 main 0.3333333333333333
    """

    def __init__(self, phases: Sequence[Phase], train_epoch: Callable[[TrainState], dict],
                 validate: Callable[[TrainState], dict], handlers: Sequence[Handler] = (),
                 setup_phase: Callable[[TrainState], None] | None = None,
                 final: Callable[[TrainState], None] | None = None):
        self.phases, self.handlers = list(phases), list(handlers)
        self.train_epoch, self.validate, self.setup_phase, self.final = train_epoch, validate, setup_phase, final

    def run(self, state: TrainState) -> TrainState:
        """Fit (resuming where ``state`` says, once ``fit_start`` restored it), then the final stage."""
        state.phases = self.phases
        try:
            fire(self.handlers, "fit_start", state)
            state.epoch = len(state.history)
            while state.phase_index < len(state.phases) and not state.stop:
                self._phase(state)
            fire(self.handlers, "fit_end", state)
            if state.is_main:
                if self.final is not None:
                    self.final(state)
                fire(self.handlers, "run_complete", state)
        except BaseException as exc:
            for h in self.handlers:  # every handler hears of it; a failing hook does not hide the exception
                try:
                    h.on_exception(state, exc)
                except Exception as err:
                    warnings.warn(f"{type(h).__name__}.on_exception failed: {err!r}", stacklevel=2)
            raise
        return state

    def _phase(self, state: TrainState) -> None:
        state.phase = phase = state.phases[state.phase_index]
        if self.setup_phase is not None:
            self.setup_phase(state)
        fire(self.handlers, "phase_start", state)
        while state.epoch_in_phase < phase.epochs and not state.stop:
            self._epoch(state)
        fire(self.handlers, "phase_end", state)
        if not state.stop:
            state.phase_index += 1
            state.epoch_in_phase = 0

    def _epoch(self, state: TrainState) -> None:
        t0 = time.time()
        fire(self.handlers, "epoch_start", state)
        train = self.train_epoch(state)
        state.epoch += 1
        state.epoch_in_phase += 1
        fire(self.handlers, "train_epoch_end", state)
        columns = {**train, **self.validate(state)}
        state.sums = {k: v for k, v in columns.items() if isinstance(v, Mean)}
        row = {"epoch": state.epoch, "phase": state.phase.name}
        row.update({k: float(v) if isinstance(v, Mean) else v for k, v in columns.items()})
        row["seconds"] = time.time() - t0
        state.history.append(row)
        fire(self.handlers, "epoch_end", state)


# ------------------------------------------------------------------------------------------------- handlers


class ReduceAcrossRanks(Handler):
    """Multi-process runs (torchrun): each epoch's :class:`Mean` columns summed over every process, so that every
    process sees (and decides on) the same numbers; at the fit's end every process waits for the others.

    Args:
        ctx: the :class:`~braintumor.distributed.DistContext` of this process (a single process: nothing to do).
    """

    def __init__(self, ctx):
        self.ctx = ctx

    def on_epoch_end(self, state: TrainState) -> None:
        if not self.ctx.active or not state.sums:
            return
        keys = list(state.sums)
        summed = self.ctx.all_reduce_sum([state.sums[k].total for k in keys] + [state.sums[k].n for k in keys])
        state.sums = {k: Mean(summed[i], summed[len(keys) + i]) for i, k in enumerate(keys)}
        state.history[-1].update({k: float(m) for k, m in state.sums.items()})

    def on_fit_end(self, state: TrainState) -> None:
        self.ctx.barrier()


def counts_for_patience(phase: Phase, epoch_in_phase: int) -> bool:
    """Whether an epoch without improvement counts towards early stopping.

    A one-cycle schedule only anneals in its second half; stopping before that keeps a model trained at a high
    learning rate (measured on Navoneel's set: 4 of 5 cross-validation folds stopped half-way through fine-tuning
    with their best checkpoint still from the frozen phase). So in a one-cycle phase patience counts from the
    half-way point on.
    """
    return phase.scheduler != "onecycle" or epoch_in_phase + 1 > phase.epochs // 2


class EarlyStopping(Handler):
    """The best epoch of the phase (lowest validation loss: ``state.best``, ``state.improved``), and a stop once
    ``patience`` counted epochs (:func:`counts_for_patience`) brought no improvement, in a phase with
    ``early_stopping`` (never at a phase's last epoch: it ends anyway). A new phase starts a new best (the
    checkpoint kept is the best of the last phase: fine-tuning, not its warm-up).

    Args:
        patience: epochs without improvement before stopping (0: never stop early).
    """

    def __init__(self, patience: int):
        self.patience = patience

    def on_phase_start(self, state: TrainState) -> None:
        if state.epoch_in_phase > 0:  # resumed inside the phase: its counts come from the checkpoint
            return
        state.bad_epochs = 0
        if state.phase_index > 0:
            state.best = {"val_loss": float("inf"), "val_accuracy": 0.0, "epoch": state.best["epoch"]}

    def on_epoch_end(self, state: TrainState) -> None:
        row, phase, e = state.history[-1], state.phase, state.epoch_in_phase - 1
        state.improved = row["val_loss"] < state.best["val_loss"] - 1e-6
        if state.improved:
            state.best = {"val_loss": row["val_loss"], "val_accuracy": row["val_accuracy"], "epoch": state.epoch}
            state.bad_epochs = 0
        elif counts_for_patience(phase, e):
            state.bad_epochs += 1
        last_in_phase = e + 1 == phase.epochs
        if (phase.early_stopping and self.patience > 0 and state.bad_epochs >= self.patience
                and not last_in_phase):
            state.stop = True
            state.stop_reason = f"early stopping: no validation-loss improvement for {self.patience} epochs"


def best_checkpoint(model, epoch: int, val_loss: float, val_accuracy: float, cfg, classes: list[str],
                    **extra) -> dict:
    """What ``checkpoints/best.pt`` holds: the weights kept and what they scored on validation."""
    return {"model": model.state_dict(), "epoch": epoch, "val_loss": val_loss, "val_accuracy": val_accuracy,
            "model_name": cfg.model, "classes": classes, "img_size": cfg.img_size, **extra}


class Checkpoints(Handler):
    """``checkpoints/best.pt`` each time validation loss improves and ``checkpoints/last.pt`` after every epoch,
    each written atomically by rank 0. ``last.pt`` holds everything a resume needs (weights, optimizer, scheduler,
    where the loop stands, early-stopping counts, history, the weight average), so a ``kill -9`` loses at most the
    running epoch. At the fit's end: the weights kept are those of ``best.pt`` (``metadata.json``'s ``weights``).

    Args:
        resume_from: a loaded ``last.pt`` (:meth:`~braintumor.rundir.RunDir.load_checkpoint`) to continue from: its
            state is restored at ``fit_start`` (on every process), its optimizer at the resumed phase's start.
    """

    def __init__(self, resume_from: dict | None = None):
        self.resume_from = resume_from
        self._optimizer_state = resume_from
        self._saved_stop = False

    def on_fit_start(self, state: TrainState) -> None:
        ck = self.resume_from
        if ck is None:
            return
        from .display import markup

        state.model.load_state_dict(ck["model"])
        state.history, state.best, state.swa = ck["history"], ck["best"], ck.get("swa")
        state.phase_index, state.epoch_in_phase, state.bad_epochs = ck["phase"], ck["epoch_in_phase"], ck["bad_epochs"]
        if ck.get("stopped"):
            state.phase_index, state.epoch_in_phase = len(state.phases), 0
        state.say(f"resuming {markup(state.run.root)} after epoch {len(state.history)}", highlight=False)

    def on_phase_start(self, state: TrainState) -> None:
        ck, self._optimizer_state = self._optimizer_state, None  # only the phase the run stopped in
        if ck is not None and state.epoch_in_phase > 0:
            state.optimizer.load_state_dict(ck["optimizer"])
            state.scheduler.load_state_dict(ck["scheduler"])

    def on_epoch_end(self, state: TrainState) -> None:
        if not state.is_main:
            return
        if state.improved:
            row = state.history[-1]
            state.run.save_checkpoint(state.run.best, best_checkpoint(state.model, state.epoch, row["val_loss"],
                                                                      row["val_accuracy"], state.cfg, state.classes))
        self._save_last(state)

    def on_phase_end(self, state: TrainState) -> None:
        if state.is_main and state.stop and not self._saved_stop and state.history:
            self._save_last(state)  # a handler after this one stopped the run: a resume must not go on

    def on_fit_end(self, state: TrainState) -> None:
        if not state.is_main:
            return
        if not state.run.best.is_file():
            raise RunError(f"{state.run.root}: no epoch was trained (epochs=0?)")
        state.meta["best_epoch"] = state.best["epoch"]
        state.meta["weights"] = {"kind": "lowest validation loss", "epochs": [state.best["epoch"]]}

    def _save_last(self, state: TrainState) -> None:
        last_in_phase = state.epoch_in_phase == state.phase.epochs
        state.run.save_checkpoint(state.run.last, {
            "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "phase": state.phase_index + 1 if last_in_phase else state.phase_index,
            "epoch_in_phase": 0 if last_in_phase else state.epoch_in_phase,
            "bad_epochs": state.bad_epochs, "history": state.history, "best": state.best, "stopped": state.stop,
            "swa": state.swa,
        })
        self._saved_stop = state.stop


def averages_weights(cfg, phases: list[Phase], pi: int, epoch_in_phase: int) -> bool:
    """Whether this epoch's weights join the average (``cfg.swa``): the second half of a last phase with frozen BN.

    With BatchNorm statistics frozen, averaged weights need no statistics pass; from-scratch training keeps the
    epoch with the lowest validation loss.
    """
    phase = phases[pi]
    return bool(cfg.swa) and pi == len(phases) - 1 and phase.freeze_bn and epoch_in_phase >= phase.epochs // 2


def add_to_average(swa: dict | None, state_dict: dict, epoch: int) -> dict:
    """Running mean of a model's floating-point weights (``{"state", "epochs"}``); other buffers: the latest."""
    sd = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
    if not swa or not swa.get("epochs"):
        return {"state": {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, "epochs": [epoch]}
    n = len(swa["epochs"]) + 1
    state = swa["state"]
    for k, v in sd.items():
        if v.is_floating_point():
            state[k] += (v.float() - state[k]) / n
        else:
            state[k] = v
    return {"state": state, "epochs": [*swa["epochs"], epoch]}


def averaged_state(swa: dict, like: dict) -> dict:
    """The averaged weights in the dtypes of the state dict ``like``, ready for ``load_state_dict``."""
    return {k: v.to(like[k].dtype) for k, v in swa["state"].items()}


class WeightAveraging(Handler):
    """Stochastic weight averaging (``cfg.swa``): the weights of the epochs :func:`averages_weights` picks are
    averaged as they come (``state.swa``, saved in ``last.pt`` so that a resume keeps it); at the fit's end the
    average becomes the model kept (``best.pt``), scored again on validation. Rank 0 only. Goes after
    :class:`Checkpoints` (whose choice it replaces).

    Args:
        evaluate: ``evaluate(model) -> (val_loss, val_accuracy)`` of the averaged weights.
    """

    def __init__(self, evaluate: Callable[[Any], tuple[float, float]]):
        self.evaluate = evaluate

    def on_train_epoch_end(self, state: TrainState) -> None:
        if state.is_main and averages_weights(state.cfg, state.phases, state.phase_index, state.epoch_in_phase - 1):
            state.swa = add_to_average(state.swa, state.model.state_dict(), state.epoch)

    def on_fit_end(self, state: TrainState) -> None:
        swa = state.swa
        if not state.is_main or not swa or not swa.get("epochs"):
            return
        model = state.model
        model.load_state_dict(averaged_state(swa, model.state_dict()))
        vloss, vacc = self.evaluate(model)
        state.run.save_checkpoint(state.run.best, best_checkpoint(model, swa["epochs"][-1], vloss, vacc, state.cfg,
                                                                  state.classes, swa_epochs=swa["epochs"]))
        state.meta["best_epoch"] = swa["epochs"][-1]
        state.meta["weights"] = {"kind": "weight average (swa)", "epochs": swa["epochs"], "val_loss": vloss,
                                 "val_accuracy": vacc}
        state.say(f"kept: the average of the weights of epochs {swa['epochs'][0]}-{swa['epochs'][-1]} "
                  f"(val loss {vloss:.4f} acc {vacc:.3f})")


def write_history(path, history: list[dict]) -> None:
    """``history.csv`` (atomically): :data:`HISTORY_FIELDS`, then the tumour-map columns any row has."""
    buf = io.StringIO()
    fields = HISTORY_FIELDS + [k for k in MAP_HISTORY_FIELDS if any(k in row for row in history)]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in fields})
    atomic_write_text(path, buf.getvalue())


class HistoryWriter(Handler):
    """``history.csv`` rewritten (atomically, rank 0) after every epoch: :func:`write_history`."""

    def on_epoch_end(self, state: TrainState) -> None:
        if state.is_main:
            write_history(state.run.history, state.history)


class ConsoleLog(Handler):
    """The console: a headline at the start, a progress bar during each epoch's training steps, one line per
    epoch (``*``: a new best) and the reason of a stop.

    Args:
        console: something with ``print(text)`` and ``progress(description, total)`` (a context manager giving
            a bar with ``advance(n, info)``, or ``None``): :class:`braintumor.training` passes its console wrapper.
        headline: printed at ``fit_start`` (the model, the data, the device).
        images_per_epoch: the progress bar's total.
    """

    def __init__(self, console, headline: str = "", images_per_epoch: int = 0):
        self.console, self.headline, self.total = console, headline, images_per_epoch
        self._bar = None

    def on_fit_start(self, state: TrainState) -> None:
        if self.console is not None and self.headline:
            self.console.print(self.headline)

    def on_epoch_start(self, state: TrainState) -> None:
        if self.console is None:
            return
        phase = state.phase
        label = f"{phase.name} {state.epoch_in_phase + 1}/{phase.epochs}"
        self._bar = self.console.progress(f"epoch {state.epoch + 1} ({label})", self.total)
        state.progress = self._bar.__enter__()

    def on_train_epoch_end(self, state: TrainState) -> None:
        self._close()
        state.progress = None

    def on_epoch_end(self, state: TrainState) -> None:
        if self.console is None:
            return
        row, phase = state.history[-1], state.phase
        label = f"{phase.name} {state.epoch_in_phase}/{phase.epochs}"
        dice = f" dice {row['val_dice']:.3f}" if row.get("val_dice") is not None else ""
        self.console.print(f"epoch {state.epoch:3d} {label:<14} loss {row['loss']:.4f} acc {row['accuracy']:.3f} | "
                           f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}{dice} | "
                           f"lr {row['lr']:.2e} | {row['seconds']:.1f}s" + (" *" if state.improved else ""))

    def on_phase_end(self, state: TrainState) -> None:
        # Said here, after every handler's epoch_end: a stop asked for by a handler given to train() is said too.
        if self.console is not None and state.stop:
            self.console.print(state.stop_reason or f"stopped after epoch {state.epoch} (a handler set state.stop)")

    def on_exception(self, state: TrainState, exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.__exit__(None, None, None)

