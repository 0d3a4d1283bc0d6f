"""Property-based fuzzing of the schema (hypothesis): configs and run metadata built from random values, random
bytes and truncations of real files. Whatever the input, the readers either accept it (and then everything built
from it works) or refuse it with the expected one-line error: never another exception.

CI-sized: ``BT_FUZZ_EXAMPLES`` examples per target (default 2000), derandomised so a run is reproducible.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from braintumor.config import TrainConfig  # noqa: E402
from braintumor.errors import RunError, UsageError  # noqa: E402
from braintumor.schema import (  # noqa: E402
    MAX_IMG_SIZE,
    MIN_IMG_SIZE,
    ConfigSchema,
    parse_json,
    read_config_file,
    validate_metadata,
)

EXAMPLES = int(os.environ.get("BT_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])

# any JSON/YAML-like value, with the edge cases that broke loaders before (huge numbers, NaN, text digits, nesting)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 5000), st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2, 2), st.text(max_size=12), st.sampled_from(["224", "3.0", "auto", "cpu", "cuda:0", "banana", "",
                                                             "middle", "all", "none", "percentile", "fp16", "1e30",
                                                             "a\x00b", "cnn", "yes", "no", "onecycle"]),
    st.sampled_from([10**40, -(10**40), 2**32, 2**32 - 1, 1e30, 3.0, 0.5, 1, 0, -1]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)

CONFIG_FIELDS = list(ConfigSchema.model_fields)


# values a field accepts (its default and the edges of its bounds), so that accepted configs are explored too
VALID = {name: [f.default] for name, f in ConfigSchema.model_fields.items()}
VALID.update(seed=[0, 2**32 - 1, 7], img_size=[32, 1024, 96], batch_size=[1, 4096], epochs=[0, 10_000],
             epochs_frozen=[0, 3], lr=[None, 1, 1e-5], lr_frozen=[1, 0.5], weight_decay=[0, 0.1],
             label_smoothing=[0, 0.999], num_threads=[None, 1, 1024], num_workers=[0, 256], val_fraction=[0.01, 0.99],
             device=["auto", "cpu", "cuda", "cuda:3", "mps"], slices=["middle", "all", 3, "12"],
             target_sensitivity=[None, 0.5, 0.999], min_confidence=[0, 1], ood_quantile=[0.5, 0.999],
             classes=[None, {"t": ["a", "b"], "n": "c"}, ["t=a,b", "n=c"], {"t": [True], "n": [False]}],
             data_dir=["d", ["a", "b"], ["a"]], model=["cnn", "resnet18"], intensity=["none", "percentile"],
             precision=["auto", "fp32", "bf16", "fp16"], scheduler=["onecycle", "constant", "cosine"],
             group_by=[None, "id-runs"], mixup=[0, 0.2], mask_weight=[0, 2.5], patience=[0, 20])


@st.composite
def config_dicts(draw):
    """Configs whose fields take valid or random values (and now and then an unknown key)."""
    d = {}
    for key in draw(st.lists(st.sampled_from(CONFIG_FIELDS + ["epochz", 3]), max_size=6)):
        if key in VALID and draw(st.integers(0, 3)):
            d[key] = draw(st.sampled_from(VALID[key]))
        else:
            d[key] = draw(values)
    return d


@FUZZ
@given(config_dicts())
def test_fuzz_config_values(d):
    try:
        cfg = TrainConfig.from_dict(d)
    except UsageError as exc:
        assert "\n" not in str(exc) and str(exc)
        event("refused")
        return
    event("accepted")
    # accepted: bounded, typed, and it round-trips
    assert MIN_IMG_SIZE <= cfg.img_size <= MAX_IMG_SIZE and type(cfg.img_size) is int
    assert 1 <= cfg.batch_size <= 4096 and 0 <= cfg.epochs <= 10_000 and 0 <= cfg.seed < 2**32
    assert cfg.num_threads is None or 1 <= cfg.num_threads <= 1024
    assert 0 <= cfg.label_smoothing < 1 and cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)
    assert cfg.lr is None or (cfg.lr > 0 and math.isfinite(cfg.lr))
    assert cfg.target_sensitivity is None or 0 < cfg.target_sensitivity < 1
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


yaml_text = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(lambda k, v: f"{k}: {v}\n", st.sampled_from(CONFIG_FIELDS), st.text(max_size=20)),
    st.builds(lambda k, n: f"{k}: " + "[" * n + "]" * n, st.sampled_from(CONFIG_FIELDS), st.integers(0, 300)),
    st.sampled_from(["a: &a [*a]\n", "seed: !!python/object/apply:os.system ['true']\n", "- 1\n- 2\n",
                     "img_size: !!binary aGk=\n", "seed: 2024-01-01\n", "? [a, b]\n: c\n", "epochs: 0x10\n",
                     "lr: .inf\n", "lr: .nan\n", "classes: {a: [[1]]}\n", "classes: [1, 2]\n"]),
)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@FUZZ
@given(content=yaml_text)
@example(content="seed: " + "[" * 3000 + "]" * 3000)
def test_fuzz_config_files(scratch, content):
    path = scratch / "c.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    try:
        data = read_config_file(path)
        TrainConfig.from_dict(data, str(path))
    except UsageError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{path}: ")


def _base_metadata() -> dict:
    from braintumor.ood import InputRules
    from braintumor.preprocess import Preprocessor

    return {
        "model": "cnn", "classes": ["no", "yes"], "num_classes": 2, "positive_class": "yes", "img_size": 64,
        "preprocessing": Preprocessor(img_size=64, crop_detect_side=256).to_dict(), "threshold": None,
        "calibration": {"temperature": 1.3, "method": "temperature"}, "status": "complete",
        "data": {"data_dir": "d", "fingerprint": "abc", "slices": "middle", "n_train": 10, "n_val": 4,
                 "train_counts": {"no": 5, "yes": 5}, "skipped": [{"path": "x.png", "reason": "truncated"}],
                 "sources": {"d": {"path": "d", "train_counts": {"no": 5}}}},
        "input_check": {"file": "ood.npz", "threshold": 2.0, "quantile": 0.99, "min_confidence": 0.6,
                        "feature_dim": 8, "rules": InputRules().to_dict()},
        "tumour_map": {"width": 32, "layers": ["backbone"]}, "dicom_window": "auto", "seed": 0,
        "weights": {"kind": "weight average (swa)", "epochs": [3, 4]}, "best_epoch": 4,
    }


PATHS = ["model", "classes", "num_classes", "positive_class", "img_size", "preprocessing", "threshold",
         "calibration", "calibration.temperature", "status", "data", "data.slices", "data.sources",
         "data.train_counts", "data.skipped", "input_check", "input_check.threshold", "input_check.rules",
         "input_check.rules.min_side", "input_check.min_confidence", "input_check.quantile", "tumour_map",
         "tumour_map.width", "tumour_map.layers", "dicom_window", "seed", "weights", "weights.epochs",
         "preprocessing.img_size", "preprocessing.mean", "preprocessing.std", "preprocessing.crop_threshold",
         "preprocessing.intensity", "preprocessing.crop_detect_side", "something_new", "data.class_map"]


@st.composite
def metadata_dicts(draw):
    meta = json.loads(json.dumps(_base_metadata()))
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=4)):
        *parents, last = path.split(".")
        d = meta
        for k in parents:
            d = d.get(k) if isinstance(d, dict) else None
        if not isinstance(d, dict):
            continue
        if draw(st.integers(0, 5)) == 0:
            d.pop(last, None)
        else:
            d[last] = draw(values)
    return meta


@FUZZ
@given(metadata_dicts())
def test_fuzz_metadata_values(meta):
    try:
        assert validate_metadata(meta, "run/metadata.json") is meta
    except RunError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("run/metadata.json: ")
        event("refused")
        return
    event("accepted")
    # accepted: what the loaders build from it works
    from braintumor.data.dicom import parse_window
    from braintumor.data.slices import run_slices
    from braintumor.export import _prediction_settings
    from braintumor.inference import require_complete
    from braintumor.ood import InputCheck
    from braintumor.preprocess import Preprocessor

    pre = Preprocessor.from_dict(meta["preprocessing"])
    assert pre.img_size == meta["img_size"] and MIN_IMG_SIZE <= pre.img_size <= MAX_IMG_SIZE
    InputCheck.from_metadata(meta, arrays={})
    run_slices(meta)
    _prediction_settings(meta)
    if meta.get("dicom_window") is not None:
        parse_window(meta["dicom_window"])
    t = (meta.get("calibration") or {}).get("temperature")
    assert t is None or (t > 0 and math.isfinite(t))
    assert meta.get("threshold") is None or 0 <= meta["threshold"] <= 1
    assert meta.get("positive_class") in (None, *meta["classes"])
    try:
        require_complete("run", meta)
    except RunError as exc:
        assert "did not finish" in str(exc)


GOOD_JSON = json.dumps(_base_metadata(), indent=2).encode()


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.integers(0, len(GOOD_JSON)).map(lambda n: GOOD_JSON[:n]),
    st.tuples(st.integers(0, len(GOOD_JSON) - 1), st.integers(0, 255)).map(
        lambda t: GOOD_JSON[:t[0]] + bytes([t[1]]) + GOOD_JSON[t[0] + 1:]),
))
def test_fuzz_metadata_bytes(raw):
    try:
        validate_metadata(parse_json(raw, "m.json"), "m.json")
    except RunError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("m.json: ")
