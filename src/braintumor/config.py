"""Training configuration: one object, saved as ``config.yaml`` in every run, enough to reproduce it.

Example:
    >>> from braintumor.config import TrainConfig
    >>> cfg = TrainConfig(data_dir="data/phantoms", model="cnn", epochs=5)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .errors import UsageError


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    Two phases for pretrained models: phase 1 trains the head on a frozen backbone (``epochs_frozen`` epochs at
    ``lr_frozen``), phase 2 fine-tunes every layer with BatchNorm statistics frozen (``epochs`` epochs, one-cycle
    schedule peaking at ``lr``). Models without pretrained weights train in one phase (``epochs`` at ``lr``).
    ``lr=None`` picks 1e-4 for fine-tuning and 1e-3 from scratch. The checkpoint kept is the one with the lowest
    validation loss in the last phase; early stopping (``patience`` epochs without improvement) counts only in the
    second half of a one-cycle phase, once the learning rate anneals.

    Weight averaging (``swa``, on by default): when the last phase fine-tunes with BatchNorm statistics frozen (the
    pretrained recipe), the kept model is the average of the weights after each epoch of that phase's second half
    (stochastic weight averaging) instead of the single epoch with the lowest validation loss. On Navoneel's set
    (group-aware 5-fold cross-validation) it gave 0.877 accuracy against 0.850 for the lowest-validation-loss
    epoch, chosen on ~40 validation images. From-scratch training (BatchNorm active) keeps the lowest-loss epoch.

    ``intensity="percentile"`` stretches each image's head intensities (0.5th-99.5th percentiles of the pixels
    above the background) to the full range before the model sees it
    (:func:`~braintumor.preprocess.standardise_intensity`), removing scanner and export brightness and contrast
    differences. Off by default: on Navoneel's set it raised frozen ImageNet features (logistic regression,
    10x5-fold CV) from 0.855 to 0.866 (ROC-AUC 0.917 to 0.934) but left the fine-tuned recipe where it was
    (5-fold CV accuracy 0.877 either way, ROC-AUC 0.938 vs 0.932; ``benchmarks/intensity.py`` repeats both).

    ``mixup`` > 0 trains on convex mixtures of two images and of their labels (Zhang et al. 2018), the mixing weight
    drawn per batch from Beta(mixup, mixup); 0.2 is the usual choice, 0 (default) disables it.

    Domain pretraining: ``init_from`` names a run folder (same model) whose backbone weights start this run instead
    of ImageNet's (a new head is trained; the run is fine-tuned in two phases). ``exclude_copies_of`` drops every
    training image that has an exact or near copy in that folder, so a model pretrained here can later be tested
    there without leakage.

    Several sources: ``data_dir`` may be a list of folders (each a *source*, e.g. two public data sets), and
    ``classes`` maps the run's classes to the class folders of the sources, e.g.
    ``{"tumour": ["glioma", "meningioma", "pituitary", "yes"], "no_tumour": ["notumor", "no"]}`` (see
    :mod:`braintumor.data.sources`). Duplicate groups are found across all sources, splits stratify by source and
    class, and ``balance_sources`` draws every training epoch so that each source contributes equally.

    ``mri_augment`` adds MRI-specific augmentation (bias field, Gibbs ringing, k-space spikes, histogram shift,
    strong gamma, contrast inversion, lower resolution, JPEG re-encoding, orientation changes) to the usual
    geometric and intensity augmentation: a lever against learning the source (scanner, sequence, export format)
    instead of the lesion. Off by default.

    Patient groups: ``group_by="id-runs"`` (files named by consecutive integers per patient, like the figshare
    set) or a CSV file ``path,group`` keeps each patient's slices on one side of every split, on top of the
    duplicate groups (:mod:`braintumor.data.groups`).

    Tumour masks: ``masks`` names a folder of lesion masks (``<masks>/<class>/<name>`` or ``<masks>/<name>``, the
    image's file name) and adds a tumour-map decoder to the model (:mod:`braintumor.models.segmentation`),
    trained with a Dice + cross-entropy loss weighted by ``mask_weight`` beside the classification loss. Images
    without a mask train the classifier only; images of a no-tumour class (``notumor``, ``no``, ...) count as an
    empty mask. The run then predicts a tumour probability map beside the class (``explain --method seg``,
    ``predict --outline``).

    Lesion erasure (``erase_lesions``, needs ``masks`` and one no-tumour class): every training image with a lesion
    mask also trains as a no-tumour image, its lesion replaced by the mirrored tissue of the other hemisphere
    (:mod:`braintumor.data.erase`; mid-line lesions are left out). A collection that holds only tumour slices then
    holds normal-looking slices of the same scanner and sequence too, so the lesion, not the collection's look,
    separates the classes. Off by default.

    Lesion pasting (``paste_lesions``, needs ``masks`` and one no-tumour class): the lesion of every training
    image with a lesion mask is also pasted into a no-tumour training image (:mod:`braintumor.data.paste`), which
    trains as a tumour image of the lesion's class with the pasted outline as its mask. A collection that holds
    only normal slices then holds tumour slices of its scanner and sequence too. ``paste_per_normal`` > 0 caps the
    lesions one no-tumour image receives (1: each normal image trains at most once more, with a lesion; with few
    normal images and many lesions an uncapped run makes their look mostly a tumour look); ``paste_bright`` is the
    share of lesions pasted bright throughout (their absolute difference from the tissue: a crude T2/FLAIR look
    of a T1 contrast-enhanced lesion). Off by default.

    Preprocessing speed: ``reduce_first`` (default) has images at least twice the input size reduced first by
    the largest power of two that keeps both sides at least ``img_size`` (a JPEG is decoded at that size: a
    fraction of the work); ``crop_detect_side`` is the side of the copy the brain crop is found on. Both are stored
    in the run, so prediction prepares exactly as training did; ``reduce_first=False`` and ``crop_detect_side=256``
    prepare as runs made before them did.

    Input check (:mod:`braintumor.ood`): with ``ood_check`` (default) the run fits, after calibration, a check of
    how typical an input is of its training data (Mahalanobis distance of the pooled features, threshold at the
    ``ood_quantile`` of a log-normal fitted to the validation distances) and stores the abstention limit
    ``min_confidence`` (below it a prediction's verdict is ``uncertain``).

    Experiment tracking (:mod:`braintumor.tracking`): ``track="mlflow"`` or ``"tensorboard"`` also logs the run's
    parameters, per-epoch metrics, final metrics with their intervals and its files to MLflow
    (``MLFLOW_TRACKING_URI``, else the SQLite store ``./mlruns/mlflow.db``) or to TensorBoard event files in
    ``<run>/tensorboard/``. Off by default.

    Example:
        >>> from braintumor import TrainConfig
        >>> cfg = TrainConfig(data_dir="data/phantoms", img_size=96, epochs_frozen=2, epochs=3)
        >>> cfg.model, cfg.batch_size
        ('efficientnet-lite0', 32)
        >>> cfg.save("my.yaml"); TrainConfig.load("my.yaml") == cfg     # doctest: +SKIP
        True
    """

    data_dir: str | list[str] = ""
    classes: dict[str, list[str]] | None = None
    balance_sources: bool = False
    val_dir: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    model: str = "efficientnet-lite0"
    pretrained: bool | None = None
    img_size: int = 224
    crop_brain: bool = True
    crop_detect_side: int = 128
    reduce_first: bool = True
    intensity: str = "none"
    grayscale: bool = True
    batch_size: int = 32
    epochs_frozen: int = 6
    epochs: int = 12
    lr_frozen: float = 1e-3
    lr: float | None = None
    weight_decay: float = 1e-4
    scheduler: str = "onecycle"
    patience: int = 6
    swa: bool = True
    class_weights: bool = False
    label_smoothing: float = 0.0
    mixup: float = 0.0
    augment: bool = True
    mri_augment: bool = False
    precision: str = "auto"
    channels_last: bool = True
    num_threads: int | None = None
    num_workers: int = 0
    strict: bool = False
    group_duplicates: bool = True
    group_by: str | None = None
    masks: str | None = None
    mask_weight: float = 1.0
    erase_lesions: bool = False
    paste_lesions: bool = False
    paste_per_normal: int = 0
    paste_bright: float = 0.0
    slices: str | int = "middle"
    device: str = "auto"
    ood_check: bool = True
    ood_quantile: float = 0.99
    min_confidence: float = 0.6
    target_sensitivity: float | None = None
    init_from: str | None = None
    exclude_copies_of: str | None = None
    track: str | None = None

    def __post_init__(self):
        # Every value through the one schema (braintumor.schema): types, bounds, choices; one line naming the
        # field, the value and what is allowed.
        from .schema import validate_config

        for name, value in validate_config(self.__dict__).items():
            setattr(self, name, value)
        from .data.slices import parse_slices

        self.slices = parse_slices(self.slices)  # volumes: "middle", "all" or K slices (see data.slices)
        if isinstance(self.data_dir, (list, tuple)):
            dirs = [str(d) for d in self.data_dir]
            self.data_dir = dirs[0] if len(dirs) == 1 else dirs
        if self.classes is not None:
            from .data.sources import parse_class_map

            self.classes = parse_class_map(self.classes)

    @property
    def data_dirs(self) -> list[str]:
        """The data folders (sources) as a list: one entry for a single folder."""
        if isinstance(self.data_dir, (list, tuple)):
            return [str(d) for d in self.data_dir]
        return [str(self.data_dir)] if self.data_dir else []

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> TrainConfig:
        """A config from a mapping of its fields, checked (see :func:`braintumor.schema.validate_config`).

        Raises:
            UsageError: an unknown key, or a value of the wrong type or out of bounds (one line; ``where``, e.g.
                the file, names its source).
        """
        from .schema import validate_config

        validate_config(d, where)  # the same check __post_init__ makes, with the source named in the message
        try:
            return cls(**d)
        except UsageError as exc:  # the class map and slice checks of __post_init__
            if not where or str(exc).startswith(f"{where}: "):
                raise
            raise UsageError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a YAML config file (safely: ``yaml.safe_load``, size-capped, checked).

        Example:
            >>> from braintumor import TrainConfig
            >>> TrainConfig.load("my.yaml").img_size                     # doctest: +SKIP
            224

        Raises:
            UsageError: no such file, a folder, not UTF-8 text, not YAML, not a mapping, an unknown key, or a
                value of the wrong type or out of bounds: one line naming the file.
        """
        from .schema import read_config_file

        return cls.from_dict(read_config_file(path), str(path))

    @classmethod
    def recipe(cls, name: str, **overrides) -> TrainConfig:
        """A recipe shipped with the package (``braintumor/recipes/<name>.yaml``), with ``overrides`` on top.

        Example:
            >>> cfg = TrainConfig.recipe("tumour-detector", data_dir=["data/a", "data/b"])
            >>> sorted(cfg.classes)
            ['no_tumour', 'tumour']

        Raises:
            UsageError: no recipe of that name (the message lists the known ones).
        """
        from importlib import resources

        folder = resources.files("braintumor") / "recipes"
        known = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        if name not in known:
            raise UsageError(f"unknown recipe '{name}'; known: {', '.join(known)}")
        data = yaml.safe_load((folder / f"{name}.yaml").read_text()) or {}
        data.update(overrides)
        return cls.from_dict(data, f"recipe '{name}'" if not overrides else "")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def resolved_lr(self, pretrained: bool) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if pretrained else 1e-3
