"""Training: data -> split -> cached preprocessing -> two-phase fine-tuning -> run folder.

Phase 1 ("frozen"): backbone frozen (and run without gradients, BatchNorm in eval mode), head trained with Adam at
``lr_frozen``. Phase 2 ("finetune"): every layer trainable, BatchNorm statistics still frozen, Adam with a
one-cycle schedule peaking at ``lr``, early stopping on validation loss; the model kept is the average of the
weights of its second half (``swa``). Models without pretrained weights train in one phase ("train") with
BatchNorm active and keep the epoch with the lowest validation loss.

The loop is :class:`~braintumor.engine.Engine`: this module gives it the training step (:func:`run_epoch`), the
validation and the final stage (:func:`final_stage`: calibration, input check, metrics, report, model card); early
stopping, checkpoints, weight averaging, the history and the console are its handlers (:mod:`braintumor.engine`),
and ``train(..., handlers=[...])`` adds yours.

After every epoch ``history.csv`` and ``checkpoints/last.pt`` are written (atomically), so a kill loses at most
the current epoch and :func:`train` with ``resume=True`` continues where it stopped, with the same numbers as an
uninterrupted run (every epoch's shuffling, augmentation and dropout are seeded from ``(seed, epoch)``).

Nothing is lost and nothing is half-made: what can be checked without reading an image (the options, ``--out``,
``init_from``, ``exclude_copies_of``...) is checked first and the class folders before any image is read
(:func:`check_options`, :func:`check_classes`); the run folder is created only once the data and the model are
ready, and a start that fails before its first epoch is saved takes back what it wrote (a resumed run is never
touched). ``metadata.json``'s ``status`` is ``running`` while training, ``finalising`` during the final stage
(calibration, input check, final evaluation, report) and ``complete`` only once all of that is written; loaders
refuse any other status, and ``resume=True`` on a finalising run does the final stage again (no epoch is rerun).

Example:
    >>> from braintumor import TrainConfig, train
    >>> result = train(TrainConfig(data_dir="data/phantoms", model="cnn", img_size=64, epochs=5),
    ...                out="runs/demo")                                          # doctest: +SKIP
    >>> result.metrics["accuracy"]                                               # doctest: +SKIP
    0.97
"""

from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .augment import Augmenter
from .config import TrainConfig
from .data.cache import load_images
from .data.discover import ImageFolder, discover, fingerprint
from .data.masks import PreparedMasks
from .data.split import train_val_split
from .display import markup, printable
from .distributed import DistContext, init_distributed, shutdown
from .engine import (  # noqa: F401  (some are imported for the modules that import them from here)
    HISTORY_FIELDS,
    MAP_HISTORY_FIELDS,
    Checkpoints,
    ConsoleLog,
    EarlyStopping,
    Engine,
    Handler,
    HistoryWriter,
    Mean,
    Phase,
    ReduceAcrossRanks,
    TrainState,
    WeightAveraging,
    add_to_average,
    averaged_state,
    averages_weights,
    best_checkpoint,
    counts_for_patience,
    write_history,
)
from .errors import DataError, RunError, UsageError
from .evaluation import EvaluationResult, report_predictions
from .inference import Predictor
from .models import build_model, get_spec
from .plots import plot_curves
from .preprocess import Preprocessor
from .report import write_report
from .rundir import RunDir, atomic_write_text
from .workers import available_cpus


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, validation metrics of the best checkpoint, history.

    In Jupyter it displays as a table of the validation metrics, the confusion matrix and the training curves.

    Example:
        >>> cfg = TrainConfig(data_dir="data/phantoms", model="cnn", img_size=64)
        >>> result = train(cfg, out="runs/demo")                                # doctest: +SKIP
        >>> result.metrics["accuracy"], result.run_dir                          # doctest: +SKIP
        (0.97, PosixPath('runs/demo'))
        >>> result.predictor().predict_paths(["scan.png"])[0].label             # doctest: +SKIP
        'yes'
    """

    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    evaluation: EvaluationResult | None = None

    def __repr__(self) -> str:
        keys = ("accuracy", "f1", "roc_auc")
        items = ", ".join(f"{k}={self.metrics[k]:.3f}" for k in keys if self.metrics.get(k) is not None)
        return f"TrainResult(run_dir={str(self.run_dir)!r}, {items})"

    def _repr_html_(self) -> str:
        from .display import esc, file_html, metrics_html

        info = [("run folder", esc(self.run_dir)), ("model", esc(self.metadata.get("model", "?")))]
        return (metrics_html(self.metrics, "TrainResult (validation, best checkpoint)", info)
                + file_html(RunDir(self.run_dir).curves, width=640))

    def predictor(self) -> Predictor:
        """The trained model as a :class:`Predictor` (loaded from the run folder's best checkpoint)."""
        return Predictor.from_run(self.run_dir)


# --------------------------------------------------------------------------------------------------- helpers


def plan_phases(cfg: TrainConfig, pretrained: bool) -> list[Phase]:
    lr = cfg.resolved_lr(pretrained)
    if not pretrained:
        return [Phase("train", cfg.epochs, lr, False, False, cfg.scheduler, cfg.patience > 0)]
    phases = []
    if cfg.epochs_frozen > 0:
        phases.append(Phase("frozen", cfg.epochs_frozen, cfg.lr_frozen, True, True, "constant", False))
    if cfg.epochs > 0:
        phases.append(Phase("finetune", cfg.epochs, lr, False, True, cfg.scheduler, cfg.patience > 0))
    return phases


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is available")
    return dev


def cpu_supports_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_threads() -> int:
    """torch threads for training: every CPU this process may use (:func:`braintumor.workers.available_cpus`)."""
    return available_cpus()


def versions() -> dict:
    import monai
    import sklearn

    return {"braintumor": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def set_trainable(model: nn.Module, phase: Phase) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(not phase.freeze_backbone)
    for p in model.head.parameters():
        p.requires_grad_(True)


def set_train_mode(model: nn.Module, phase: Phase) -> None:
    model.train()
    if phase.freeze_backbone:
        model.backbone.eval()
    elif phase.freeze_bn:  # the backbone's (pretrained) statistics; a tumour-map decoder learns its own
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def make_optimizer(model: nn.Module, phase: Phase, cfg: TrainConfig, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=cfg.weight_decay)
    total = max(1, steps_per_epoch * phase.epochs)
    if phase.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=phase.lr, total_steps=total, pct_start=0.15)
    elif phase.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def class_weight_tensor(labels: np.ndarray, k: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    w = counts.sum() / (k * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


class _Console:
    """Optional rich output: a progress bar per epoch and one summary line per epoch."""

    def __init__(self, console=None):
        self.console = console

    def print(self, *args, **kw) -> None:
        if self.console is not None:
            self.console.print(*args, soft_wrap=True, **kw)

    def progress(self, description: str, total: int):
        if self.console is None:
            return nullcontext(None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=self.console, transient=True)
        return _Bar(prog, description, total)


class _Bar:
    def __init__(self, prog, description, total):
        self.prog, self.description, self.total = prog, description, total

    def __enter__(self):
        self.prog.start()
        self.task = self.prog.add_task(self.description, total=self.total, info="")
        return self

    def advance(self, n: int = 1, info: str = "") -> None:
        self.prog.update(self.task, advance=n, info=info)

    def __exit__(self, *exc):
        self.prog.stop()


# ------------------------------------------------------------------------------------------------ data setup


@dataclass
class PreparedData:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_paths: list[str]
    train_paths: list[str]
    skipped: list[tuple[Path, str]]
    classes: list[str]
    fingerprint: str
    n_groups: int | None
    excluded: list[str] = field(default_factory=list)
    #: the source of each training / validation image (several data folders: :mod:`braintumor.data.sources`)
    train_sources: list[str] = field(default_factory=list)
    val_sources: list[str] = field(default_factory=list)
    source_roots: dict[str, str] = field(default_factory=dict)
    #: tumour masks (``cfg.masks``): :class:`~braintumor.data.masks.PreparedMasks` of each side, else ``None``
    train_masks: PreparedMasks | None = None
    val_masks: PreparedMasks | None = None
    #: :class:`~braintumor.ood.ImageStats` of each decoded validation image (the input check's rules)
    val_stats: list | None = None
    #: lesion erasure (``cfg.erase_lesions``): ``{"erased": k, "not_erased": n}``; the copies end the training arrays
    erased: dict | None = None
    #: lesion pasting (``cfg.paste_lesions``): ``{"pasted": k, "not_pasted": n}``; the copies end the training arrays
    pasted: dict | None = None

    @property
    def n_made(self) -> int:
        """Training images made in the run (erased and pasted copies, at the end of the arrays), not files."""
        return (self.erased or {}).get("erased", 0) + (self.pasted or {}).get("pasted", 0)


def _skip_reporter(out: _Console):
    def report(path: Path, reason: str) -> None:
        out.print(f"[yellow]skipped[/yellow] {markup(path)}: {markup(reason)}", highlight=False)
    return report


def group_folder(ds: ImageFolder, cfg: TrainConfig) -> ImageFolder:
    """Attach patient groups (``cfg.group_by``) and duplicate groups from the audit (across every source at once:
    a copy in two sources is one group); the two are merged (:func:`~braintumor.data.groups.merge_groups`)."""
    patients = None
    if cfg.group_by:
        from .data.groups import merge_groups, patient_groups

        found = patient_groups(cfg.group_by, [r.path for r in ds.records])
        patients = merge_groups([r.group for r in ds.records], found)
    if not cfg.group_duplicates or all(r.group is not None for r in ds.records):
        return ds.with_groups(patients) if patients is not None else ds
    try:
        from .data.audit import duplicate_groups
    except ImportError:
        return ds.with_groups(patients) if patients is not None else ds
    dups = ds.group_duplicates(duplicate_groups)
    if patients is None:
        return dups
    from .data.groups import merge_groups

    return dups.with_groups(merge_groups(patients, [r.group for r in dups.records]))


def load_folder_of(cfg: TrainConfig) -> ImageFolder:
    """The labelled records a config names: its data folder(s), mapped onto ``cfg.classes`` when given."""
    from .data.sources import discover_sources

    return discover_sources(cfg.data_dirs, cfg.classes, slices=cfg.slices)


def split_strata(ds: ImageFolder, n_splits: int = 2) -> list[int]:
    """What splits stratify on: (source, class) when every such stratum is large enough, else the class."""
    strata = ds.strata()
    if not len(strata):
        return strata
    counts = np.bincount(strata)
    return strata if counts[counts > 0].min() >= n_splits else ds.labels


def _fingerprint_root(cfg: TrainConfig) -> Path | None:
    dirs = cfg.data_dirs
    if len(dirs) == 1:
        return Path(dirs[0])
    try:
        return Path(os.path.commonpath(dirs))
    except ValueError:  # absolute and relative folders mixed
        return None


def prepare_data(cfg: TrainConfig, pre: Preprocessor, out: _Console, folder: ImageFolder | None = None,
                 run_root: Path | None = None) -> PreparedData:
    """Discover, split and read the data; ``run_root`` (the run folder to be) is checked against the data folders
    once they are found (:func:`check_out`), before any image is read."""
    ds = folder if folder is not None else load_folder_of(cfg)
    check_classes(cfg, ds)
    if run_root is not None:
        check_out(run_root, cfg, inside_data=True)
    excluded: list[str] = []
    if cfg.exclude_copies_of:
        ds, excluded = exclude_copies(ds, cfg.exclude_copies_of, out)
    if cfg.val_dir:
        if cfg.classes:
            from .data.sources import discover_sources

            val_ds = discover_sources([cfg.val_dir], cfg.classes, slices=cfg.slices)
        else:
            val_ds = discover(cfg.val_dir, classes=ds.classes, slices=cfg.slices)
        train_ds = ds
        fp_paths = ds.paths + val_ds.paths
    else:
        ds = group_folder(ds, cfg)
        n_splits = max(2, int(round(1.0 / cfg.val_fraction)))
        tr, va = train_val_split(split_strata(ds, n_splits), ds.groups, cfg.val_fraction, cfg.seed)
        train_ds, val_ds = ds.subset(tr), ds.subset(va)
        fp_paths = ds.paths
    report = _skip_reporter(out)
    total = len(train_ds) + len(val_ds)
    with out.progress("reading images", total) as bar:
        tick = (lambda: bar.advance()) if bar is not None else None
        tr_l = load_images(train_ds.paths, pre, strict=cfg.strict, on_skip=report, progress=tick)
        va_l = load_images(val_ds.paths, pre, strict=cfg.strict, on_skip=report, progress=tick,
                           stats=cfg.ood_check)
    tr_y = np.asarray(train_ds.labels)[tr_l.kept]
    va_y = np.asarray(val_ds.labels)[va_l.kept]
    for name, y in (("training", tr_y), ("validation", va_y)):
        missing = [c for i, c in enumerate(ds.classes) if not (y == i).any()]
        if len(y) == 0 or (name == "training" and missing):
            raise DataError(f"no readable {name} images for class(es) {missing or ds.classes}")
    groups = ds.groups if not cfg.val_dir else None
    tr_paths, va_paths = train_ds.paths, val_ds.paths
    tr_src, va_src = train_ds.sources, val_ds.sources
    roots = dict(ds.source_roots)
    roots.update(val_ds.source_roots)
    data = PreparedData(
        tr_l.images, tr_y, va_l.images, va_y, [str(va_paths[i]) for i in va_l.kept],
        [str(tr_paths[i]) for i in tr_l.kept], tr_l.skipped + va_l.skipped, ds.classes,
        fingerprint(fp_paths, _fingerprint_root(cfg)), len(set(groups)) if groups else None, excluded,
        [tr_src[i] for i in tr_l.kept], [va_src[i] for i in va_l.kept], roots,
    )
    data.val_stats = va_l.stats
    if cfg.masks:
        attach_masks(data, cfg.masks, pre, out)
        if cfg.erase_lesions:
            add_erased(data, out)
        if cfg.paste_lesions:
            add_pasted(data, out, cfg.seed, cfg.paste_per_normal, cfg.paste_bright)
    return data


def add_erased(data: PreparedData, out: _Console) -> None:
    """Append an erased copy (:mod:`braintumor.data.erase`) of every training image with a lesion mask, labelled
    with the no-tumour class, with an empty mask, from the source ``<source> (lesion erased)``; the copies are the
    last ``data.erased["erased"]`` training images and are not written to ``split.csv``."""
    from .data.erase import erased_copies
    from .data.masks import PreparedMasks, negative_classes

    tm = data.train_masks
    neg = data.classes.index(negative_classes(data.classes)[0])
    which = np.flatnonzero(tm.has_mask & (data.train_y != neg))
    made = erased_copies(data.train_x, tm.masks, which)
    k = len(made.index)
    data.erased = made.summary()
    out.print(f"lesions erased: {k} no-tumour copies of the {len(which)} masked tumour images ({made.skipped} "
              "left out: mid-line lesion or mirror outside the head)")
    if not k:
        return
    data.train_x = np.concatenate([data.train_x, made.images])
    data.train_y = np.concatenate([data.train_y, np.full(k, neg, data.train_y.dtype)])
    data.train_paths = data.train_paths + [f"{data.train_paths[i]}#lesion-erased" for i in made.index]
    data.train_sources = data.train_sources + [f"{data.train_sources[i]} (lesion erased)" for i in made.index]
    s = tm.masks.shape[1]
    data.train_masks = PreparedMasks(np.concatenate([tm.masks, np.zeros((k, s, s), tm.masks.dtype)]),
                                     np.concatenate([tm.has_mask, np.ones(k, bool)]), tm.problems, tm.n_masked,
                                     tm.n_negative + k)


def add_pasted(data: PreparedData, out: _Console, seed: int, per_normal: int = 0, bright: float = 0.0) -> None:
    """Append, for every training image with a lesion mask, a no-tumour training image with that lesion pasted in
    (:mod:`braintumor.data.paste`), labelled with the lesion's class, the pasted outline as its mask, from the
    source ``<recipient's source> (lesion pasted)``; donors and recipients are training images read from files (not
    copies made in the run); the copies end the training arrays and are not in ``split.csv``. ``per_normal`` > 0:
    at most that many lesions per no-tumour image; ``bright``: the share pasted bright."""
    from .data.masks import PreparedMasks, negative_classes
    from .data.paste import pasted_copies

    tm = data.train_masks
    n = len(data.train_y) - data.n_made  # the files come first, then the copies made in the run
    neg = data.classes.index(negative_classes(data.classes)[0])
    lesions = tm.has_mask[:n] & (data.train_y[:n] != neg)
    donors = np.flatnonzero(lesions & (tm.masks[:n].reshape(n, -1).max(axis=1) > 0))
    recipients = np.flatnonzero(data.train_y[:n] == neg)
    made = pasted_copies(data.train_x, tm.masks, donors, recipients, seed=seed, per_recipient=per_normal,
                         bright=bright)
    k = len(made.donor)
    data.pasted = made.summary()
    why = "the lesion cannot be lifted or leaves the head" + (
        f", or every no-tumour image has its {per_normal}" if per_normal else "")
    out.print(f"lesions pasted: {k} tumour images made from {len(recipients)} no-tumour images and the lesions of "
              f"{len(donors)} masked tumour images ({made.skipped} left out: {why})"
              + (f"; {made.bright} pasted bright" if bright else ""))
    if not k:
        return
    data.train_x = np.concatenate([data.train_x, made.images])
    data.train_y = np.concatenate([data.train_y, data.train_y[made.donor]])
    data.train_paths = data.train_paths + [f"{data.train_paths[j]}#lesion-pasted" for j in made.recipient]
    data.train_sources = data.train_sources + [f"{data.train_sources[j]} (lesion pasted)" for j in made.recipient]
    data.train_masks = PreparedMasks(np.concatenate([tm.masks, made.masks.astype(tm.masks.dtype)]),
                                     np.concatenate([tm.has_mask, np.ones(k, bool)]), tm.problems,
                                     tm.n_masked + k, tm.n_negative)


def check_classes(cfg: TrainConfig, ds: ImageFolder) -> None:
    """What the classes found must allow, checked before any image is read.

    Raises:
        DataError: a class name that is not UTF-8 text (or holds control characters): it goes into metadata.json and
            ONNX exports, and evaluation folders are matched by it.
        UsageError: ``erase_lesions`` or ``paste_lesions`` without exactly one no-tumour class;
            ``target_sensitivity`` for more than two classes.
    """
    for c in ds.classes:
        if printable(c) != c:
            raise DataError(f"{printable(Path(ds.root) / c)}: a class folder name must be UTF-8 text without control "
                            f"characters (it is stored in metadata.json and ONNX exports); rename the folder")
    from .data.masks import negative_classes

    for flag, on, what in (("--erase-lesions", cfg.erase_lesions, "for the erased images"),
                           ("--paste-lesions", cfg.paste_lesions, "to paste lesions into")):
        if on and len(negative_classes(ds.classes)) != 1:
            raise UsageError(f"{flag} needs exactly one no-tumour class (notumor, no, no_tumour, normal...) "
                             f"{what}; the classes are {', '.join(ds.classes)}")
    if cfg.target_sensitivity is not None and len(ds.classes) != 2:
        raise UsageError(f"--target-sensitivity needs a binary (two-class) problem; this data has "
                         f"{len(ds.classes)} classes ({', '.join(ds.classes)})")


def check_prepared(cfg: TrainConfig, data: PreparedData) -> None:
    """What the read images must allow, checked before training.

    Raises:
        DataError: ``target_sensitivity`` with no image of the positive class in the validation split.
    """
    from .data.discover import positive_class

    if cfg.target_sensitivity is not None:
        pos = positive_class(data.classes)
        if pos is not None and not (data.val_y == data.classes.index(pos)).any():
            raise DataError(f"--target-sensitivity {cfg.target_sensitivity}: no '{pos}' image in the validation "
                            "split to choose the threshold on; give more data or a larger --val-fraction")


def attach_masks(data: PreparedData, masks_dir: str, pre: Preprocessor, out: _Console) -> None:
    """Read the tumour masks of both sides (:func:`~braintumor.data.masks.prepare_masks`); say what was left out.

    Raises:
        DataError: no training image of a tumour class has a usable mask.
    """
    from .data.masks import prepare_masks

    data.train_masks = prepare_masks(data.train_paths, data.train_y, data.classes, masks_dir, pre)
    data.val_masks = prepare_masks(data.val_paths, data.val_y, data.classes, masks_dir, pre)
    problems = data.train_masks.problems + data.val_masks.problems
    for path, reason in problems[:5]:
        out.print(f"[yellow]mask left out[/yellow] {markup(path)}: {markup(reason)}", highlight=False)
    if len(problems) > 5:
        out.print(f"[yellow]... {len(problems) - 5} more masks left out[/yellow] (listed in metadata.json)")
    if data.train_masks.n_masked == 0:
        raise DataError(f"{masks_dir}: no usable tumour mask for any training image "
                        f"({len(problems)} left out); the tumour map cannot be trained")
    tm, vm = data.train_masks, data.val_masks
    out.print(f"tumour masks: {tm.n_masked} train / {vm.n_masked} val images with a lesion mask, "
              f"{tm.n_negative + vm.n_negative} no-tumour images (empty target), "
              f"{int((~tm.has_mask).sum() + (~vm.has_mask).sum())} without a mask (classifier only)")


def exclude_copies(ds: ImageFolder, other: str, out: _Console) -> tuple[ImageFolder, list[str]]:
    """Drop the images of ``ds`` that have an exact or near copy in the folder ``other``.

    Images that lie inside ``other`` (it is, holds or lies in the training data) are copies of themselves: they
    are dropped without being read, and when that leaves a class empty the error comes before any image is hashed.

    Raises:
        UsageError: ``other`` is not a folder.
        DataError: a class has no image left.
    """
    from .data.audit import copies_in

    if not Path(other).is_dir():
        raise UsageError(f"{printable(other)}: no such folder (exclude_copies_of)")
    base = Path(other).resolve()

    def inside(path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(base)
        except OSError:
            return False

    def check(hits: set[int]) -> None:
        left = {r.label for i, r in enumerate(ds.records) if i not in hits}
        missing = [c for i, c in enumerate(ds.classes) if i not in left]
        if missing:
            raise DataError(f"no images of class(es) {missing} are left once the {len(hits)} with a copy in "
                            f"{printable(other)} are excluded (exclude_copies_of names the training data itself?)")

    own = {i for i, r in enumerate(ds.records) if inside(r.path)}
    check(own)
    plain = [i for i, r in enumerate(ds.records) if r.frame is None and i not in own]
    hits = own | ({plain[k] for k in copies_in([ds.records[i].path for i in plain], other)} if plain else set())
    check(hits)
    dropped = [str(ds.records[i].ref) for i in sorted(hits)]
    out.print(f"excluded {len(dropped)} image(s) with a copy in {markup(other)}", highlight=False)
    return ds.subset(sorted(set(range(len(ds.records))) - hits)), dropped


def calibrate(predictor: Predictor, data: PreparedData, cfg: TrainConfig) -> dict:
    """Temperature and decision threshold fitted on the validation split (``{}`` until calibration exists).

    Returns metadata entries (``calibration``, ``threshold``...) that :class:`Predictor` applies at prediction time.
    """
    try:
        from .calibration import calibrate_run
    except ImportError:
        return {}
    return calibrate_run(predictor, data.val_x, data.val_y, cfg)


def fit_check(predictor: Predictor, data: PreparedData, cfg: TrainConfig):
    """Fit the input check (:mod:`braintumor.ood`) on the training split, its threshold on the validation split,
    and write its arrays into the run folder; returns the :class:`~braintumor.ood.InputCheck`."""
    from .ood import fit_input_check

    check = fit_input_check(predictor, data.train_x, data.train_y, data.val_x, data.val_y,
                            quantile=cfg.ood_quantile, min_confidence=cfg.min_confidence, val_stats=data.val_stats)
    check.save(predictor.run_dir)
    return check


def init_source(run_dir: str) -> str:
    """How metadata names weights taken from another run: ``run:<folder> (<weights fingerprint>)``."""
    meta = RunDir(run_dir).read_metadata() if RunDir(run_dir).metadata.is_file() else {}
    fp = (meta.get("data") or {}).get("fingerprint")
    return f"run:{Path(run_dir).resolve()}" + (f" (data {fp})" if fp else "")


def load_backbone(model: nn.Module, run_dir: str, model_name: str) -> None:
    """Start ``model`` from the backbone of another run's best checkpoint (domain pretraining); the head stays new."""
    run = RunDir(run_dir)
    if not run.metadata.is_file() or not run.best.is_file():
        raise UsageError(f"{run_dir}: not a finished run folder (init_from needs metadata.json and best.pt)")
    other = run.read_metadata().get("model")
    if other != model_name:
        raise UsageError(f"{run_dir}: holds a '{other}' model, this run trains '{model_name}' (init_from)")
    state = run.load_checkpoint("best")["model"]
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(backbone)
    except RuntimeError as exc:
        raise RunError(f"{run_dir}: backbone weights do not fit ({str(exc).splitlines()[0]})") from None


# ------------------------------------------------------------------------------------------------- the loop


def _batches(idx: np.ndarray, batch_size: int, drop_last_single: bool = True) -> list[np.ndarray]:
    idx = np.asarray(idx)
    out = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    if drop_last_single and len(out) > 1 and len(out[-1]) == 1:  # BatchNorm cannot train on one sample
        out[-2] = np.concatenate([out[-2], out[-1]])
        out.pop()
    return out


def balanced_order(sources: list[str], seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """One epoch of indices drawn (with replacement) so that every source contributes equally; this rank's share.

    The epoch keeps its length (as many draws as images), so schedules and step counts do not change.

    Example:
        >>> order = balanced_order(["a"] * 90 + ["b"] * 10, seed=0, epoch=0)
        >>> len(order), 0.4 < sum(i >= 90 for i in order) / len(order) < 0.6
        (100, True)
    """
    _names, inv = np.unique(np.asarray(sources), return_inverse=True)
    w = 1.0 / np.bincount(inv)[inv]
    rng = np.random.default_rng([seed % (2**32), epoch, 1])
    drawn = rng.choice(len(sources), size=len(sources), replace=True, p=w / w.sum())
    n_local = -(-len(drawn) // world_size)
    return np.resize(drawn, n_local * world_size)[rank::world_size].tolist()


def _to_float(x_u8: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(x_u8).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def backward_step(loss: torch.Tensor, opt, scaler=None) -> None:
    """Gradients of ``loss`` and one optimiser step; with a ``GradScaler`` (fp16 on CUDA) the loss is scaled so that
    small gradients do not underflow."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()


def run_epoch(net, model, phase: Phase, data: PreparedData, pre: Preprocessor, cfg: TrainConfig, opt, sched,
              loss_fn, device, precision, augmenter: Augmenter | None, epoch: int, bar,
              ctx: DistContext) -> dict[str, Mean]:
    """One training epoch over this process's shard; returns its ``loss``, ``accuracy`` (and ``mask_loss``) as
    sums of this process (:class:`~braintumor.engine.Mean`; the engine's :class:`ReduceAcrossRanks` adds up every
    process's)."""
    set_train_mode(model, phase)
    model.frozen_backbone = phase.freeze_backbone
    torch.manual_seed(cfg.seed * 100_003 + epoch * 101 + ctx.rank)
    if augmenter is not None:
        augmenter.reseed(cfg.seed * 100_003 + epoch * 101 + ctx.rank)
    tot_loss, correct, n, tot_mask = 0.0, 0, 0, 0.0
    masks = data.train_masks if getattr(model, "decoder", None) is not None else None
    mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
    if cfg.balance_sources and len(set(data.train_sources)) > 1:
        order = balanced_order(data.train_sources, cfg.seed, epoch, ctx.rank, ctx.world_size)
    else:
        order = ctx.shard(len(data.train_y), cfg.batch_size, cfg.seed, epoch)
    for bidx in _batches(order, ctx.local_batch(cfg.batch_size)):
        x = _to_float(data.train_x[bidx], device)
        m_true = has = None
        if masks is not None:
            m_true = torch.from_numpy(masks.masks[bidx]).to(device)
            has = torch.from_numpy(masks.has_mask[bidx]).to(device)
        if augmenter is not None:
            if m_true is not None:
                x, m_true = augmenter(x, m_true)
            else:
                x = augmenter(x)
        x = pre.normalise_float(x).contiguous(memory_format=mf)
        y = torch.as_tensor(data.train_y[bidx], device=device)
        lam, perm = 1.0, None
        if cfg.mixup > 0 and len(bidx) > 1:  # mixup: a convex mixture of two images, the loss mixed alike
            lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
            perm = torch.randperm(len(bidx)).to(device)
            x = (lam * x + (1.0 - lam) * x[perm]).contiguous(memory_format=mf)
        with autocast(device, precision):
            out = net(x)
        logits = (out[0] if isinstance(out, tuple) else out).float()
        loss = loss_fn(logits, y)
        if perm is not None:
            loss = lam * loss + (1.0 - lam) * loss_fn(logits, y[perm])
        if isinstance(out, tuple):  # the tumour map (mixup: the first image's mask, weighted like its label)
            from .models.segmentation import mask_loss

            mloss = mask_loss(out[1].float(), m_true, has) * (lam if perm is not None else 1.0)
            loss = loss + cfg.mask_weight * mloss
            tot_mask += float(mloss.detach()) * len(bidx)
        backward_step(loss, opt, scaler)
        sched.step()
        tot_loss += float(loss.detach()) * len(bidx)
        correct += int((logits.argmax(1) == y).sum())
        n += len(bidx)
        if bar is not None:
            bar.advance(len(bidx) * ctx.world_size, f"loss {tot_loss / n:.4f} acc {correct / n:.3f}")
    model.frozen_backbone = False
    sums = {"loss": Mean(tot_loss, n), "accuracy": Mean(correct, n)}
    if masks is not None:
        sums["mask_loss"] = Mean(tot_mask, n)
    return sums


@torch.no_grad()
def evaluate_maps(model, x_u8: np.ndarray, masks: PreparedMasks, pre: Preprocessor, device, precision,
                  batch_size: int = 32) -> dict:
    """Validation of the tumour map: mean Dice (map >= 0.5) over images with a lesion mask, and the mean of the
    highest tumour probability over no-tumour images (``None`` where there are none)."""
    from .models.segmentation import dice_scores

    model.eval()
    idx = np.flatnonzero(masks.has_mask)
    dice, neg_max = [], []
    for bidx in _batches(idx, batch_size, drop_last_single=False):
        x = pre.normalise_float(_to_float(x_u8[bidx], device))
        with autocast(device, precision):
            _logits, m = model.forward_with_map(x)
        prob = torch.sigmoid(m.float()[:, 0])
        t = torch.from_numpy(masks.masks[bidx]).to(device)
        pos = t.flatten(1).bool().any(1)
        dice += dice_scores(prob[pos], t[pos]).tolist()
        neg_max += prob[~pos].flatten(1).amax(1).tolist()
    return {"val_dice": float(np.mean(dice)) if dice else None,
            "val_negative_max": float(np.mean(neg_max)) if neg_max else None}


def evaluate_arrays(model, x_u8: np.ndarray, y: np.ndarray, pre: Preprocessor, device, precision,
                    batch_size: int = 64, channels_last: bool = True,
                    ctx: DistContext | None = None) -> tuple[float, float]:
    """Validation loss and accuracy; each process scores its share and the sums are reduced."""
    ctx = ctx or DistContext()
    sums = validation_sums(model, x_u8, y, pre, device, precision, batch_size, channels_last, ctx)
    loss_sum, correct, n = ctx.all_reduce_sum([sums["val_loss"].total, sums["val_accuracy"].total,
                                               sums["val_loss"].n])
    return loss_sum / max(n, 1), correct / max(n, 1)


@torch.no_grad()
def validation_sums(model, x_u8: np.ndarray, y: np.ndarray, pre: Preprocessor, device, precision,
                    batch_size: int = 64, channels_last: bool = True,
                    ctx: DistContext | None = None) -> dict[str, Mean]:
    """``val_loss`` and ``val_accuracy`` over this process's share of the images, as sums
    (:class:`~braintumor.engine.Mean`)."""
    ctx = ctx or DistContext()
    model.eval()
    mf = torch.channels_last if channels_last else torch.contiguous_format
    mine = np.arange(ctx.rank, len(y), ctx.world_size)
    loss_sum, correct = 0.0, 0
    for bidx in _batches(mine, batch_size, drop_last_single=False):
        x = pre.normalise_float(_to_float(x_u8[bidx], device)).contiguous(memory_format=mf)
        with autocast(device, precision):
            out = model(x)
            logits = (out[0] if isinstance(out, tuple) else out).float()
        yt = torch.as_tensor(y[bidx], device=device)
        loss_sum += float(nn.functional.cross_entropy(logits, yt, reduction="sum"))
        correct += int((logits.argmax(1) == yt).sum())
    return {"val_loss": Mean(loss_sum, len(mine)), "val_accuracy": Mean(correct, len(mine))}


def _start_metadata(cfg: TrainConfig, spec, pretrained: bool, pre: Preprocessor, data: PreparedData, device,
                    precision: str, ctx: DistContext) -> dict:
    from .data.discover import positive_class

    classes = data.classes
    return {
        "model": cfg.model, "pretrained": bool(pretrained),
        "pretrained_source": (init_source(cfg.init_from) if cfg.init_from
                              else spec.pretrained_source if pretrained else None),
        "classes": classes, "num_classes": len(classes), "positive_class": positive_class(classes),
        "img_size": cfg.img_size, "preprocessing": pre.to_dict(),
        "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
        "gradcam_target_layer": spec.target_layer, "threshold": None, "calibration": {"temperature": 1.0},
        "data": {"data_dir": cfg.data_dir if isinstance(cfg.data_dir, list) else str(cfg.data_dir),
                 "val_dir": cfg.val_dir, "fingerprint": data.fingerprint,
                 "class_map": cfg.classes, "sources": _source_summary(data),
                 "n_train": int(len(data.train_y)), "n_val": int(len(data.val_y)),
                 "train_counts": {c: int((data.train_y == i).sum()) for i, c in enumerate(classes)},
                 "val_counts": {c: int((data.val_y == i).sum()) for i, c in enumerate(classes)},
                 "groups": data.n_groups, "slices": cfg.slices,
                 "excluded_copies": ({"of": cfg.exclude_copies_of, "files": data.excluded}
                                     if cfg.exclude_copies_of else None),
                 "skipped": [{"path": str(p), "reason": r} for p, r in data.skipped]},
        "dicom_window": os.environ.get("BRAINTUMOR_DICOM_WINDOW") or "auto",  # DICOM VOI choice (data.dicom)
        "seed": cfg.seed, "device": str(device), "precision": precision, "world_size": ctx.world_size,
        "versions": versions(), "status": "running",
    }


def _source_summary(data: PreparedData) -> dict:
    """Per source: its folder and its training / validation images per class."""
    out = {}
    for name in dict.fromkeys([*data.source_roots, *data.train_sources, *data.val_sources]):
        entry: dict = {"path": data.source_roots.get(name)}
        for subset, ys, srcs in (("train", data.train_y, data.train_sources), ("val", data.val_y, data.val_sources)):
            y = ys[np.asarray(srcs) == name]
            entry[f"n_{subset}"] = int(len(y))
            entry[f"{subset}_counts"] = {c: int((y == i).sum()) for i, c in enumerate(data.classes)}
        out[name] = entry
    return out


def _write_split(run: RunDir, data: PreparedData) -> None:
    """Which file went where (and from which source), for audits and for reproducing evaluations.

    File names that are not UTF-8 are written :func:`~braintumor.display.printable`, their exact bytes in a last
    column ``path_bytes`` (read back with :func:`~braintumor.display.name_from_row`).
    """
    from .display import csv_text

    c = data.classes
    n = len(data.train_paths) - data.n_made  # erased and pasted copies: made in the run, not files
    rows = [[p, c[y], "train", s] for p, y, s in zip(data.train_paths[:n], data.train_y[:n], data.train_sources[:n],
                                                     strict=True)]
    rows += [[p, c[y], "val", s] for p, y, s in zip(data.val_paths, data.val_y, data.val_sources, strict=True)]
    atomic_write_text(run.root / "split.csv", csv_text(["path", "label", "subset", "source"], rows))


# ------------------------------------------------------------------------------------------------ entry point


def train(config: TrainConfig | dict | str | Path, out: str | Path | None = None, *, resume: bool = False,
          console=None, folder: ImageFolder | None = None, handlers: Sequence[Handler] = ()) -> TrainResult:
    """Train a classifier and write a complete run folder.

    Args:
        config: a :class:`TrainConfig`, a dict of its fields, or a YAML file. Ignored with ``resume=True``
            (the run folder's own ``config.yaml`` is used).
        out: the run folder (default: ``runs/<time>-<data>-<model>``).
        resume: continue the run in ``out`` from ``checkpoints/last.pt``.
        console: a ``rich.console.Console`` for progress bars and per-epoch lines (``None``: quiet).
        folder: train on these records instead of discovering ``config.data_dir`` (cross-validation passes the
            training folds here; the train/validation split then happens inside them as usual).
        handlers: your own :class:`~braintumor.engine.Handler` objects, run after the built-in ones on every
            process (see :mod:`braintumor.engine`; only ``state.is_main`` should write files).

    Returns:
        A :class:`TrainResult`: the run folder, the validation metrics of the best checkpoint, the history.

    Raises:
        DataError: unusable data set (no images, empty class folder, single class).
        UsageError: bad configuration.

    Example:
        >>> from braintumor import TrainConfig, train
        >>> cfg = TrainConfig(data_dir="data/phantoms", img_size=96, epochs_frozen=2, epochs=2)
        >>> result = train(cfg, out="runs/demo")                    # doctest: +SKIP
        >>> round(result.metrics["roc_auc"], 3)                      # doctest: +SKIP
        0.991
        >>> train(None, out="runs/demo", resume=True)              # doctest: +SKIP

        Your own handler (here: stop once validation accuracy reaches 0.95)::

            from braintumor.engine import Handler

            class GoodEnough(Handler):
                def on_epoch_end(self, state):
                    state.stop = state.history[-1]["val_accuracy"] >= 0.95

            train(cfg, out="runs/demo2", handlers=[GoodEnough()])
    """
    t_start = time.time()
    # Every check that needs no image comes first: a run that can only fail stops before any work.
    cfg, run = _resolve_run(config, out, resume)
    spec = get_spec(cfg.model)
    pretrained = spec.pretrained_default if cfg.pretrained is None else cfg.pretrained
    if cfg.init_from:
        pretrained = True  # a run's weights: fine-tune in two phases like ImageNet weights
    check_options(cfg, pretrained, run, resume)
    device = resolve_device(cfg.device)
    ctx = init_distributed(device.type)
    try:
        if ctx.active and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        # Every process must write into the same folder: rank 0 picks it.
        run = RunDir(ctx.broadcast(str(run.root)))
        guard = _RunGuard(run.root, resume) if ctx.is_main else None
        try:
            return _train(cfg, run, resume, spec, pretrained, device, ctx,
                          _Console(console if ctx.is_main else None), folder, t_start, tuple(handlers))
        except BaseException:
            if guard is not None:
                guard.clean_up()
            raise
    finally:
        shutdown(ctx)


def _resolve_run(config, out, resume: bool) -> tuple[TrainConfig, RunDir]:
    if resume:
        if out is None:
            raise UsageError("--resume needs the run folder to continue")
        run = RunDir(out)
        if not run.config.is_file():
            raise RunError(f"{run.root}: not a run folder (no config.yaml) - nothing to resume")
        if run.metadata.is_file():  # a damaged metadata.json: said now, not after the data is read
            run.read_metadata()
        return TrainConfig.load(run.config), run
    cfg = (config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
           if isinstance(config, dict) else TrainConfig.load(config))
    if not cfg.data_dir:
        raise UsageError("no data folder given")
    run = RunDir(out or RunDir.default_for(cfg.data_dirs, cfg.model))
    check_out(run.root, cfg)
    if run.last.exists() or run.metrics.exists():
        raise UsageError(f"{run.root} already holds a run; use --resume to continue it or pick another --out")
    return cfg, run


def check_out(root: Path, cfg: TrainConfig, inside_data: bool = False) -> None:
    """Refuse a run folder (``--out``) that can only fail or would spoil data (see
    :func:`~braintumor.evaluation.check_out_folder`): a file, a path through a file, a folder that cannot be written;
    with ``inside_data`` (once the data folders were found to be data), one inside a data folder (its figures would
    be read as images of a class next time).

    Raises:
        UsageError: one line naming ``--out``, the problem and what to do.
    """
    from .evaluation import check_out_folder

    dirs = [*cfg.data_dirs, *([cfg.val_dir] if cfg.val_dir else [])] if inside_data else []
    check_out_folder(root, data_dirs=dirs, what="the run folder must be a new (or empty) folder", any_run=False)


def check_options(cfg: TrainConfig, pretrained: bool, run: RunDir, resume: bool = False) -> None:
    """The checks of options that need no image, made before anything is read or written.

    Raises:
        UsageError: nothing to train (every phase has 0 epochs), ``init_from`` not a finished run of the same
            model, ``masks`` or ``exclude_copies_of`` not a folder (or with no images), ``track`` not installed.
    """
    phases = plan_phases(cfg, pretrained)
    if not any(ph.epochs > 0 for ph in phases):
        what = (f"epochs {cfg.epochs}" + (f" and epochs_frozen {cfg.epochs_frozen}" if pretrained else
                                          f" (epochs_frozen {cfg.epochs_frozen} applies to pretrained models only)"))
        raise UsageError(f"nothing to train: {what}; give --epochs 1 or more")
    if cfg.init_from and not (resume and run.last.is_file()):
        check_init_from(cfg.init_from, cfg.model)
    if cfg.masks and not Path(cfg.masks).is_dir():
        raise UsageError(f"--masks {printable(cfg.masks)}: no such folder")
    if cfg.erase_lesions and not cfg.masks:
        raise UsageError("--erase-lesions needs --masks (the lesion outlines to erase)")
    if cfg.paste_lesions and not cfg.masks:
        raise UsageError("--paste-lesions needs --masks (the lesion outlines to paste)")
    if cfg.paste_per_normal and not cfg.paste_lesions:
        raise UsageError("--paste-per-normal needs --paste-lesions (it caps the lesions pasted per no-tumour image)")
    if cfg.paste_bright and not cfg.paste_lesions:
        raise UsageError("--paste-bright needs --paste-lesions (it makes a share of the pasted lesions bright)")
    if cfg.exclude_copies_of:
        from .data.discover import list_images

        other = Path(cfg.exclude_copies_of)
        if not other.is_dir():
            raise UsageError(f"--exclude-copies-of {printable(other)}: no such folder")
        if not list_images(other):
            raise UsageError(f"--exclude-copies-of {printable(other)}: no images in it (nothing to compare with)")
    if getattr(cfg, "track", None):
        from .tracking import check_available

        check_available(cfg.track)


def check_init_from(run_dir: str | Path, model_name: str) -> None:
    """``init_from`` must be a finished run folder holding a ``model_name`` model (checked before any work).

    Raises:
        UsageError: not a run folder, not finished (``status`` not ``complete``), no ``best.pt``, another model.
    """
    run = RunDir(run_dir)
    if not run.metadata.is_file() or not run.best.is_file():
        raise UsageError(f"{printable(run_dir)}: not a finished run folder (init_from needs metadata.json and "
                         "checkpoints/best.pt)")
    meta = run.read_metadata()
    status = meta.get("status")
    if status is not None and status != "complete":
        raise UsageError(f"{printable(run_dir)}: the run did not finish (status: {status}); init_from needs a "
                         "finished run")
    other = meta.get("model")
    if other != model_name:
        raise UsageError(f"{printable(run_dir)}: holds a '{other}' model, this run trains '{model_name}' "
                         "(init_from)")


class _RunGuard:
    """What a new run's folder held before :func:`train` started, to take back what a failed start wrote.

    A run whose first epoch was saved (``checkpoints/last.pt``) is kept: ``--resume`` continues it. A resumed run
    is never touched. A folder that did not exist is removed with every parent this call created; in a folder that
    existed, only the entries this call added are removed.
    """

    def __init__(self, root: Path, resume: bool):
        self.root, self.active = Path(root), not resume
        top, p = None, self.root.absolute()
        while not p.exists() and p != p.parent:
            top, p = p, p.parent
        self.top = top
        self.before = set(os.listdir(self.root)) if top is None and self.root.is_dir() else None

    def clean_up(self) -> None:
        import shutil

        if not self.active or RunDir(self.root).last.is_file():
            return
        if self.top is not None:
            shutil.rmtree(self.top, ignore_errors=True)
        elif self.before is not None and self.root.is_dir():
            for name in set(os.listdir(self.root)) - self.before:
                path = self.root / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _train(cfg: TrainConfig, run: RunDir, resume: bool, spec, pretrained: bool, device: torch.device,
           ctx: DistContext, outc: _Console, folder: ImageFolder | None, t_start: float,
           handlers: tuple[Handler, ...] = ()) -> TrainResult:
    """A run: data, model and run folder made ready, then the engine's loop, its handlers and the final stage."""
    precision = resolve_precision(cfg, device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or max(1, default_threads() // ctx.world_size))
    seed_everything(cfg.seed)
    pre = Preprocessor(img_size=cfg.img_size, crop_brain=cfg.crop_brain, grayscale=cfg.grayscale,
                       mean=spec.mean, std=spec.std, crop_detect_side=cfg.crop_detect_side,
                       intensity=cfg.intensity, reduce_first=cfg.reduce_first)
    if resume and run.metadata.is_file():  # exactly the preprocessing the run started with (older versions too)
        pre = Preprocessor.from_dict(run.read_metadata()["preprocessing"])
    data = prepare_data(cfg, pre, outc, folder, run_root=None if resume else run.root)
    check_prepared(cfg, data)
    meta = _start_metadata(cfg, spec, pretrained, pre, data, device, precision, ctx)
    # The model before the run folder: missing pretrained weights or an unfit init_from leave nothing behind.
    model = _make_model(cfg, run, resume, pretrained, data, meta)
    # A resumed run's checkpoint is read (and refused, if it holds anything but plain weights) before anything is
    # written: a failed resume leaves the run exactly as it was (its status included).
    ck = run.load_checkpoint("last") if resume and run.last.is_file() else None
    if ctx.is_main:
        _open_run_folder(cfg, run, resume, meta, data, outc)
    ctx.barrier()
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps = _Steps(model, data, pre, cfg, device, precision, ctx)
    state = TrainState(cfg, run, meta, data.classes, is_main=ctx.is_main, model=model, console=outc)
    builtin = run_handlers(cfg, run, ctx, outc, steps, ck, _headline(cfg, pretrained, data, device, precision, ctx))
    Engine(plan_phases(cfg, pretrained), steps.train_epoch, steps.validate, [*builtin, *handlers],
           setup_phase=steps.setup_phase, final=lambda st: final_stage(st, data, device, t_start)).run(state)
    return TrainResult(run.root, state.metrics, state.history, meta, state.evaluation)


def _make_model(cfg: TrainConfig, run: RunDir, resume: bool, pretrained: bool, data: PreparedData,
                meta: dict) -> nn.Module:
    """The model to train: pretrained (ImageNet) or from ``init_from``'s backbone, with the tumour-map decoder
    when ``cfg.masks`` (described in ``meta``)."""
    model = build_model(cfg.model, len(data.classes), pretrained=pretrained and not cfg.init_from,
                        img_size=cfg.img_size)
    if cfg.init_from and not (resume and run.last.is_file()):  # a resumed run loads last.pt over it anyway
        load_backbone(model, cfg.init_from, cfg.model)
    if cfg.masks:
        from .models.segmentation import attach_decoder

        attach_decoder(model, cfg.model, cfg.img_size)
        model.emit_map = True  # forward -> (logits, map logits) while training; the Predictor gets plain logits
        meta["tumour_map"] = {**model.decoder_config, "masks": cfg.masks, "mask_weight": cfg.mask_weight,
                              "train": data.train_masks.summary(), "val": data.val_masks.summary(),
                              "lesions_erased": data.erased, "lesions_pasted": data.pasted,
                              "problems": [{"path": str(p), "reason": r}
                                           for p, r in data.train_masks.problems + data.val_masks.problems]}
    return model


def _open_run_folder(cfg: TrainConfig, run: RunDir, resume: bool, meta: dict, data: PreparedData,
                     outc: _Console) -> None:
    """Rank 0: the run folder, ``config.yaml`` (a new run), ``metadata.json`` (status ``running``), ``split.csv``."""
    run.create()
    if not resume:
        cfg.save(run.config)
    if resume and run.metadata.is_file():
        old = run.read_metadata()
        if old.get("data", {}).get("fingerprint") != data.fingerprint:
            outc.print("[yellow]warning[/yellow]: the data changed since this run started (fingerprint differs)")
        meta["wall_seconds_before_resume"] = old.get("wall_seconds", 0.0)
    run.write_json(run.metadata, meta)
    _write_split(run, data)


def _headline(cfg: TrainConfig, pretrained: bool, data: PreparedData, device, precision: str,
              ctx: DistContext) -> str:
    source = f"weights of {cfg.init_from}" if cfg.init_from else "ImageNet" if pretrained else "random init"
    return (f"[bold]{cfg.model}[/bold] ({source}) on {len(data.train_y)} "
            f"train / {len(data.val_y)} val images, {len(data.classes)} classes, {cfg.img_size}px, "
            f"{device}/{precision}" + (f", {ctx.world_size} processes" if ctx.active else "")
            + (f", {len(data.skipped)} unreadable file(s) skipped" if data.skipped else ""))


class _Steps:
    """What the engine calls for a run: a phase's set-up (layers to train, optimizer), one training epoch
    (:func:`run_epoch`) and validation (:func:`validation_sums`, :func:`evaluate_maps`)."""

    def __init__(self, model: nn.Module, data: PreparedData, pre: Preprocessor, cfg: TrainConfig, device,
                 precision: str, ctx: DistContext):
        self.model, self.data, self.pre, self.cfg = model, data, pre, cfg
        self.device, self.precision, self.ctx = device, precision, ctx
        weights = class_weight_tensor(data.train_y, len(data.classes)).to(device) if cfg.class_weights else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
        self.augmenter = Augmenter(seed=cfg.seed, mri=cfg.mri_augment) if cfg.augment else None
        self.steps = len(_batches(ctx.shard(len(data.train_y), cfg.batch_size, cfg.seed, 0),
                                  ctx.local_batch(cfg.batch_size)))

    def setup_phase(self, state: TrainState) -> None:
        set_trainable(self.model, state.phase)
        state.net = self.ctx.wrap(self.model, self.device)
        state.optimizer, state.scheduler = make_optimizer(self.model, state.phase, self.cfg, self.steps)

    def train_epoch(self, state: TrainState) -> dict:
        sums = run_epoch(state.net, self.model, state.phase, self.data, self.pre, self.cfg, state.optimizer,
                         state.scheduler, self.loss_fn, self.device, self.precision, self.augmenter, state.epoch,
                         state.progress, self.ctx)
        return {**sums, "lr": float(state.optimizer.param_groups[0]["lr"])}

    def validate(self, state: TrainState) -> dict:
        d = self.data
        cols: dict = validation_sums(self.model, d.val_x, d.val_y, self.pre, self.device, self.precision,
                                     channels_last=self.cfg.channels_last, ctx=self.ctx)
        if getattr(self.model, "decoder", None) is not None:
            cols.update(evaluate_maps(self.model, d.val_x, d.val_masks, self.pre, self.device, self.precision))
        return cols

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """Validation loss and accuracy of ``model`` (this process alone: the kept weights, on rank 0)."""
        return evaluate_arrays(model, self.data.val_x, self.data.val_y, self.pre, self.device, self.precision,
                               channels_last=self.cfg.channels_last)


def run_handlers(cfg: TrainConfig, run: RunDir, ctx: DistContext, outc: _Console, steps: _Steps,
                 resume_from: dict | None, headline: str) -> list[Handler]:
    """The built-in handlers of a run, in the order their hooks run (see :mod:`braintumor.engine`); with
    ``cfg.track``, rank 0 also logs to MLflow / TensorBoard (:mod:`braintumor.tracking`)."""
    handlers = [ReduceAcrossRanks(ctx), EarlyStopping(cfg.patience), Checkpoints(resume_from),
                WeightAveraging(steps.evaluate), HistoryWriter(), ConsoleLog(outc, headline, len(steps.data.train_y))]
    if ctx.is_main and getattr(cfg, "track", None):
        from .tracking import TrackingHandler

        handlers.append(TrackingHandler(cfg.track, run.root))
    return handlers


# ------------------------------------------------------------------------------------------- the final stage


def final_stage(state: TrainState, data: PreparedData, device, t_start: float) -> None:
    """The end of a run (rank 0, after the engine chose the weights to keep), one named piece after another.

    Until all of it is written the run is ``finalising`` (loaders refuse it; ``train --resume`` does the final stage
    again), then ``complete``, last.
    """
    set_status(state, "finalising", t_start)
    predictor = final_calibration(state, data, device)
    if state.cfg.ood_check:
        final_input_check(state, predictor, data)
    proba = final_evaluation(state, predictor, data)
    final_metrics(state, data, proba)
    write_report(state.run.root)
    final_model_card(state)
    set_status(state, "complete", t_start)  # last: everything above is written (each file atomically)
    predictor.metadata = state.meta


def set_status(state: TrainState, status: str, t_start: float) -> None:
    """``metadata.json``'s ``status`` (and ``wall_seconds`` so far), written."""
    meta = state.meta
    meta["status"] = status
    meta["wall_seconds"] = meta.get("wall_seconds_before_resume", 0.0) + (time.time() - t_start)
    state.run.write_json(state.run.metadata, meta)


def final_calibration(state: TrainState, data: PreparedData, device) -> Predictor:
    """The kept checkpoint as the :class:`Predictor` used for prediction (fp32), with the temperature and decision
    threshold fitted on the validation split (:func:`calibrate`) written into ``metadata.json``."""
    run = state.run
    predictor = Predictor.from_run(run.root, device=str(device), allow_incomplete=True)
    post = calibrate(predictor, data, state.cfg)
    if post:
        state.meta.update(post)
        run.write_json(run.metadata, state.meta)
        predictor = Predictor.from_run(run.root, device=str(device), allow_incomplete=True)
    return predictor


def final_input_check(state: TrainState, predictor: Predictor, data: PreparedData) -> None:
    """The input check (:func:`fit_check`) fitted, saved, described in ``metadata.json`` and given to ``predictor``."""
    check = fit_check(predictor, data, state.cfg)
    state.meta["input_check"] = check.to_metadata()
    state.run.write_json(state.run.metadata, state.meta)
    state.say(f"input check: threshold {check.threshold:.3g} on the pooled features "
              f"({check.distance.dim}-d); validation flagged unfamiliar "
              f"{check.summary['val_flagged_unfamiliar']:.1%}, uncertain {check.summary['val_uncertain']:.1%}")
    predictor.input_check, predictor.metadata = check, state.meta  # the fitted check, without reloading the weights


def final_evaluation(state: TrainState, predictor: Predictor, data: PreparedData) -> np.ndarray:
    """The kept model on the validation split, in fp32 through ``predictor``: predictions, figures
    (``state.evaluation``) and the training curves; returns the probabilities."""
    meta = state.meta
    proba = predictor.proba_prepared(data.val_x)
    state.evaluation = report_predictions(data.val_y, proba, data.classes, state.run.root, data.val_paths,
                                          meta["positive_class"], meta.get("threshold"), title="validation")
    if state.history:
        plot_curves(state.history, state.run.curves)
    return proba


def final_metrics(state: TrainState, data: PreparedData, proba: np.ndarray) -> None:
    """``metrics.json``: the final evaluation's metrics with 95% bootstrap intervals (the validation split is a
    hold-out), the best epoch and the wall time (``state.metrics``)."""
    from .stats import bootstrap_ci

    meta = state.meta
    metrics = dict(state.evaluation.metrics)
    metrics["ci"] = bootstrap_ci(data.val_y, proba, data.classes, meta["positive_class"], meta.get("threshold"))
    metrics["best_epoch"] = state.best["epoch"]
    metrics["wall_seconds"] = meta["wall_seconds"]
    state.run.write_json(state.run.metrics, metrics)
    state.metrics = metrics


def final_model_card(state: TrainState) -> None:
    """``model_card.md`` (:mod:`braintumor.model_card`)."""
    from .model_card import write_model_card

    write_model_card(state.run.root)
