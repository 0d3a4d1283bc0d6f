"""The input check in `evaluate` (metrics.json block, predictions.csv columns, ood_scores.png) and in the run report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintumor.evaluation import CHECK_COLUMNS, evaluate, input_check_metrics
from braintumor.inference import Assessment, Predictor
from braintumor.ood import NOT_BRAIN, UNFAMILIAR, InputRules, image_stats
from braintumor.report import CHECK_SECTION, abstention_curve, write_report
from conftest import copy_run, old_run_copy

MAIN = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "pr_auc", "sensitivity", "specificity", "mcc", "n")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _section(page: str, sid: str) -> str:
    assert f'<section id="{sid}">' in page, sid
    return page.split(f'<section id="{sid}">')[1].split("</section>")[0]


def _junk_images() -> dict[str, np.ndarray]:
    """Inputs that are not brain-MRI slices: colour 'photos', colour noise, bright grey noise, a wide banner."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:120, :160]
    photo = np.stack([xx * 255 // 159, yy * 255 // 119, np.full_like(xx, 90)], axis=2).astype(np.uint8)
    photo[30:80, 50:110] = (220, 40, 40)
    sky = np.zeros((128, 128, 3), np.uint8)
    sky[..., 2] = 200
    sky[64:, :, 1] = 150
    sky[90:110, 20:100] = (250, 250, 30)
    return {"photo": photo, "sky": sky,
            "colour_noise": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
            "grey_noise": rng.integers(120, 256, (96, 96), dtype=np.uint8),
            "banner": np.tile(rng.integers(0, 256, (40, 1), dtype=np.uint8), (1, 200))}


@pytest.fixture(scope="module")
def phantom_eval(trained_run, phantoms_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_phantoms")
    return evaluate(trained_run.run_dir, phantoms_test, out, n_boot=50)


def test_input_check_metrics_counts_and_subsets():
    a = [Assessment("yes", True, 0.4), Assessment(NOT_BRAIN, False, 5.0, ["colour image"]),
         Assessment(UNFAMILIAR, False, 2.0), Assessment("uncertain", True, 0.9), Assessment("no", True, 0.7),
         Assessment("no", True, 0.2)]
    y, y_pred = [1, 1, 0, 0, 0, 1], [1, 0, 1, 0, 0, 0]
    m = input_check_metrics(y, y_pred, a)
    assert m["n"] == 6
    assert (m[NOT_BRAIN], m[UNFAMILIAR], m["uncertain"], m["flagged"]) == (0.1667, 0.1667, 0.1667, 0.3333)
    assert m["counts"] == {NOT_BRAIN: 1, UNFAMILIAR: 1, "uncertain": 1, "flagged": 2, "answered": 3}
    assert m["all"]["accuracy"] == pytest.approx(3 / 6)
    assert m["in_distribution"]["n"] == 4 and m["in_distribution"]["accuracy"] == pytest.approx(3 / 4)
    assert m["answered"]["n"] == 3 and m["answered"]["accuracy"] == pytest.approx(2 / 3)
    assert m["answered"]["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)  # yes: 1/1, no: 1/2
    assert m["errors"] == {"total": 3, "flagged": 2, "uncertain": 0, "answered": 1}
    assert m["ood_score"]["max"] == 5.0 and m["ood_score"]["p50"] == pytest.approx(0.8)


def test_abstention_curve_follows_the_predicted_class():
    # A decision threshold predicts "yes" at p(yes) = 0.4: the confidence is 0.4, not max(p) = 0.6.
    proba = np.array([[0.6, 0.4], [0.1, 0.9], [0.7, 0.3]])
    c = abstention_curve(proba, ["yes", "yes", "no"], ["yes", "yes", "no"], ["no", "yes"], [0.0, 0.5, 0.8])
    assert c["coverage"] == [1.0, 0.6667, 0.3333]
    assert c["accuracy"] == [1.0, 1.0, 1.0]
    assert abstention_curve(proba, ["no"] * 3, ["yes"] * 3, ["no", "yes"], [0.95])["accuracy"] == [None]


def test_evaluate_on_phantoms_has_the_input_check_block(phantom_eval, trained_run, phantoms_test, tmp_path):
    res = phantom_eval
    ic = res.metrics["input_check"]
    assert ic["n"] == res.metrics["n"] == 100
    assert ic["flagged"] <= 0.1, ic
    assert ic[NOT_BRAIN] <= 0.05, ic  # the rules pass the phantoms
    for key in ("uncertain", "counts", "ood_score", "threshold", "min_confidence", "all", "in_distribution",
                "answered", "errors"):
        assert key in ic, key
    assert ic["all"]["accuracy"] == pytest.approx(res.metrics["accuracy"])
    assert ic["answered"]["accuracy"] is not None and ic["answered"]["n"] == ic["counts"]["answered"] > 50
    assert ic["errors"]["total"] == round((1 - res.metrics["accuracy"]) * 100)
    assert set(ic["ood_score"]) >= {"p50", "p95", "max"} and ic["ood_score"]["p50"] < 1.0
    saved = json.loads((res.out_dir / "metrics.json").read_text())
    assert saved["input_check"] == json.loads(json.dumps(ic))
    rows = _rows(res.out_dir / "predictions.csv")
    assert len(rows) == 100 and set(CHECK_COLUMNS) <= set(rows[0])
    for r in rows:
        assert r["verdict"] in {"yes", "no", NOT_BRAIN, UNFAMILIAR, "uncertain"}
        assert r["in_distribution"] in {"0", "1"} and float(r["ood_score"]) >= 0
    assert sum(r["verdict"] in (NOT_BRAIN, UNFAMILIAR) for r in rows) == ic["counts"]["flagged"]
    assert (res.out_dir / "ood_scores.png").stat().st_size > 1000
    assert len(res.assessments) == 100

    # The headline metrics are those of every image, exactly as without the check.
    pred = Predictor.from_run(trained_run.run_dir, device="cpu")
    pred.check_inputs = False
    plain = evaluate(pred, phantoms_test, tmp_path / "plain", ci=False)
    assert "input_check" not in plain.metrics
    for k in MAIN:
        assert res.metrics[k] == pytest.approx(plain.metrics[k], abs=1e-9), k


def test_evaluate_flags_photos_and_noise_labelled_as_a_class(trained_run, phantoms_test, tmp_path):
    data = tmp_path / "mixed"
    junk = _junk_images()
    for cls in ("yes", "no"):
        (data / cls).mkdir(parents=True)
        for p in sorted((phantoms_test / cls).glob("*.png"))[:10]:
            shutil.copy2(p, data / cls / p.name)
    for i, (name, img) in enumerate(junk.items()):
        Image.fromarray(img).save(data / ("yes", "no")[i % 2] / f"junk_{name}.png")
    for name, img in junk.items():  # the rules alone turn these away
        assert InputRules().reasons(image_stats(img)), name

    res = evaluate(trained_run.run_dir, data, tmp_path / "out", ci=False)
    ic = res.metrics["input_check"]
    rows = {Path(r["path"]).name: r for r in _rows(res.out_dir / "predictions.csv")}
    for name in junk:
        r = rows[f"junk_{name}.png"]
        assert r["verdict"] == NOT_BRAIN and r["in_distribution"] == "0", (name, r)
    assert ic["n"] == 25 and ic["counts"][NOT_BRAIN] >= len(junk)
    assert ic["flagged"] >= len(junk) / 25
    assert ic["answered"]["n"] <= 20 and ic["answered"]["accuracy"] is not None
    assert ic["in_distribution"]["accuracy"] is not None and ic["all"]["accuracy"] == pytest.approx(
        res.metrics["accuracy"])
    assert ic["errors"]["flagged"] <= ic["counts"]["flagged"]
    assert ic["errors"]["total"] == ic["errors"]["flagged"] + ic["errors"]["uncertain"] + ic["errors"]["answered"]
    assert (res.out_dir / "ood_scores.png").is_file()


def test_run_report_has_the_input_check_section(trained_run):
    page = (trained_run.run_dir / "report.html").read_text()  # written by train()
    sec = _section(page, CHECK_SECTION)
    assert "<h2>Input check</h2>" in page and "could not be built" not in sec
    meta = json.loads((trained_run.run_dir / "metadata.json").read_text())
    ic = meta["input_check"]
    assert f"{ic['threshold']:.4f}" in sec
    assert "ood_score on the run&#x27;s own splits" in sec or "ood_score on the run's own splits" in sec
    assert "validation" in sec and "training" in sec and f"{ic['summary']['val_score']['p50']:.3f}" in sec
    assert "this run&#x27;s min_confidence" in sec or "this run's min_confidence" in sec
    assert sec.count("data:image/png;base64,") >= 1 and (trained_run.run_dir / "coverage.png").is_file()
    assert "no input check" not in sec


def test_report_lists_evaluations_and_old_runs_say_how_to_fit(trained_run, phantoms_test, tmp_path):
    run = copy_run(trained_run.run_dir, tmp_path / "run")
    for name in ("metrics.json", "predictions.csv"):
        shutil.copy2(trained_run.run_dir / name, run / name)
    evaluate(run, phantoms_test, ci=False)  # default out: RUN/evaluations/<folder>
    sec = _section(write_report(run, n_samples=1, n_gradcam=0, n_boot=20, n_maps=0).read_text(), CHECK_SECTION)
    assert "Evaluated folders" in sec and phantoms_test.name in sec
    # `braintumor evaluate` into RUN/evaluations/ rewrites that section of the report the run already has
    from typer.testing import CliRunner

    from braintumor.cli import app

    cli_run = copy_run(trained_run.run_dir, tmp_path / "cli_run")
    page = (trained_run.run_dir / "report.html").read_text()
    start = page.index(f'<section id="{CHECK_SECTION}">')  # emptied: only a rewrite can fill it
    end = page.index("</section>", start)
    (cli_run / "report.html").write_text(page[:start] + f'<section id="{CHECK_SECTION}">' + page[end:])
    r = CliRunner().invoke(app, ["evaluate", str(cli_run), "--data", str(phantoms_test)])
    assert r.exit_code == 0, r.output
    sec = _section((cli_run / "report.html").read_text(), CHECK_SECTION)
    assert "Evaluated folders" in sec and phantoms_test.name in sec

    old = old_run_copy(trained_run.run_dir, tmp_path / "old")
    shutil.copy2(trained_run.run_dir / "predictions.csv", old / "predictions.csv")
    sec = _section(write_report(old, n_samples=1, n_gradcam=0, n_boot=20, n_maps=0).read_text(), CHECK_SECTION)
    assert "no input check" in sec and "braintumor fit-input-check" in sec and "could not be built" not in sec


def test_old_run_evaluates_as_before_without_the_block(phantom_eval, trained_run, phantoms_test, tmp_path):
    old = old_run_copy(trained_run.run_dir, tmp_path / "old")
    res = evaluate(old, phantoms_test, tmp_path / "out", n_boot=50)
    assert "input_check" not in res.metrics and res.assessments is None
    assert "input_check" not in json.loads((res.out_dir / "metrics.json").read_text())
    assert not (res.out_dir / "ood_scores.png").exists()
    for k in MAIN:
        assert res.metrics[k] == pytest.approx(phantom_eval.metrics[k], abs=1e-9), k
    rows = _rows(res.out_dir / "predictions.csv")
    assert len(rows) == 100 and set(CHECK_COLUMNS) <= set(rows[0])
    assert all(r[c] == "" for r in rows for c in CHECK_COLUMNS)
    assert [r["predicted"] for r in rows] == [r["predicted"] for r in _rows(phantom_eval.out_dir / "predictions.csv")]
