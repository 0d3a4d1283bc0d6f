"""Calibration: ECE, temperature scaling on over/under-confident logits, target-sensitivity thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from braintumor.calibration import (
    calibrate_run,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    nll,
    plot_reliability,
)
from braintumor.config import TrainConfig


def _logits(n=2000, scale=4.0, seed=0):
    """Logits whose softmax is over-confident by a factor ``scale`` (the true temperature)."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, 3, generator=g) * 1.5
    y = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
    return true * scale, y


def test_temperature_scaling_fixes_overconfidence():
    z, y = _logits(scale=4.0)
    t = fit_temperature(z, y)
    assert 3.0 < t < 5.5, t  # recovers the true temperature
    assert nll(z, y, t) < nll(z, y, 1.0) - 0.1
    before = torch.softmax(z, 1).numpy()
    after = torch.softmax(z / t, 1).numpy()
    ece_b, ece_a = expected_calibration_error(y, before), expected_calibration_error(y, after)
    assert ece_a < 0.5 * ece_b and ece_a < 0.05, (ece_b, ece_a)
    # Temperature never changes the decision.
    assert (before.argmax(1) == after.argmax(1)).all()


def test_temperature_below_one_for_underconfident_and_clamped():
    z, y = _logits(scale=0.4, seed=1)
    assert fit_temperature(z, y) < 0.6
    # Perfectly separated data would push T to 0: it is clamped.
    zs = torch.tensor([[5.0, -5.0], [-5.0, 5.0]] * 20)
    ys = torch.tensor([0, 1] * 20)
    assert fit_temperature(zs, ys) == pytest.approx(0.05)


def test_ece_perfect_and_worst():
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, np.eye(2)[y]) == 0.0
    assert expected_calibration_error(y, np.eye(2)[1 - y]) == pytest.approx(1.0)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_threshold_reaches_target_sensitivity(target):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 301)
    p = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, 301), 0, 1)
    info = choose_threshold(y, p, target)
    t = info["threshold"]
    assert info["sensitivity"] >= target
    assert info["sensitivity"] == pytest.approx((p[y == 1] >= t).mean())
    assert info["specificity"] == pytest.approx((p[y == 0] < t).mean())
    # No slack: the threshold sits just below the last positive needed, so moving it to the next larger positive
    # score misses the target.
    higher = np.sort(p[y == 1][p[y == 1] > t])
    if len(higher) > 1:
        assert (p[y == 1] >= higher[1]).mean() < target
    # A stricter target costs specificity.
    assert info["specificity"] <= choose_threshold(y, p, 0.5)["specificity"]


def test_threshold_bad_target():
    from braintumor.errors import UsageError

    with pytest.raises(UsageError):
        choose_threshold([0, 1], [0.2, 0.8], 1.5)


def test_calibrate_run_on_trained_model(trained_run, tmp_path):
    """The hook train() calls: raw logits, temperature from validation, threshold reaching the target."""
    from braintumor.data.cache import load_images
    from braintumor.inference import Predictor

    pred = Predictor.from_run(trained_run.run_dir)
    meta = trained_run.metadata
    cal = meta["calibration"]
    assert cal["temperature"] == pytest.approx(pred.temperature) and cal["fitted_on"] == "validation"
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert (trained_run.run_dir / "calibration.png").stat().st_size > 1000
    # The Predictor applies the stored temperature.
    import csv

    rows = list(csv.DictReader(open(trained_run.run_dir / "split.csv")))
    val = [r for r in rows if r["subset"] == "val"]
    x = load_images([r["path"] for r in val], pred.preprocessor).images
    y = np.array([pred.classes.index(r["label"]) for r in val])
    z = pred.logits(pred.preprocessor.normalise(x))
    np.testing.assert_allclose(pred.proba_prepared(x), torch.softmax(z / pred.temperature, 1).numpy(), atol=1e-5)
    pred.run_dir = None  # do not overwrite the shared run's figure
    out = calibrate_run(pred, x, y, TrainConfig(target_sensitivity=0.95))
    info = out["threshold_info"]
    assert info["sensitivity"] >= 0.95 and out["threshold"] == info["threshold"]
    assert {"specificity", "argmax_sensitivity", "argmax_specificity"} <= set(info)
    # Predictor with that threshold reaches the target on the same validation images.
    pred.threshold = out["threshold"]
    pred.temperature = out["calibration"]["temperature"]
    labels = np.array([pred.classes.index(lab) for lab in pred.labels_from_proba(pred.proba_prepared(x))])
    pos = pred.positive_index
    assert (labels[y == pos] == pos).mean() >= 0.95


def test_reliability_png(tmp_path):
    z, y = _logits(n=300)
    p = plot_reliability(y, torch.softmax(z / 4, 1).numpy(), tmp_path / "c.png",
                         proba_before=torch.softmax(z, 1).numpy())
    assert p.stat().st_size > 5000
