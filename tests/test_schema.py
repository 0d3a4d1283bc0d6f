"""One schema for configs, run metadata and ONNX metadata: every bad value is one line naming the file, the field, the
value and what is allowed, before any work starts; legitimate configs, recipes and runs (new and old) still load.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from braintumor.backends import load_predictor
from braintumor.cli import app
from braintumor.config import TrainConfig
from braintumor.errors import RunError, UsageError
from braintumor.inference import Predictor, load_run
from braintumor.rundir import RunDir
from braintumor.schema import parse_json, read_config_file, validate_config, validate_metadata
from conftest import copy_run, old_run_copy

runner = CliRunner()


def _one_line_exit_2(r, *fragments: str) -> None:
    """Exit 2, no traceback, and one error line (after any notice) holding every fragment."""
    out = r.output.strip()
    assert r.exit_code == 2, out
    lines = out.splitlines()
    assert "Traceback" not in out and [ln for ln in lines if "error" in ln] == lines[-1:], out
    out = lines[-1]
    assert out.startswith("error:"), out
    for f in fragments:
        assert f in out, (f, out)


# ------------------------------------------------------------------------------------------------------ configs

BAD_CONFIGS = [  # (YAML, field, value as shown, words of what is allowed)
    ("seed: -1", "seed", "-1", "from 0 to 4294967295"),
    ("seed: 1e30", "seed", "'1e30' (text)", "whole number"),  # YAML 1.1: a string (no dot)
    ("seed: 1.0e+30", "seed", "1e+30 (a decimal number)", "whole number"),
    ('img_size: "224"', "img_size", "'224' (text)", "from 32 to 1024"),
    ("img_size: 100000", "img_size", "100000", "from 32 to 1024"),
    ("batch_size: null", "batch_size", "null", "from 1 to 4096"),
    ("epochs: 3.0", "epochs", "3.0 (a decimal number)", "whole number"),
    ("epochs_frozen: 20000", "epochs_frozen", "20000", "from 0 to 10000"),
    ("label_smoothing: 5", "label_smoothing", "5", ">= 0 and < 1"),
    ("weight_decay: -1", "weight_decay", "-1", ">= 0"),
    ("num_threads: -2", "num_threads", "-2", "from 1 to 1024"),
    ("num_workers: 1000", "num_workers", "1000", "from 0 to 256"),
    ("device: banana", "device", "'banana'", "auto, cpu, cuda, cuda:N or mps"),
    ("lr: 0", "lr", "0", "> 0"),
    ("lr: .nan", "lr", "NaN", "> 0"),
    ("target_sensitivity: 2", "target_sensitivity", "2", "between 0 and 1"),
    ("precision: fp8", "precision", "'fp8'", "auto, fp32, bf16 or fp16"),
    ("augment: 1", "augment", "1 (a whole number)", "true or false"),
    ("data_dir: [a, 3]", "data_dir", '["a", 3]', "folder"),
    ("slices: 0", "slices", "0", "middle, all or"),
    ("val_fraction: 1", "val_fraction", "1", "between 0 and 1"),
    ("mixup: -1", "mixup", "-1", ">= 0"),
    ("seed: 2024-01-01", "seed", '"2024-01-01" (date)', "whole number"),
]


@pytest.mark.parametrize("text,field,shown,allowed", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_value_is_one_line_naming_file_field_value_and_allowed(tmp_path, text, field, shown, allowed):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(UsageError) as err:
        TrainConfig.load(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {field} must be "), msg
    assert allowed in msg and f"got {shown}" in msg, msg


def test_the_same_values_are_refused_in_python_and_on_the_command_line(tmp_path):
    with pytest.raises(UsageError, match=r"^img_size must be a whole number from 32 to 1024, got '224' \(text\)$"):
        TrainConfig(img_size="224")
    with pytest.raises(UsageError, match="^batch_size must be"):
        TrainConfig(batch_size=None)
    with pytest.raises(UsageError, match="^unknown config key"):
        TrainConfig.from_dict({"epochz": 3})
    r = runner.invoke(app, ["train", str(tmp_path), "--img-size", "5", "--out", str(tmp_path / "run")])
    _one_line_exit_2(r, "img_size must be a whole number from 32 to 1024, got 5")
    assert not (tmp_path / "run").exists()


def test_unambiguous_values_are_taken(tmp_path):
    cfg = TrainConfig(data_dir=tmp_path, lr=1, seed=np.int64(3), mixup=np.float32(0.5), slices="4", device="cuda:1")
    assert cfg.data_dir == str(tmp_path) and isinstance(cfg.data_dir, str)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.seed == 3 and type(cfg.seed) is int
    assert cfg.mixup == 0.5 and cfg.slices == 4
    path = tmp_path / "ok.yaml"
    path.write_text("lr_frozen: 1\nclasses:\n  tumour: [glioma, yes]\n  no_tumour: [no]\nimg_size: 1024\nseed: "
                    "4294967295\nnum_threads: null\ntarget_sensitivity: 0.95\n")
    cfg = TrainConfig.load(path)
    assert cfg.classes == {"tumour": ["glioma", "yes"], "no_tumour": ["no"]}  # YAML's yes/no booleans: folders
    assert (cfg.lr_frozen, cfg.img_size, cfg.seed) == (1.0, 1024, 2**32 - 1)


def test_every_recipe_the_defaults_and_a_saved_config_still_load(tmp_path):
    from importlib import resources

    folder = resources.files("braintumor") / "recipes"
    names = [p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")]
    assert names
    for name in names:
        cfg = TrainConfig.recipe(name, data_dir=["a", "b"])
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    cfg = TrainConfig(data_dir=["a", "b"], classes=["t=x,y", "n=z"], model="cnn", img_size=64, epochs=3,
                      target_sensitivity=0.9, num_threads=2, group_by="id-runs", slices="all")
    cfg.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == cfg
    assert TrainConfig.load(_write(tmp_path / "empty.yaml", "")) == TrainConfig()


def _write(path: Path, content: str | bytes) -> Path:
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.mark.parametrize("kind", ["folder", "binary", "list", "scalar", "invalid", "python-tag", "huge", "missing",
                                  "nul"])
def test_a_config_file_that_is_not_a_mapping_is_one_line(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = {
        "folder": lambda: (tmp_path / "cfgdir").mkdir() or tmp_path / "cfgdir",
        "binary": lambda: _write(tmp_path / "c.yaml", bytes(range(256)) * 4),
        "list": lambda: _write(tmp_path / "c.yaml", "- img_size\n- 224\n"),
        "scalar": lambda: _write(tmp_path / "c.yaml", "224\n"),
        "invalid": lambda: _write(tmp_path / "c.yaml", "img_size: [224\n"),
        "python-tag": lambda: _write(tmp_path / "c.yaml",
                                     f"seed: !!python/object/apply:os.system ['touch {marker}']\n"),
        "huge": lambda: _write(tmp_path / "c.yaml", "# " + "x" * (1 << 20) + "\n"),
        "missing": lambda: tmp_path / "nope.yaml",
        "nul": lambda: _write(tmp_path / "c.yaml", "seed: 1\x00\n"),
    }[kind]()
    with pytest.raises(UsageError) as err:
        TrainConfig.load(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: ")
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", str(tmp_path), "--config", str(path), "--out", str(out)])
    _one_line_exit_2(r, str(path))
    assert not out.exists() and not marker.exists()


def test_a_bad_config_fails_before_training_or_a_run_folder(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(importlib.import_module("braintumor.training"), "train", lambda *a, **k: called.append(1))
    bad = _write(tmp_path / "bad.yaml", "model: cnn\nepochs: 3.0\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", str(tmp_path), "--config", str(bad), "--out", str(out)])
    _one_line_exit_2(r, f"{bad}: epochs must be a whole number from 0 to 10000, got 3.0 (a decimal number)")
    assert not called and not out.exists()
    r = runner.invoke(app, ["train", str(tmp_path), "--config", str(bad), "--recipe", "tumour-detector"])
    _one_line_exit_2(r, "give --config or --recipe, not both")
    r = runner.invoke(app, ["cv", str(tmp_path), "--config", str(bad), "--out", str(out)])
    _one_line_exit_2(r, "epochs must be")
    assert not called and not out.exists()


def test_read_config_file_gives_the_mapping(tmp_path):
    assert read_config_file(_write(tmp_path / "c.yaml", "img_size: 64\n")) == {"img_size": 64}
    assert validate_config({"img_size": 64, "lr": 1}) == {"img_size": 64, "lr": 1.0}


# --------------------------------------------------------------------------------------------- run metadata


@pytest.fixture(scope="module")
def small_run(trained_run, phantoms):
    """conftest's tiny CNN run, trained by the current code (shared with other test files), and a few images."""
    images = sorted((phantoms / "yes").glob("*.png"))[:4] + sorted((phantoms / "no").glob("*.png"))[:4]
    return trained_run.run_dir, images


def test_a_run_trained_by_the_current_code_validates_loads_and_predicts_as_at_training(small_run):
    import csv

    run_dir, _ = small_run
    meta = RunDir(run_dir).read_metadata()
    assert meta["status"] == "complete" and "input_check" in meta
    assert validate_metadata(json.loads((run_dir / "metadata.json").read_text())) is not None
    pred = load_run(run_dir)
    rows = list(csv.DictReader(open(RunDir(run_dir).predictions, newline="")))[:8]
    got = pred.predict_paths([r["path"] for r in rows])
    for r, p in zip(rows, got, strict=True):
        assert p.label == r["predicted"]
        for c in pred.classes:
            assert abs(p.probabilities[c] - float(r[f"p_{c}"])) < 1e-5


def _mutated(src: Path, dst: Path, change) -> Path:
    run = copy_run(src, dst)
    path = run / "metadata.json"
    if callable(change):
        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta))
    else:
        path.write_bytes(change)
    return run


def _set(path: str, value):
    def change(meta):
        *parents, last = path.split(".")
        d = meta
        for k in parents:
            d = d.setdefault(k, {})
        d[last] = value
    return change


def _drop(key: str):
    return lambda meta: meta.pop(key)


BAD_METADATA = [  # (id, change, words the message must hold)
    ("empty", b"", ["empty file"]),
    ("whitespace", b"  \n", ["empty file"]),
    ("a list", b"[1, 2]", ["expected a JSON object", "got a list"]),
    ("invalid JSON", b'{"classes": [', ["not valid JSON"]),
    ("binary", bytes(range(256)), ["not JSON", "not UTF-8"]),
    ("deep", b"[" * 100000, ["not"]),
    ("no classes", _drop("classes"), ["classes is missing"]),
    ("no model", _drop("model"), ["model is missing"]),
    ("no img_size", _drop("img_size"), ["img_size is missing"]),
    ("no preprocessing", _drop("preprocessing"), ["preprocessing is missing"]),
    ("string threshold", _set("threshold", "0.5"), ["threshold must be null or a number from 0 to 1, got '0.5'"]),
    ("threshold 5", _set("threshold", 5), ["threshold must be", "got 5"]),
    ("huge img_size", _set("img_size", 100000), ["img_size must be a whole number from 32 to 1024, got 100000"]),
    ("img_size text", _set("img_size", "32"), ["img_size must be", "got '32' (text)"]),
    ("temperature -1", _set("calibration.temperature", -1), ["calibration.temperature must be", "got -1"]),
    ("temperature text", _set("calibration.temperature", "1.0"), ["calibration.temperature", "'1.0' (text)"]),
    ("temperature inf", _set("calibration.temperature", float("inf")), ["calibration.temperature", "Infinity"]),
    ("one class", _set("classes", ["yes"]), ["classes must be a list of 2 to 1000"]),
    ("duplicate classes", _set("classes", ["yes", "yes"]), ["classes must be", "distinct"]),
    ("positive class unknown", _set("positive_class", "maybe"), ["positive_class must be", "'maybe'"]),
    ("std zero", _set("preprocessing.std", [0, 0, 0]), ["preprocessing.std must be", "> 0"]),
    ("mean short", _set("preprocessing.mean", [0.5]), ["preprocessing.mean must be a list of three"]),
    ("preprocessing size differs", _set("preprocessing.img_size", 96), ["preprocessing.img_size must be img_size"]),
    ("intensity", _set("preprocessing.intensity", "zscore"), ["preprocessing.intensity must be none or percentile"]),
    ("check threshold text", _set("input_check.threshold", "high"), ["input_check.threshold must be"]),
    ("rule text", _set("input_check.rules", {"max_colour": "lots"}), ["input_check.rules.max_colour must be"]),
    ("slices", _set("data.slices", "half"), ["data.slices must be"]),
    ("unknown model", _set("model", "vgg99"), ["unknown model 'vgg99'"]),
    ("num_classes", _set("num_classes", 3), ["num_classes must be the number of classes (2), got 3"]),
    ("decoder width", _set("tumour_map", {"width": 0}), ["tumour_map.width must be"]),
    ("dicom window", _set("dicom_window", "bright"), ["dicom_window must be"]),
    ("data not object", _set("data", [1]), ["data must be null or an object"]),
]


@pytest.mark.parametrize("change,words", [c[1:] for c in BAD_METADATA], ids=[c[0] for c in BAD_METADATA])
def test_bad_metadata_is_one_run_error_naming_the_file_and_field(small_run, tmp_path, change, words):
    run = _mutated(small_run[0], tmp_path / "run", change)
    t0 = time.perf_counter()
    with pytest.raises(RunError) as err:
        load_run(run)
    assert time.perf_counter() - t0 < 1.0  # refused before anything is built (no 28 GiB model for 100000 px)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{run / 'metadata.json'}: "), msg
    for w in words:
        assert w in msg, (w, msg)
    with pytest.raises(RunError):
        RunDir(run).read_metadata()


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "explain"])
def test_every_command_refuses_bad_metadata_in_one_line(small_run, tmp_path, command):
    run_dir, images = small_run
    run = _mutated(run_dir, tmp_path / "run", _set("threshold", "0.5"))
    args = {"predict": [str(run), str(images[0])], "evaluate": [str(run), "--data", str(images[0].parent.parent)],
            "export": [str(run), "--out", str(tmp_path / "m.onnx")],
            "explain": [str(run), str(images[0]), "--out", str(tmp_path / "x")]}[command]
    r = runner.invoke(app, [command, *args])
    _one_line_exit_2(r, "metadata.json: threshold must be null or a number from 0 to 1, got '0.5' (text)")


def test_older_runs_without_recent_fields_and_extra_keys_still_load(small_run, tmp_path):
    run_dir, images = small_run
    ref = load_run(run_dir).predict_paths(images[:2])

    def strip(meta):
        for k in ("status", "calibration", "threshold", "threshold_info", "data", "num_classes", "dicom_window",
                  "input_check", "versions", "weights", "best_epoch", "positive_class"):
            meta.pop(k, None)
        for k in ("crop_detect_side", "intensity"):
            meta["preprocessing"].pop(k)
        meta["something_new"] = {"added": "later"}

    run = _mutated(run_dir, tmp_path / "old", strip)
    (run / "ood.npz").unlink(missing_ok=True)
    pred = load_run(run)
    assert pred.preprocessor.crop_detect_side == 0 and pred.input_check is None
    assert all(p.ok and p.label in ("no", "yes") for p in pred.predict_paths(images[:2]))
    old = load_run(old_run_copy(run_dir, tmp_path / "older"))  # conftest's 'before the input check'
    got = old.predict_paths(images[:2])
    for a, b in zip(ref, got, strict=True):
        assert a.probabilities == b.probabilities


@pytest.mark.parametrize("status", ["running", "finalising"])
def test_a_run_that_did_not_finish_is_refused_by_every_loader(small_run, tmp_path, status):
    run_dir, images = small_run
    run = _mutated(run_dir, tmp_path / "run", _set("status", status))
    expected = f"{run}: the run did not finish (status: {status}); finish it with `braintumor train --resume {run}`"
    for load in (lambda: Predictor.from_run(run), lambda: load_run(run), lambda: load_predictor(run),
                 lambda: load_predictor(run, backend="onnx")):
        with pytest.raises(RunError) as err:
            load()
        assert str(err.value) == expected
    assert RunDir(run).read_metadata()["status"] == status  # training itself (resume) still reads it
    assert Predictor.from_run(run, allow_incomplete=True).classes == ["no", "yes"]
    r = runner.invoke(app, ["predict", str(run), str(images[0])])
    _one_line_exit_2(r, "the run did not finish")


def test_a_checkpoint_whose_head_disagrees_with_the_classes_is_refused(small_run, tmp_path):
    run_dir, images = small_run

    def three(meta):
        meta["classes"] = ["a", "no", "yes"]
        meta.pop("num_classes", None)
        meta.pop("input_check", None)

    run = _mutated(run_dir, tmp_path / "three", three)
    with pytest.raises(RunError, match=r"head has 2 outputs but .*metadata.json lists 3 classes"):
        load_run(run)
    r = runner.invoke(app, ["predict", str(run), str(images[0])])
    _one_line_exit_2(r, "2 outputs", "3 classes")

    def renamed(meta):
        meta["classes"], meta["positive_class"] = ["healthy", "tumour"], "tumour"
        meta.pop("input_check", None)

    run = _mutated(run_dir, tmp_path / "renamed", renamed)
    with pytest.raises(RunError, match="trained for classes no, yes but .* lists healthy, tumour"):
        load_run(run)


def test_parse_json_never_raises_anything_else():
    assert parse_json(b'{"a": 1}', "m.json") == {"a": 1}
    for raw in (b"", b"nul\x00", b"\xff\xfe", b"[" * 50000, b"1" * 5000, b"{'a': 1}", b"NaN"):
        try:
            parse_json(raw, "m.json")
        except RunError as exc:
            assert "\n" not in str(exc)


# ------------------------------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_file(small_run, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from braintumor.export import export_onnx

    out = tmp_path_factory.mktemp("schema_onnx") / "m.onnx"
    export_onnx(small_run[0], out, n_check=4)
    return out


def _tampered(src: Path, dst: Path, change_meta=None, flat: dict | None = None) -> Path:
    import onnx

    from braintumor.export import METADATA_KEY

    proto = onnx.load_from_string(src.read_bytes())
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY and change_meta is not None:
            meta = json.loads(entry.value)
            change_meta(meta)
            entry.value = json.dumps(meta)
        elif flat and entry.key in flat:
            entry.value = flat[entry.key]
    dst.write_bytes(proto.SerializeToString())
    return dst


BAD_ONNX = [  # (id, change of the embedded metadata, flat entries, words)
    ("temperature -1", _set("calibration.temperature", -1), {"temperature": "-1.0"},
     ["calibration.temperature must be null or a finite number > 0, got -1"]),
    ("temperature text", _set("calibration.temperature", "2"), None, ["calibration.temperature", "'2' (text)"]),
    ("temperature nan", _set("calibration.temperature", float("nan")), None, ["calibration.temperature", "NaN"]),
    ("threshold 5", _set("threshold", 5), {"threshold": "5"}, ["threshold must be null or a number from 0 to 1"]),
    ("threshold text", _set("threshold", "0.5"), None, ["threshold must be", "'0.5' (text)"]),
    ("img_size vs graph", lambda m: (_set("img_size", 96)(m), _set("preprocessing.img_size", 96)(m)),
     {"img_size": "96"}, ["says img_size 96", "graph's input is ('batch', 3, 64, 64)"]),
    ("classes vs graph", lambda m: (_set("classes", ["a", "no", "yes"])(m), m.pop("num_classes", None)),
     {"classes": '["a", "no", "yes"]'}, ["lists 3 classes", "logits have shape ('batch', 2)"]),
    ("flat temperature", None, {"temperature": "-1.0"}, ["metadata entry 'temperature'", "altered"]),
    ("flat threshold", None, {"threshold": "0.9"}, ["metadata entry 'threshold'", "altered"]),
    ("no preprocessing", _drop("preprocessing"), None, ["preprocessing is missing"]),
]


@pytest.mark.parametrize("change,flat,words", [c[1:] for c in BAD_ONNX], ids=[c[0] for c in BAD_ONNX])
def test_tampered_onnx_metadata_is_refused_not_obeyed(onnx_file, small_run, tmp_path, change, flat, words):
    from braintumor.export import OnnxPredictor

    bad = _tampered(onnx_file, tmp_path / "bad.onnx", change, flat)
    with pytest.raises(RunError) as err:
        OnnxPredictor(bad)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}"), msg
    for w in words:
        assert w in msg, (w, msg)
    r = runner.invoke(app, ["predict", str(bad), str(small_run[1][0])])
    _one_line_exit_2(r, words[0])


def test_a_legitimate_export_loads_and_predicts_like_torch(onnx_file, small_run):
    from braintumor.export import OnnxPredictor

    run_dir, images = small_run
    onnx_pred, torch_pred = OnnxPredictor(onnx_file), load_run(run_dir)
    assert onnx_pred.temperature == torch_pred.temperature and onnx_pred.threshold == torch_pred.threshold
    a, b = onnx_pred.predict_paths(images), torch_pred.predict_paths(images)
    assert [p.label for p in a] == [p.label for p in b]
    assert max(abs(p.probabilities[c] - q.probabilities[c]) for p, q in zip(a, b, strict=True)
               for c in onnx_pred.classes) < 1e-4


def test_onnx_is_loaded_from_its_bytes_only(onnx_file, tmp_path):
    """No external-data files beside the model are read (a graph naming '../../etc/passwd' cannot pull it in)."""
    import onnx
    from onnx import numpy_helper

    from braintumor.export import OnnxPredictor

    proto = onnx.load_from_string(onnx_file.read_bytes())
    init = proto.graph.initializer[0]
    arr = numpy_helper.to_array(init)
    (tmp_path / "weights.bin").write_bytes(arr.tobytes())
    init.ClearField("raw_data")
    del init.float_data[:]
    init.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(arr.nbytes))):
        e = init.external_data.add()
        e.key, e.value = k, v
    ext = tmp_path / "ext.onnx"
    ext.write_bytes(proto.SerializeToString())
    with pytest.raises(RunError, match="not a loadable ONNX model"):
        OnnxPredictor(ext)
    shutil.rmtree(tmp_path)


def test_an_onnx_graph_with_a_custom_operator_is_not_loadable(onnx_file, tmp_path):
    """No custom-op library is ever registered: an operator onnxruntime does not ship cannot run."""
    import onnx
    from onnx import helper

    from braintumor.export import OnnxPredictor

    proto = onnx.load_from_string(onnx_file.read_bytes())
    graph = proto.graph
    first = graph.node[0]
    evil = helper.make_node("Pwn", list(first.input[:1]), ["pwned"], domain="evil.custom")
    graph.node.insert(0, evil)
    first.input[0] = "pwned"
    proto.opset_import.append(helper.make_opsetid("evil.custom", 1))
    bad = tmp_path / "custom.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(RunError, match="not a loadable ONNX model"):
        OnnxPredictor(bad)


def test_config_yaml_of_a_run_goes_through_the_schema_on_resume(small_run, tmp_path):
    run = copy_run(small_run[0], tmp_path / "run")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["batch_size"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["train", "--resume", str(run)])
    _one_line_exit_2(r, "config.yaml: batch_size must be a whole number from 1 to 4096, got null")


def test_builtin_model_names_are_the_shipped_registry():
    """schema.BUILTIN_MODELS lets a run be checked without importing the models (and torch): it must name exactly
    the models braintumor's own modules register; a user's registered model is still checked by the registry."""
    from braintumor.models import available_models, get_spec
    from braintumor.schema import BUILTIN_MODELS

    shipped = [m for m in available_models() if get_spec(m).build.__module__.startswith("braintumor.models")]
    assert list(BUILTIN_MODELS) == shipped
