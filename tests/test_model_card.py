"""The model card of a run: filled from the run's own files, escaped, embedded in the ONNX export."""

from __future__ import annotations

import csv
import html
import json
import shutil

import numpy as np
import pytest

from braintumor.errors import RunError
from braintumor.model_card import (
    CARD_FILE,
    md,
    model_card_text,
    predictor_model_card,
    render_model_card,
    run_model_card,
    write_model_card,
)
from conftest import old_run_copy

SECTIONS = ("## Model details", "## Intended use", "## Training data", "## Preprocessing", "## Evaluation",
            "## Calibration", "## Input check", "## Known failure modes", "## Licence of the weights",
            "## How to use")


def _copy(trained_run, dst):
    """The whole run folder, checkpoints left out (the card does not read them)."""
    return shutil.copytree(trained_run.run_dir, dst, ignore=shutil.ignore_patterns("*.pt", "*.onnx"))


def _json(path):
    return json.loads(path.read_text())


def test_card_sections_filled_from_a_real_run(trained_run):
    root = trained_run.run_dir
    text = model_card_text(root)
    meta, metrics = _json(root / "metadata.json"), _json(root / "metrics.json")

    head, front, body = text.split("---\n", 2)
    assert head == "" and "license: other" in front and "library_name: braintumor" in front
    assert "- accuracy" in front and '- "not-a-medical-device"' in front
    positions = [body.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "Research use only. Not a medical device" in body and "not for diagnosis" in body
    # validation metrics and their 95% intervals, exactly metrics.json's
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
        ci = metrics["ci"][key]
        assert f"| {key} | {metrics[key]:.3f} | [{ci['low']:.3f}, {ci['high']:.3f}] |" in body
    n = metrics["confusion_matrix"]
    assert f"| no | {n[0][0]} | {n[0][1]} |" in body and f"| yes | {n[1][0]} | {n[1][1]} |" in body
    assert f"({metrics['n']} images; best checkpoint" in body
    # data, preprocessing, calibration and input check from metadata.json
    data = meta["data"]
    assert f"`{data['fingerprint']}`" in body
    assert f"Training images: {data['n_train']} (no {data['train_counts']['no']}, yes {data['train_counts']['yes']})" \
        in body
    assert "resize to 64 x 64 px" in body and "Brain crop" in body and "Intensity: unchanged" in body
    assert f"T = {meta['calibration']['temperature']:.3f}" in body
    assert f"ECE): {meta['calibration']['ece_before']:.3f} before, {meta['calibration']['ece_after']:.3f} after" in body
    check = meta["input_check"]
    assert f"above {check['threshold']:.3f}" in body
    assert f"{100 * check['summary']['val_uncertain']:.1f}% uncertain" in body
    # failure modes: the run's own audit and the project's general measurements, stated as such
    audit = _json(root / "audit.json")
    assert f"Duplicates: {audit['n_distinct']} distinct of {audit['n_readable']} readable images" in body
    assert "8 to 33 points" in body and "Grad-CAM maps often miss the lesion" in body
    assert "general, not measured on this run" in body
    assert "Random initialisation" in body.split("## Licence of the weights")[1]
    assert f'bt.load_run("runs/{root.name}")' in body


def test_write_is_atomic_and_the_written_file_is_the_card(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path / "run")
    (run / CARD_FILE).unlink(missing_ok=True)
    assert run_model_card(run) == model_card_text(run)  # no file: generated, nothing written
    assert not (run / CARD_FILE).exists()
    path = write_model_card(run)
    assert path == run / CARD_FILE and path.read_text() == model_card_text(run)
    assert not list(run.glob(f".{CARD_FILE}.*"))  # no temporary file left behind
    path.write_text("# edited by its owner\n")
    assert run_model_card(run) == "# edited by its owner\n"


def test_old_run_without_input_check_metrics_or_audit(trained_run, tmp_path):
    run = old_run_copy(trained_run.run_dir, tmp_path / "old")  # metadata, config, split, checkpoint only
    text = model_card_text(run)
    assert all(s in text for s in SECTIONS)
    assert "No `metrics.json` in this run" in text and "has no input check" in text
    assert "No data audit in this run" in text
    with pytest.raises(RunError, match="not a run folder"):
        model_card_text(tmp_path)


def test_untrusted_names_are_escaped(trained_run, tmp_path):
    pytest.importorskip("markdown_it")
    from markdown_it import MarkdownIt

    run = _copy(trained_run, tmp_path / "run")
    bad = {"no": "<img src=x onerror=alert(1)>", "yes": "*yes*|[click](https://evil.example)"}
    meta, metrics = _json(run / "metadata.json"), _json(run / "metrics.json")
    meta["classes"] = [bad[c] for c in meta["classes"]]
    meta["positive_class"] = bad[meta["positive_class"]]
    for key in ("train_counts", "val_counts"):
        meta["data"][key] = {bad[c]: n for c, n in meta["data"][key].items()}
    meta["run_name"] = "run\n# injected heading"
    metrics["classes"] = meta["classes"]
    metrics["per_class"] = {bad[c]: v for c, v in metrics["per_class"].items()}
    (run / "metadata.json").write_text(json.dumps(meta))
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "audit.json").write_text(json.dumps({"warnings": ["<script>alert(1)</script> in a file name"]}))

    text = model_card_text(run)
    assert "<img" not in text and "<script" not in text and "\n# injected" not in text
    assert md(bad["no"]) == "&lt;img src=x onerror=alert(1)&gt;"
    assert md(bad["yes"]) == r"\*yes\*\|\[click\](https://evil.example)"
    assert f"| {md(bad['no'])} | " in text  # a table row of the confusion matrix, its cells intact
    page = MarkdownIt("commonmark").enable("table").render(text.split("---\n", 2)[2])
    assert "<img" not in page and "<script" not in page and "<a href" not in page and "<em>" not in page
    assert html.escape(bad["no"], quote=False) in page and "*yes*|[click](https://evil.example)" in html.unescape(page)
    assert page.count("<h1>") == 1 and "<h1>injected" not in page and "# injected heading" in page


def test_per_source_figures_join_split_and_predictions(trained_run, tmp_path):
    from sklearn.metrics import balanced_accuracy_score

    run = _copy(trained_run, tmp_path / "run")
    meta = _json(run / "metadata.json")
    src = next(iter(meta["data"]["sources"].values()))
    meta["data"]["sources"] = {"siteA": dict(src), "siteB": dict(src)}
    (run / "metadata.json").write_text(json.dumps(meta))
    with open(run / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows):
        r["source"] = "siteA" if i % 2 else "siteB"
    with open(run / "split.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    source = {r["path"]: r["source"] for r in rows if r["subset"] == "val"}
    with open(run / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))

    text = model_card_text(run)
    assert "Per source (validation images of each source" in text
    for name in ("siteA", "siteB"):
        mine = [p for p in preds if source[p["path"]] == name]
        y, yp = [p["label"] for p in mine], [p["predicted"] for p in mine]
        ba = balanced_accuracy_score(y, yp)
        assert f"| {name} | {len(mine)} | {ba:.3f} [" in text
    assert sum(source[p["path"]] == "siteA" for p in preds) + sum(source[p["path"]] == "siteB" for p in preds) \
        == len(preds)


def test_evaluations_on_other_folders_are_listed(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path / "run")
    m = dict(_json(run / "metrics.json"), n=37, balanced_accuracy=0.6125)
    (run / "evaluations" / "other_site").mkdir(parents=True)
    (run / "evaluations" / "other_site" / "metrics.json").write_text(json.dumps(m))
    text = model_card_text(run)
    assert "| other\\_site | 37 | 0.613 " in text and "cross-source result" in text


def test_onnx_export_embeds_the_card_and_older_exports_get_one(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from braintumor.export import OnnxPredictor, export_onnx
    from braintumor.model_card import MODEL_CARD_KEY, embedded_model_card

    path = export_onnx(trained_run.run_dir, tmp_path / "model.onnx", n_check=8).path
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props[MODEL_CARD_KEY] == run_model_card(trained_run.run_dir)
    pred = OnnxPredictor(path)
    assert embedded_model_card(pred.session) == props[MODEL_CARD_KEY]
    assert predictor_model_card(pred) == props[MODEL_CARD_KEY]

    proto = onnx.load(str(path))  # an export made before cards existed: generated from its metadata
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != MODEL_CARD_KEY]
    del proto.metadata_props[:]
    for k, v in keep:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    old = OnnxPredictor(proto.SerializeToString())
    assert embedded_model_card(old.session) is None
    card = predictor_model_card(old)
    assert card == render_model_card(old.metadata, name=old.metadata["run_name"])
    assert "## Preprocessing" in card and "No `metrics.json` in this run" in card
    assert f"T = {old.temperature:.3f}" in card


def test_render_handles_malformed_values():
    meta = {"model": "cnn", "classes": ["no", "yes"], "img_size": 64, "preprocessing": {"img_size": 64},
            "calibration": {"temperature": "hot"}, "data": {"sources": {"a": "not a dict"}, "fingerprint": "x<y"},
            "weights": {"kind": "weight average (swa)", "epochs": [3, 5]}}
    metrics = {"accuracy": "0.9", "balanced_accuracy": float("nan"), "f1": 0.5, "ci": {"f1": {"low": "a"}},
               "confusion_matrix": [[1, 2]], "classes": ["no", "yes"], "per_class": {"no": 3}}
    text = render_model_card(meta, metrics, {"warnings": "not a list", "n_distinct": np.float64(3)}, {"lr": [1]})
    assert all(s in text for s in SECTIONS)
    assert "| f1 | 0.500 | - |" in text and "| accuracy |" not in text
    assert "average of epochs 3-5" in text and "x&lt;y" in text and "No temperature recorded" in text


def test_cli_writes_a_card_for_an_old_run_and_evaluate_refreshes_it(trained_run, phantoms_test, tmp_path):
    from typer.testing import CliRunner

    from braintumor.cli import app
    from braintumor.evaluation import evaluate

    old = shutil.copytree(trained_run.run_dir, tmp_path / "old", ignore=shutil.ignore_patterns("*.onnx", "evaluations"))
    (old / CARD_FILE).unlink()                                     # a run made before cards existed
    r = CliRunner().invoke(app, ["model-card", str(old)])
    assert r.exit_code == 0, r.output
    card = (old / CARD_FILE).read_text()
    assert "## Intended use" in card and "phantoms_test" not in card
    evaluate(old, phantoms_test)                                   # into old/evaluations/<folder name>/
    name = phantoms_test.resolve().name
    assert (old / "evaluations" / name / "metrics.json").is_file()
    assert name.replace("_", "\\_") in (old / CARD_FILE).read_text()   # refreshed: lists the evaluation
    r = CliRunner().invoke(app, ["model-card", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and "Traceback" not in r.output
