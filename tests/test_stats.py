"""Bootstrap CIs: contain the estimate, narrow with more data, widen when copies are resampled as groups."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from braintumor.metrics import classification_metrics
from braintumor.stats import CI_METRICS, average_precision, binary_auc, bootstrap_ci, format_ci, mean_ci

CLASSES = ["no", "yes"]


def _binary(n: int, seed: int = 0, sep: float = 1.2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = rng.normal(0, 1, n) + sep * (2 * y - 1)
    p = 1 / (1 + np.exp(-z))
    return y, np.c_[1 - p, p]


def _width(ci, key):
    return ci[key]["high"] - ci[key]["low"]


def test_ci_contains_point_estimate_and_matches_metrics():
    y, proba = _binary(300)
    m = classification_metrics(y, proba, CLASSES, "yes")
    ci = bootstrap_ci(y, proba, CLASSES, "yes", n_boot=500)
    for key in CI_METRICS:
        assert key in ci, key
        c = ci[key]
        assert c["estimate"] == pytest.approx(m[key], abs=1e-9), key
        assert c["low"] <= c["estimate"] <= c["high"], (key, c)
        assert c["high"] - c["low"] > 0, key
    assert ci["unit"] == "image" and ci["n_units"] == 300 and ci["level"] == 0.95
    for cls in CLASSES:
        for key in ("sensitivity", "specificity", "precision", "f1"):
            c = ci["per_class"][cls][key]
            assert c["low"] <= c["estimate"] <= c["high"]


def test_ci_narrows_with_more_data():
    y, proba = _binary(1600, seed=1)
    small = bootstrap_ci(y[:100], proba[:100], CLASSES, n_boot=400)
    large = bootstrap_ci(y, proba, CLASSES, n_boot=400)
    for key in ("accuracy", "roc_auc", "sensitivity", "mcc"):
        # ~1/sqrt(n): 16x the data should give about a quarter of the width; demand at least half.
        assert _width(large, key) < 0.5 * _width(small, key), key


def test_group_bootstrap_treats_copies_as_one_image():
    y, proba = _binary(150, seed=2)
    y4, p4 = np.repeat(y, 4), np.repeat(proba, 4, axis=0)   # every image copied 4 times
    groups = np.repeat(np.arange(150), 4)
    naive = bootstrap_ci(y4, p4, CLASSES, n_boot=400)
    grouped = bootstrap_ci(y4, p4, CLASSES, groups=groups, n_boot=400)
    original = bootstrap_ci(y, proba, CLASSES, n_boot=400)
    assert grouped["unit"] == "group" and grouped["n_units"] == 150
    # Resampling copies as independent images halves the width (sqrt(4)); resampling groups does not.
    assert _width(naive, "accuracy") < 0.7 * _width(grouped, "accuracy")
    assert _width(grouped, "accuracy") == pytest.approx(_width(original, "accuracy"), rel=0.3)


def test_multiclass_and_fixed_threshold():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    m = classification_metrics(y, proba, classes)
    ci = bootstrap_ci(y, proba, classes, n_boot=200)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "f1", "roc_auc", "pr_auc", "mcc"):
        assert ci[key]["estimate"] == pytest.approx(m[key], abs=1e-9), key
        assert ci[key]["low"] <= ci[key]["estimate"] <= ci[key]["high"]
    assert "sensitivity" not in ci  # multi-class: per class only
    assert set(ci["per_class"]) == set(classes)
    yb, pb = _binary(200, seed=4)
    mt = classification_metrics(yb, pb, CLASSES, "yes", threshold=0.2)
    cit = bootstrap_ci(yb, pb, CLASSES, "yes", threshold=0.2, n_boot=200)
    assert cit["sensitivity"]["estimate"] == pytest.approx(mt["sensitivity"])
    assert mt["sensitivity"] > classification_metrics(yb, pb, CLASSES, "yes")["sensitivity"]


def test_fast_auc_and_average_precision_match_sklearn_with_ties():
    rng = np.random.default_rng(5)
    for _ in range(5):
        y = rng.integers(0, 2, 120)
        s = np.round(rng.random(120) + 0.3 * y, 1)  # many ties
        assert binary_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert np.isnan(binary_auc(np.ones(5), np.arange(5)))


def test_mean_ci_t_interval():
    from scipy import stats

    v = [0.9, 0.85, 0.95, 0.88, 0.92]
    r = mean_ci(v)
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean(v), scale=stats.sem(v))
    assert r["mean"] == pytest.approx(0.9) and r["low"] == pytest.approx(lo) and r["high"] == pytest.approx(hi)
    assert mean_ci([0.5])["low"] is None and mean_ci([])["mean"] is None
    assert format_ci(0.912, 0.853, 0.961, digits=2) == "0.91 [0.85, 0.96]"
    assert format_ci(None) == "-" and format_ci(0.5) == "0.500"


def test_evaluate_writes_and_shows_cis(trained_run, phantoms_test, tmp_path):
    from typer.testing import CliRunner

    from braintumor.cli import app

    out = tmp_path / "ev"
    r = CliRunner().invoke(app, ["evaluate", str(trained_run.run_dir), "--data", str(phantoms_test), "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["ci"]["accuracy"]["low"] <= m["accuracy"] <= m["ci"]["accuracy"]["high"]
    assert m["ci"]["n_units"] == m["n"] == 100
    assert "95% CI" in r.output
    acc = m["ci"]["accuracy"]
    assert f"{m['accuracy']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]" in r.output


def test_bootstrap_mean_ci_resamples_whole_groups():
    """Slices of one patient move together: with perfectly correlated groups the interval is wider than the one
    that treats every slice as independent, and both contain the mean."""
    from braintumor.stats import bootstrap_mean_ci

    rng = np.random.default_rng(1)
    patient_hit = rng.random(20) < 0.6                     # 20 patients, 15 slices each, all hits or all misses
    values = np.repeat(patient_hit.astype(float), 15)
    groups = np.repeat(np.arange(20), 15).astype(str)
    by_image = bootstrap_mean_ci(values, n_boot=500)
    by_patient = bootstrap_mean_ci(values, groups=list(groups), n_boot=500)
    for r in (by_image, by_patient):
        assert r["low"] <= r["estimate"] == values.mean() <= r["high"]
    assert (by_patient["high"] - by_patient["low"]) > 2.5 * (by_image["high"] - by_image["low"])
    assert by_patient["unit"] == "group" and by_image["unit"] == "image"
    with pytest.raises(ValueError, match="3 groups for 2 values"):
        bootstrap_mean_ci([1.0, 0.0], groups=["a", "b", "c"])
