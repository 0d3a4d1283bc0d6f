"""One schema for what braintumor reads from outside: training configs, run metadata and ONNX metadata.

Run folders and exported models are shared ("here is my trained model"), configs are written by hand: every value
read from them is checked here, at the boundary, before anything is built from it. The checks are pydantic v2
models in strict mode: a value of the wrong type is refused rather than guessed at (``img_size: "224"``,
``epochs: 3.0``, ``batch_size: null``), the only coercions are the unambiguous ones (a whole number where a decimal
number is expected, a path object where a path is expected), and sizes and counts are bounded (image side, batch,
threads, epochs), so a file cannot make the program allocate without limit. Failures are one line naming the file,
the field, the value and what is allowed: :class:`~braintumor.errors.UsageError` for a config,
:class:`~braintumor.errors.RunError` for run and ONNX metadata.

Run metadata grows from version to version: keys the schema does not know are kept, and fields that older runs
lack are optional (``status`` absent means a run made before it was recorded, i.e. complete).

Example:
    >>> from braintumor.schema import validate_config, validate_metadata
    >>> validate_config({"img_size": 96, "epochs": 3})["img_size"]
    96
    >>> validate_config({"img_size": "224"})
    Traceback (most recent call last):
    ...
    braintumor.errors.UsageError: img_size must be a whole number from 32 to 1024, got '224' (text)
    >>> meta = {"classes": ["no", "yes"], "model": "cnn", "img_size": 64, "preprocessing": {"img_size": 64}}
    >>> validate_metadata(meta, "run/metadata.json") is meta
    True
    >>> validate_metadata({**meta, "threshold": "0.5"}, "run/metadata.json")
    Traceback (most recent call last):
    ...
    braintumor.errors.RunError: run/metadata.json: threshold must be null or a number from 0 to 1, got '0.5' (text)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .errors import RunError, UsageError

#: Bounds shared by configs and metadata.
MIN_IMG_SIZE, MAX_IMG_SIZE = 32, 1024
MAX_BATCH_SIZE = 4096
MAX_EPOCHS = 10_000
MAX_THREADS = 1024
MAX_WORKERS = 256
MAX_SEED = 2**32 - 1
MIN_CLASSES, MAX_CLASSES = 2, 1000
MAX_NAME = 255  # a class name is a folder name
MAX_PATH = 4096
MAX_SLICES = 100_000
#: ``metadata.json`` larger than this is refused unread (a real one is a few KiB; the skipped-file list grows it).
MAX_METADATA_BYTES = 64 << 20
#: A config file larger than this is refused unread.
MAX_CONFIG_BYTES = 1 << 20

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)$"


# ----------------------------------------------------------------------------------------------- value types


def _plain_scalar(v: Any) -> Any:
    """NumPy scalars as the Python numbers they hold (an unambiguous coercion); everything else unchanged."""
    if type(v).__module__ == "numpy":
        import numpy as np

        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.floating):
            return float(v)
    return v


def _path_text(v: Any) -> Any:
    """A path object as its text (``Path("a")`` -> ``"a"``)."""
    return os.fspath(v) if isinstance(v, os.PathLike) else v


def _no_nul(v: str | None) -> str | None:
    if v is not None and "\x00" in v:
        raise ValueError("a NUL character")
    return v


Int = Annotated[int, BeforeValidator(_plain_scalar)]
Float = Annotated[float, BeforeValidator(_plain_scalar), Field(allow_inf_nan=False)]
PathText = Annotated[str, BeforeValidator(_path_text), Field(min_length=1, max_length=MAX_PATH),
                     AfterValidator(_no_nul)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
ImgSize = Annotated[Int, Field(ge=MIN_IMG_SIZE, le=MAX_IMG_SIZE)]
Epochs = Annotated[Int, Field(ge=0, le=MAX_EPOCHS)]
Probability = Annotated[Float, Field(ge=0, le=1)]
Text = Annotated[str, Field(max_length=MAX_PATH)]

_STRICT = ConfigDict(strict=True, extra="forbid")
_OPEN = ConfigDict(strict=True, extra="allow")


def _describe(**allowed: str) -> dict[str, str]:
    """Field (dotted path; ``*`` for any key of a mapping) -> what is allowed, in words (used in error messages)."""
    return allowed


# ------------------------------------------------------------------------------------------------ the config


class ConfigSchema(BaseModel):
    """The values of a :class:`~braintumor.config.TrainConfig` (every field; see its docstring for meanings)."""

    model_config = _STRICT

    data_dir: PathText | Annotated[list[PathText], Field(min_length=1, max_length=100)] | Literal[""] = ""
    classes: (dict[Name, Name | Annotated[list[Name | bool], Field(min_length=1, max_length=MAX_CLASSES)]]
              | Annotated[list[Text], Field(min_length=1, max_length=MAX_CLASSES)] | None) = None
    balance_sources: bool = False
    val_dir: PathText | None = None
    val_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.2
    seed: Annotated[Int, Field(ge=0, le=MAX_SEED)] = 0
    model: Name = "efficientnet-lite0"
    pretrained: bool | None = None
    img_size: ImgSize = 224
    crop_brain: bool = True
    crop_detect_side: Annotated[Int, Field(ge=0, le=8192)] = 128
    reduce_first: bool = True
    intensity: str = "none"
    grayscale: bool = True
    batch_size: Annotated[Int, Field(ge=1, le=MAX_BATCH_SIZE)] = 32
    epochs_frozen: Epochs = 6
    epochs: Epochs = 12
    lr_frozen: Annotated[Float, Field(gt=0)] = 1e-3
    lr: Annotated[Float, Field(gt=0)] | None = None
    weight_decay: Annotated[Float, Field(ge=0)] = 1e-4
    scheduler: Literal["onecycle", "constant", "cosine"] = "onecycle"
    patience: Epochs = 6
    swa: bool = True
    class_weights: bool = False
    label_smoothing: Annotated[Float, Field(ge=0, lt=1)] = 0.0
    mixup: Annotated[Float, Field(ge=0)] = 0.0
    augment: bool = True
    mri_augment: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    num_threads: Annotated[Int, Field(ge=1, le=MAX_THREADS)] | None = None
    num_workers: Annotated[Int, Field(ge=0, le=MAX_WORKERS)] = 0
    strict: bool = False
    group_duplicates: bool = True
    group_by: PathText | None = None
    masks: PathText | None = None
    mask_weight: Annotated[Float, Field(ge=0)] = 1.0
    erase_lesions: bool = False
    paste_lesions: bool = False
    paste_per_normal: Annotated[Int, Field(ge=0, le=MAX_EPOCHS)] = 0
    paste_bright: Probability = 0.0
    slices: Annotated[str, Field(max_length=16)] | Annotated[Int, Field(ge=1, le=MAX_SLICES)] = "middle"
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"
    ood_check: bool = True
    ood_quantile: Annotated[Float, Field(ge=0.5, lt=1)] = 0.99
    min_confidence: Probability = 0.6
    target_sensitivity: Annotated[Float, Field(gt=0, lt=1)] | None = None
    init_from: PathText | None = None
    exclude_copies_of: PathText | None = None
    track: Literal["mlflow", "tensorboard"] | None = None


_WHOLE = "a whole number"
CONFIG_ALLOWED: dict[str, str] = _describe(
    data_dir="a folder or a list of 1 to 100 folders (text, no NUL character)",
    classes="a mapping CLASS: [FOLDER, ...] (or CLASS: 'FOLDER,FOLDER'), or a list of CLASS=FOLDER,... entries",
    balance_sources="true or false", val_dir="null or a folder (text)",
    val_fraction="a number between 0 and 1 (both excluded)",
    seed=f"{_WHOLE} from 0 to {MAX_SEED}", model="a model name (see `braintumor models`)",
    pretrained="true, false or null (the model's default)",
    img_size=f"{_WHOLE} from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}", crop_brain="true or false",
    crop_detect_side=f"{_WHOLE} from 0 to 8192", reduce_first="true or false", intensity="none or percentile",
    grayscale="true or false",
    batch_size=f"{_WHOLE} from 1 to {MAX_BATCH_SIZE}", epochs_frozen=f"{_WHOLE} from 0 to {MAX_EPOCHS}",
    epochs=f"{_WHOLE} from 0 to {MAX_EPOCHS}", lr_frozen="a number > 0", lr="null or a number > 0",
    weight_decay="a number >= 0", scheduler="onecycle, constant or cosine",
    patience=f"{_WHOLE} from 0 to {MAX_EPOCHS} (0 disables early stopping)", swa="true or false",
    class_weights="true or false", label_smoothing="a number >= 0 and < 1",
    mixup="a number >= 0 (the Beta distribution's alpha; 0 disables)", augment="true or false",
    mri_augment="true or false", erase_lesions="true or false",
    paste_lesions="true or false", paste_per_normal=f"{_WHOLE} from 0 to {MAX_EPOCHS} (0: no cap)",
    paste_bright="a number from 0 to 1 (the share of pasted lesions made bright)",
    precision="auto, fp32, bf16 or fp16",
    channels_last="true or false",
    num_threads=f"null (all cores) or {_WHOLE} from 1 to {MAX_THREADS}",
    num_workers=f"{_WHOLE} from 0 to {MAX_WORKERS}", strict="true or false", group_duplicates="true or false",
    group_by="null, id-runs, id-blocks:N or a CSV file path,group", masks="null or a folder of masks (text)",
    mask_weight="a number >= 0", slices=f"middle, all or {_WHOLE} from 1 to {MAX_SLICES}",
    device="auto, cpu, cuda, cuda:N or mps", ood_check="true or false",
    ood_quantile="a number >= 0.5 and < 1", min_confidence="a number from 0 to 1 (0: never uncertain)",
    target_sensitivity="null or a number between 0 and 1 (both excluded)", init_from="null or a run folder (text)",
    exclude_copies_of="null or a folder (text)", track="null (no tracking), mlflow or tensorboard",
)


def validate_config(data: Mapping, where: str = "") -> dict:
    """Check a training config's values (a mapping of :class:`~braintumor.config.TrainConfig` fields).

    Args:
        data: field -> value (fields not given keep their defaults; unknown keys are refused).
        where: the config file, named in messages (``""``: none).

    Returns:
        The values given, normalised (path objects as text, NumPy scalars as Python numbers, whole numbers given
        for decimal fields as ``float``).

    Raises:
        UsageError: one line: ``[where: ]FIELD must be ALLOWED, got VALUE``, or the unknown keys.

    Example:
        >>> from braintumor.schema import validate_config
        >>> validate_config({"label_smoothing": 5}, "my.yaml")
        Traceback (most recent call last):
        ...
        braintumor.errors.UsageError: my.yaml: label_smoothing must be a number >= 0 and < 1, got 5
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise UsageError(f"{prefix}expected a mapping of config keys, got {_kind(data)}")
    data = dict(data)
    unknown = sorted(str(k) for k in data if k not in ConfigSchema.model_fields)
    if unknown:
        raise UsageError(f"{prefix}unknown config key(s): {', '.join(_clip(k, 40) for k in unknown[:10])}"
                         + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    try:
        model = ConfigSchema.model_validate(data)
    except ValidationError as exc:
        raise UsageError(prefix + _first_error(exc, data, CONFIG_ALLOWED)) from None
    from .preprocess import INTENSITY_MODES

    if model.intensity not in INTENSITY_MODES:
        raise UsageError(f"{prefix}intensity must be {' or '.join(INTENSITY_MODES)}, got {_show(model.intensity)}")
    if "slices" in data:
        from .data.slices import parse_slices

        try:
            k = parse_slices(model.slices)
        except UsageError:
            k = 0
        if not isinstance(k, str) and not 1 <= k <= MAX_SLICES:
            raise UsageError(f"{prefix}slices must be {CONFIG_ALLOWED['slices']}, got {_show(model.slices)}")
    if "model" in data:
        _check_model(model.model, prefix, UsageError)
    return {k: getattr(model, k) for k in data}


#: The models braintumor ships (``braintumor.models.available_models()`` before any ``register``): a run of one of
#: these is checked without importing the model code, and so torch (the onnxruntime path never loads it).
BUILTIN_MODELS = ("cnn", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "efficientnet-b0",
                  "resnet18", "densenet121")


def _check_model(name: str, prefix: str, error: type[Exception]) -> None:
    if name in BUILTIN_MODELS:
        return
    from .models import available_models  # models registered by the user

    known = available_models()
    if name not in known:
        raise error(f"{prefix}unknown model {_show(name)}; choose one of: {', '.join(known)}")


def read_config_file(path: str | Path) -> dict:
    """The mapping in a YAML config file, read safely (``yaml.safe_load``, at most :data:`MAX_CONFIG_BYTES`).

    Raises:
        UsageError: no such file, a folder, unreadable, too large, not UTF-8 text, not valid YAML, or not a mapping.

    Example:
        >>> from braintumor.schema import read_config_file
        >>> read_config_file("configs/navoneel.yaml")["img_size"]      # doctest: +SKIP
        224
    """
    import yaml

    path = Path(path)
    raw = _read_capped(path, MAX_CONFIG_BYTES, "config file", UsageError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a YAML config (binary data, not UTF-8 text)") from None
    if "\x00" in text:
        raise UsageError(f"{path}: not a YAML config (binary data: NUL characters)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({_one_line(str(exc).splitlines()[0] if str(exc) else exc)})"
                         ) from None
    except RecursionError:
        raise UsageError(f"{path}: not a usable YAML config (nested too deeply)") from None
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"{path}: not a usable YAML config ({_one_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys, got {_kind(data)}")
    return data


# -------------------------------------------------------------------------------------------- run metadata


class PreprocessingSchema(BaseModel):
    """``metadata.json`` ``preprocessing``: the fields of :class:`~braintumor.preprocess.Preprocessor`.

    ``img_size`` is required (every run has recorded it); other absent fields take the values runs were made
    with before they were recorded. ``null`` is not a value of any field.
    """

    model_config = _OPEN

    img_size: ImgSize
    crop_brain: bool = True
    grayscale: bool = True
    mean: Annotated[list[Float], Field(min_length=3, max_length=3)] = [0.5, 0.5, 0.5]
    std: Annotated[list[Annotated[Float, Field(gt=0)]], Field(min_length=3, max_length=3)] = [0.5, 0.5, 0.5]
    crop_threshold: Annotated[Int, Field(ge=0, le=255)] = 30
    crop_detect_side: Annotated[Int, Field(ge=0, le=8192)] = 0
    intensity: str = "none"
    reduce_first: bool = False


class CalibrationSchema(BaseModel):
    model_config = _OPEN

    temperature: Annotated[Float, Field(gt=0, le=1e6)] | None = None


class ThresholdInfoSchema(BaseModel):
    model_config = _OPEN

    threshold: Probability | None = None
    target_sensitivity: Probability | None = None
    sensitivity: Probability | None = None
    specificity: Probability | None = None


class InputCheckSchema(BaseModel):
    model_config = _OPEN

    file: Text | None = None
    threshold: Annotated[Float, Field(gt=0)] | None = None
    quantile: Annotated[Float, Field(gt=0, lt=1)] = 0.99
    min_confidence: Probability = 0.6
    feature_dim: Annotated[Int, Field(ge=1, le=1 << 16)] | None = None
    rules: dict[str, Float] | None = None
    summary: dict[str, Any] | None = None


class TumourMapSchema(BaseModel):
    model_config = _OPEN

    width: Annotated[Int, Field(ge=1, le=1024)] = 32
    layers: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=16)] | None = None
    masks: Text | None = None


class SourceSchema(BaseModel):
    model_config = _OPEN

    path: Text | None = None
    train_counts: dict[str, Int] | None = None
    val_counts: dict[str, Int] | None = None


class SkippedSchema(BaseModel):
    model_config = _OPEN

    path: str
    reason: str


class DataSchema(BaseModel):
    model_config = _OPEN

    data_dir: PathText | list[PathText] | Literal[""] | None = None
    fingerprint: Text | None = None
    slices: Annotated[str, Field(max_length=16)] | Annotated[Int, Field(ge=1, le=MAX_SLICES)] | None = None
    class_map: dict[str, list[str]] | None = None
    sources: dict[str, SourceSchema] | None = None
    n_train: Annotated[Int, Field(ge=0)] | None = None
    n_val: Annotated[Int, Field(ge=0)] | None = None
    train_counts: dict[str, Int] | None = None
    val_counts: dict[str, Int] | None = None
    groups: Annotated[Int, Field(ge=0)] | None = None
    skipped: list[SkippedSchema] | None = None


class WeightsSchema(BaseModel):
    model_config = _OPEN

    kind: Text = ""
    epochs: Annotated[list[Int], Field(min_length=1)] | None = None


class MetadataSchema(BaseModel):
    """A run's ``metadata.json`` (and the metadata embedded in an ONNX export): what loading a model relies on.

    Required: ``classes``, ``model``, ``img_size``, ``preprocessing``. Keys not listed here are kept as they are.
    """

    model_config = _OPEN

    classes: Annotated[list[Name], Field(min_length=MIN_CLASSES, max_length=MAX_CLASSES)]
    model: Name
    img_size: ImgSize
    preprocessing: PreprocessingSchema
    num_classes: Int | None = None
    positive_class: Name | None = None
    threshold: Probability | None = None
    calibration: CalibrationSchema | None = None
    threshold_info: ThresholdInfoSchema | None = None
    input_check: InputCheckSchema | None = None
    tumour_map: TumourMapSchema | None = None
    data: DataSchema | None = None
    status: Annotated[str, Field(max_length=40)] | None = None
    pretrained: bool | None = None
    seed: Annotated[Int, Field(ge=0, le=MAX_SEED)] | None = None
    dicom_window: Annotated[str, Field(max_length=100)] | None = None
    best_epoch: Annotated[Int, Field(ge=0)] | None = None
    weights: WeightsSchema | None = None
    wall_seconds: Annotated[Float, Field(ge=0)] | None = None
    versions: dict[str, Any] | None = None
    gradcam_target_layer: Annotated[str, Field(max_length=200)] | None = None
    run_name: Annotated[str, Field(max_length=MAX_PATH)] | None = None
    weights_fingerprint: Annotated[str, Field(max_length=200)] | None = None


_NUM = "a number"
METADATA_ALLOWED: dict[str, str] = _describe(
    classes=f"a list of {MIN_CLASSES} to {MAX_CLASSES} distinct, non-empty class names (at most {MAX_NAME} "
            f"characters each)",
    model="a model name (see `braintumor models`)",
    img_size=f"{_WHOLE} from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}",
    preprocessing="an object (the Preprocessor's fields)",
    **{"preprocessing.img_size": f"{_WHOLE} from {MIN_IMG_SIZE} to {MAX_IMG_SIZE}, the same as img_size",
       "preprocessing.crop_brain": "true or false", "preprocessing.grayscale": "true or false",
       "preprocessing.mean": "a list of three finite numbers",
       "preprocessing.std": "a list of three finite numbers > 0",
       "preprocessing.crop_threshold": f"{_WHOLE} from 0 to 255",
       "preprocessing.crop_detect_side": f"{_WHOLE} from 0 to 8192",
       "preprocessing.intensity": "none or percentile", "preprocessing.reduce_first": "true or false",
       "calibration": "null or an object", "calibration.temperature": "null or a finite number > 0",
       "threshold_info": "null or an object",
       "threshold_info.threshold": "null or a number from 0 to 1",
       "threshold_info.target_sensitivity": "null or a number from 0 to 1",
       "threshold_info.sensitivity": "null or a number from 0 to 1",
       "threshold_info.specificity": "null or a number from 0 to 1",
       "input_check": "null or an object", "input_check.file": "null or a file name",
       "input_check.threshold": "null or a positive number",
       "input_check.quantile": "a number between 0 and 1 (both excluded)",
       "input_check.min_confidence": "a number from 0 to 1",
       "input_check.feature_dim": f"null or {_WHOLE} from 1 to 65536",
       "input_check.rules": "null or an object of finite numbers (one per rule)",
       "input_check.rules.*": "a finite number", "data.train_counts.*": f"{_WHOLE}",
       "data.val_counts.*": f"{_WHOLE}", "data.class_map.*": "a list of folder names (text)",
       "input_check.summary": "null or an object",
       "tumour_map": "null or an object", "tumour_map.width": f"{_WHOLE} from 1 to 1024",
       "tumour_map.layers": "null or a list of up to 16 layer names", "tumour_map.masks": "null or a folder (text)",
       "data": "null or an object", "data.data_dir": "null, a folder or a list of folders (text)",
       "data.fingerprint": "null or text", "data.slices": f"null, middle, all or {_WHOLE} from 1 to {MAX_SLICES}",
       "data.class_map": "null or an object CLASS: [FOLDER, ...]",
       "data.sources": "null or an object SOURCE: {path, train_counts, val_counts}",
       "data.sources.path": "null or a folder (text)",
       "data.sources.train_counts": "null or an object CLASS: count", "data.sources.val_counts":
       "null or an object CLASS: count", "data.n_train": f"null or {_WHOLE} >= 0",
       "data.n_val": f"null or {_WHOLE} >= 0", "data.train_counts": "null or an object CLASS: count",
       "data.val_counts": "null or an object CLASS: count", "data.groups": f"null or {_WHOLE} >= 0",
       "data.skipped": "null or a list of {path, reason} objects",
       "weights": "null or an object", "weights.kind": "text", "weights.epochs": "null or a list of epochs"},
    num_classes="null or the number of classes", positive_class="null or one of the classes",
    threshold="null or a number from 0 to 1", status="null or text (running, finalising, complete)",
    pretrained="null, true or false", seed=f"null or {_WHOLE} from 0 to {MAX_SEED}",
    dicom_window="null or a DICOM window (auto, minmax or CENTER,WIDTH)",
    best_epoch=f"null or {_WHOLE} >= 0", wall_seconds="null or a number >= 0", versions="null or an object",
    gradcam_target_layer="null or a layer name", run_name="null or text", weights_fingerprint="null or text",
)


def validate_metadata(meta: Any, where: str = "metadata.json", error: type[Exception] = RunError) -> dict:
    """Check a run's metadata (``metadata.json``, or the JSON embedded in an ONNX export).

    Args:
        meta: the parsed JSON.
        where: what to name in messages (the file).
        error: the error type raised (:class:`~braintumor.errors.RunError`).

    Returns:
        ``meta`` itself (unchanged: unknown keys and the original values are kept).

    Raises:
        RunError: one line ``WHERE: FIELD must be ALLOWED, got VALUE`` (or ``FIELD is missing``).

    Example:
        >>> from braintumor.schema import validate_metadata
        >>> validate_metadata({"classes": ["no", "yes"], "model": "cnn", "img_size": 100000,
        ...                    "preprocessing": {}}, "run/metadata.json")
        Traceback (most recent call last):
        ...
        braintumor.errors.RunError: run/metadata.json: img_size must be a whole number from 32 to 1024, got 100000
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(meta, dict):
        raise error(f"{prefix}expected a JSON object of run metadata, got {_kind(meta)}")
    try:
        m = MetadataSchema.model_validate(meta)
    except ValidationError as exc:
        raise error(prefix + _first_error(exc, meta, METADATA_ALLOWED)) from None
    from .preprocess import INTENSITY_MODES

    def bad(field: str, value, allowed: str | None = None):
        return error(f"{prefix}{field} must be {allowed or METADATA_ALLOWED[field]}, got {_show(value)}")

    classes = m.classes
    if len(set(classes)) != len(classes) or any(not c.strip() for c in classes):
        raise bad("classes", classes)
    if m.num_classes is not None and m.num_classes != len(classes):
        raise bad("num_classes", m.num_classes, f"the number of classes ({len(classes)})")
    if m.positive_class is not None and m.positive_class not in classes:
        raise bad("positive_class", m.positive_class, f"null or one of the classes ({', '.join(classes)})")
    pre = m.preprocessing
    if pre.img_size != m.img_size:
        raise bad("preprocessing.img_size", pre.img_size, f"img_size ({m.img_size})")
    if pre.intensity not in INTENSITY_MODES:
        raise bad("preprocessing.intensity", pre.intensity)
    data = m.data
    if data is not None and data.slices is not None:
        from .data.slices import parse_slices

        try:
            parse_slices(data.slices)
        except UsageError:
            raise bad("data.slices", data.slices) from None
    if m.dicom_window is not None:
        from .data.dicom import parse_window

        try:
            parse_window(m.dicom_window)
        except (UsageError, ValueError):
            raise bad("dicom_window", m.dicom_window) from None
    if m.input_check is not None and m.input_check.rules:
        from .input_rules import InputRules

        known = InputRules.__dataclass_fields__
        for k, v in m.input_check.rules.items():
            if k in known and (isinstance(v, bool) or (known[k].type in (int, "int") and v != int(v))):
                raise bad(f"input_check.rules.{k}", v, "a whole number" if known[k].type in (int, "int")
                          else "a finite number")
    _check_model(m.model, prefix, error)
    return meta


def read_metadata_file(path: str | Path, error: type[Exception] = RunError) -> dict:
    """Read and check a run's ``metadata.json`` (see :func:`validate_metadata`).

    Raises:
        RunError: no such file, unreadable, larger than :data:`MAX_METADATA_BYTES`, empty, not JSON, not an
            object, or a field that breaks the schema: one line naming the file.

    Example:
        >>> from braintumor.schema import read_metadata_file
        >>> read_metadata_file("runs/demo/metadata.json")["classes"]     # doctest: +SKIP
        ['no', 'yes']
    """
    path = Path(path)
    raw = _read_capped(path, MAX_METADATA_BYTES, "metadata file", error)
    return validate_metadata(parse_json(raw, str(path), error), str(path), error)


def parse_json(raw: bytes | str, where: str, error: type[Exception] = RunError) -> Any:
    """JSON text -> Python, any failure (empty, not UTF-8, invalid, too deep, huge numbers) as one ``error`` line.

    Example:
        >>> from braintumor.schema import parse_json
        >>> parse_json(b"", "run/metadata.json")
        Traceback (most recent call last):
        ...
        braintumor.errors.RunError: run/metadata.json: empty file (expected a JSON object of run metadata)
    """
    if not (raw.strip() if isinstance(raw, str) else raw.strip()):
        raise error(f"{where}: empty file (expected a JSON object of run metadata)")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise error(f"{where}: not JSON (binary data, not UTF-8 text)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise error(f"{where}: not usable JSON (nested too deeply)") from None
    except (ValueError, OverflowError) as exc:
        raise error(f"{where}: not usable JSON ({_one_line(exc)})") from None


# ----------------------------------------------------------------------------------------------------- helpers


def _read_capped(path: Path, limit: int, what: str, error: type[Exception]) -> bytes:
    try:
        if path.is_dir():
            raise error(f"{path}: a folder, not a {what}")
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or _one_line(exc)})") from None
    except ValueError as exc:  # an embedded NUL in the path
        raise error(f"{path!r}: not a usable path ({_one_line(exc)})") from None
    if len(raw) > limit:
        raise error(f"{path}: larger than {limit >> 20} MiB: not a {what}")
    return raw


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, Mapping):
        return "an object"
    if isinstance(v, str):
        return "text"
    if isinstance(v, int):
        return "a whole number"
    if isinstance(v, float):
        return "a decimal number"
    return type(v).__name__


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _one_line(exc: Any) -> str:
    return _clip(str(exc) or type(exc).__name__, 200)


def _show(v: Any) -> str:
    """A value as a message shows it: JSON/YAML-like, short, on one line."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else {"inf": "Infinity", "-inf": "-Infinity"}.get(repr(v), "NaN")
    if isinstance(v, int):
        s = str(v) if abs(v) < 10**30 else f"a {len(str(abs(v)))}-digit number"
        return s
    if isinstance(v, str):
        return repr(_clip(v, 60)) if len(v) <= 60 else repr(v[:57]) + "..."
    try:
        text = json.dumps(v, default=str, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = type(v).__name__
    return _clip(text, 60)


_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "list_type", "dict_type", "model_type",
                "none_required", "model_attributes_type", "int_from_float", "dataclass_type"}


def _is_tag(c: Any) -> bool:
    """Whether a pydantic error location component names a union member (``list[str]``), not a field."""
    return isinstance(c, str) and (not c.isidentifier() or c in ("str", "int", "float", "bool", "none"))


def _walk(data: Any, loc: list) -> Any:
    for c in loc:
        try:
            data = data[c]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _first_error(exc: ValidationError, data: Mapping, allowed: dict[str, str]) -> str:
    """One line for a pydantic error: ``FIELD must be ALLOWED, got VALUE``, the field most worth naming first."""
    errors = exc.errors(include_url=False)
    # union members each report: name the field of the first error and describe it as a whole
    err = errors[0]
    loc = [c for c in err["loc"] if not _is_tag(c)]
    keys = [c for c in loc if isinstance(c, str)]
    best, described = None, None
    for n in range(len(keys), 0, -1):
        key, any_key = ".".join(keys[:n]), ".".join([*keys[:n - 1], "*"])
        if key in allowed or any_key in allowed:
            best, described = key, key if key in allowed else any_key
            break
    if best is None:
        field, value, text = ".".join(map(str, loc)) or "value", err.get("input"), err["msg"].lower()
        return f"{field}: {text}, got {_show(value)}"
    # the location up to the described field (list indices inside it are shown as the whole list)
    n_keys = best.count(".") + 1
    upto, seen = [], 0
    for c in loc:
        if isinstance(c, str):
            if seen == n_keys:
                break
            seen += 1
        upto.append(c)
    while upto and isinstance(upto[-1], int):
        upto.pop()
    field = "".join(f"[{c}]" if isinstance(c, int) else (f".{c}" if i else c) for i, c in enumerate(upto))
    if err["type"] == "missing" and len(upto) == len(loc):
        return f"{field} is missing (it must be {allowed[described]})"
    value = _walk(data, upto)
    kind = f" ({_kind(value)})" if value is not None and err["type"] in _TYPE_ERRORS and len(upto) == len(loc) else ""
    return f"{field} must be {allowed[described]}, got {_show(value)}{kind}"
