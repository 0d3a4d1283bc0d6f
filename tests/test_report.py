"""report.html: one self-contained page with every section, no network assets."""

from __future__ import annotations

import re

from braintumor.report import RUN_SECTIONS, write_report


def _check_self_contained(page: str) -> None:
    assert not re.search(r"https?://", page), "the page must not reference network URLs"
    for ref in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert ref.startswith(("data:image/png;base64,", "#")), ref


def test_train_writes_report_with_every_section(trained_run):
    path = trained_run.run_dir / "report.html"
    assert path.is_file()  # written by train() itself
    page = path.read_text()
    headings = {"summary": "Summary", "data": "Data", "audit": "Data audit", "metrics": "Metrics with 95% CIs",
                "curves": "Training curves", "confusion": "Confusion matrix", "roc": "ROC curve",
                "calibration": "Calibration", "per-class": "Per-class metrics", "samples": "Sample predictions",
                "gradcam": "Grad-CAM", "caveats": "Caveats"}
    assert set(headings) == set(RUN_SECTIONS)
    for sid, title in headings.items():
        assert f'<section id="{sid}">' in page, sid
        assert f"<h2>{title}</h2>" in page, title
    assert "could not be built" not in page
    _check_self_contained(page)
    assert page.count("data:image/png;base64,") >= 5  # curves, confusion, ROC, calibration, thumbnails
    assert "Research and education use only" in page and "duplicates" in page
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", page)  # metrics with CIs


def test_report_rewrite_and_gradcam(trained_run):
    page = write_report(trained_run.run_dir, n_samples=2, n_gradcam=2, n_boot=100).read_text()
    gradcam = page.split('<section id="gradcam">')[1].split("</section>")[0]
    try:
        import braintumor.explanation  # noqa: F401
    except ImportError:
        assert "not available" in gradcam
    else:
        assert gradcam.count("data:image/png;base64,") == 2
    _check_self_contained(page)


def test_cv_report_sections(tmp_path):
    """write_cv_report on a hand-made cv.json (no training): every section, numbers with CIs."""
    import json

    from braintumor.report import CV_SECTIONS, write_cv_report

    s = {"mean": 0.9, "std": 0.05, "low": 0.84, "high": 0.96, "n": 5}
    doc = {"n_folds": 5, "repeats": 1, "grouped": True, "n_groups": 40, "n_images": 50, "n_oof": 50,
           "classes": ["no", "yes"], "config": {"model": "cnn", "img_size": 64, "data_dir": str(tmp_path / "none")},
           "summary": {"accuracy": s, "roc_auc": s, "seconds_per_fold": {"mean": 12.0}},
           "pooled": {"accuracy": 0.9}, "pooled_ci": {"accuracy": {"estimate": 0.9, "low": 0.8, "high": 0.97},
                                                       "unit": "group"},
           "folds": [{"repeat": 0, "fold": f, "n_train": 32, "n_val": 8, "n_test": 10, "seconds": 12.0,
                      "temperature": 1.2, "accuracy": 0.9, "roc_auc": 0.9} for f in range(5)],
           "leakage": {"accuracy": {"group_aware": 0.9, "naive": 0.95, "inflation": 0.05}}}
    (tmp_path / "cv.json").write_text(json.dumps(doc))
    page = write_cv_report(tmp_path).read_text()
    for sid in CV_SECTIONS:
        assert f'<section id="{sid}">' in page, sid
    assert "0.900 [0.840, 0.960]" in page and "+0.050" in page
    _check_self_contained(page)
