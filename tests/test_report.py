"""report.html: one self-contained page with every section, no network assets."""

from __future__ import annotations

import html
import json
import re

import pytest

from braintumor.audit_report import audit_findings, audit_html
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
                "gradcam": "Grad-CAM", "int8": "8-bit inference", "input-check": "Input check", "caveats": "Caveats"}
    assert set(headings) == set(RUN_SECTIONS)
    for sid, title in headings.items():
        assert f'<section id="{sid}">' in page, sid
        assert f"<h2>{title}</h2>" in page, title
    assert "could not be built" not in page
    _check_self_contained(page)
    assert page.count("data:image/png;base64,") >= 5  # curves, confusion, ROC, calibration, thumbnails
    assert "Research and education use only" in page and "duplicates" in page
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", page)  # metrics with CIs


def test_a_section_is_refreshed_in_place(trained_run, tmp_path):
    """refresh_report_section rebuilds one section and keeps every other byte; no report: nothing is written."""
    from braintumor.report import CHECK_SECTION, INT8_SECTION, refresh_report_section

    (tmp_path / "run").mkdir()
    report = tmp_path / "run" / "report.html"
    for name in ("metadata.json", "split.csv"):
        (tmp_path / "run" / name).write_bytes((trained_run.run_dir / name).read_bytes())
    assert refresh_report_section(tmp_path / "run", INT8_SECTION) is None and not report.exists()
    page = (trained_run.run_dir / "report.html").read_text()
    assert "No 8-bit copy of this model" in page  # a run without `export --int8` says how to make one
    report.write_text(page)
    assert refresh_report_section(tmp_path / "run", INT8_SECTION) == report
    first = report.read_text()
    cut = first.index('<section id="int8">')
    assert first[:cut] == page[:cut] and str(tmp_path / "run") in first[cut:]  # the section names this folder
    assert first.split('<section id="input-check">')[1] == page.split('<section id="input-check">')[1]
    refresh_report_section(tmp_path / "run", INT8_SECTION)
    assert report.read_text() == first  # nothing changed in the run: the same bytes
    page = first
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    meta["int8"] = {"passed": False, "reason": "INT8 agrees on 90.0% <b>", "label_agreement": 0.9}
    (tmp_path / "run" / "metadata.json").write_text(json.dumps(meta))
    refresh_report_section(tmp_path / "run", INT8_SECTION)
    new = report.read_text()
    assert "not kept: INT8 agrees on 90.0% &lt;b&gt;" in new and "<b>" not in new  # escaped
    cut = new.index('<section id="int8">'), page.index('<section id="int8">')
    assert new[:cut[0]] == page[:cut[1]] and new.count("<section ") == page.count("<section ")
    assert new.split('<section id="input-check">')[1] == page.split('<section id="input-check">')[1]
    with pytest.raises(ValueError, match="unknown report section"):
        refresh_report_section(tmp_path / "run", "gradcam")
    assert refresh_report_section(tmp_path / "run", CHECK_SECTION) == report


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


# ------------------------------------------------------------------------------------------- the data audit


def write_planted_folder(root):
    """40 phantoms whose no-tumour images are brighter (a source cue), plus three planted duplicate groups (a
    byte copy, a no image copied into yes: a label conflict, a resized near copy) and one unreadable file."""
    import shutil

    from PIL import Image

    from braintumor.data.synthetic import write_phantoms

    write_phantoms(root, n=40, size=64, seed=3, normal_gain=1.8)
    yes, no = sorted((root / "yes").glob("*.png")), sorted((root / "no").glob("*.png"))
    shutil.copy(yes[0], root / "yes" / "copy_of_yes.png")
    shutil.copy(no[0], root / "yes" / "no_image_labelled_yes.png")
    Image.open(yes[1]).resize((96, 96), Image.BILINEAR).save(root / "yes" / "resized.png")
    (root / "no" / "broken.png").write_bytes(b"not an image\n")
    return root


@pytest.fixture(scope="module")
def planted_audit(tmp_path_factory) -> dict:
    from braintumor.data.audit import audit

    return audit(write_planted_folder(tmp_path_factory.mktemp("planted"))).to_dict()


def page_text(page: str) -> str:
    """The text a reader sees: no style, no tags, entities decoded (an escaped ``{&quot;`` dump shows as ``{"``)."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def assert_no_dict_dumps(text: str) -> None:
    for mark in ('{"', "{'", "': ", '": '):
        assert mark not in text, f"raw dictionary in the page: ...{text[max(0, text.find(mark) - 80):][:200]}..."


def test_audit_findings_on_planted_phantoms(planted_audit):
    findings = audit_findings(planted_audit)
    texts = [text for _, text in findings]
    assert texts[0].startswith("3 groups of duplicates (6 images), 1 of them across classes")
    assert "40 distinct scans among 43 readable files" in texts[0] and findings[0][0] == "warn"
    source = next(t for t in texts if t.startswith("Classes differ by source"))
    assert "could tell yes from no from image statistics alone" in source
    assert float(re.search(r"AUC (\d\.\d\d)", source).group(1)) >= 0.9
    assert "intensity" in source  # the planted cue, in words (not "p95" or "mean")
    assert "Class balance: 23 yes / 21 no (21 / 20 distinct scans)." in texts
    assert "1 unreadable file (no/broken.png): training skips it." in texts
    # The clean phantoms: nothing to warn about.
    clean = {"n_images": 4, "n_readable": 4, "n_distinct": 4, "classes": ["no", "yes"],
             "class_counts": {"no": 2, "yes": 2}, "confounders": {"auc": 0.52, "warning": False}}
    assert [level for level, _ in audit_findings(clean)] == ["ok", "ok", "note", "ok"]


def test_audit_html_reads_as_sentences_and_small_tables(planted_audit):
    doc = json.loads(json.dumps(planted_audit))
    doc["mystery_key"] = {"nested": {"deep": 1}}
    doc["class_stats"]["yes"]["mystery_stat"] = {"min": 1}
    part = audit_html(doc)
    text = page_text(part)
    assert_no_dict_dumps(text)
    assert "mystery" not in part and "class_stats" not in text and "byte_groups" not in text
    findings, details = part.split("</ul>", 1)
    assert "groups of duplicates" in findings and "Classes differ by source" in findings
    assert "Group 1: 2 files, identical images, " in page_text(details)  # the label conflict comes first
    assert "labelled no and yes" in page_text(details)
    dup = details.split("<h3>Duplicates</h3>")[1].split("<h3>")[0]
    assert dup.count("data:image/png;base64,") == 6  # every planted copy, as a thumbnail
    stats = page_text(details.split("<h3>Image statistics per class</h3>")[1])
    assert "median size (width x height, px) 64 x 64 64 x 64" in stats
    for h in ("Duplicates", "Source check", "Class balance", "Image statistics per class", "Unreadable and tiny files"):
        sentence = page_text(details.split(f"<h3>{h}</h3>")[1].split("<h3>")[0]).split(".")[0]
        assert len(sentence.split()) >= 6, (h, sentence)  # each part opens with a plain sentence
    assert "No audit available" in audit_html(None)


def test_run_report_audit_section_has_no_raw_dictionaries(trained_run, planted_audit, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "report.html"))
    (run / "audit.json").write_text(json.dumps(planted_audit))
    page = write_report(run, n_samples=1, n_gradcam=0, n_boot=20).read_text()
    assert "could not be built" not in page
    assert_no_dict_dumps(page_text(page))
    audit_part = page_text(page.split('<section id="audit">')[1].split("</section>")[0])
    assert audit_part.index("3 groups of duplicates") < audit_part.index("Classes differ by source") \
        < audit_part.index("Duplicates Groups of files")
    (run / "audit.json").write_text("{not json")
    sec = write_report(run, n_samples=1, n_gradcam=0, n_boot=20).read_text().split('<section id="audit">')[1]
    assert "could not be built" in sec.split("</section>")[0] and "audit.json: not valid JSON" in sec


def test_sections_are_top_level_functions_and_report_imports_no_training_code():
    import ast
    import inspect

    import braintumor.crossval
    import braintumor.crossval_sources
    import braintumor.report as report

    for fn in (report.write_report, report.write_cv_report, report.write_source_report):
        nested = [c for c in fn.__code__.co_consts if inspect.iscode(c)]
        assert not nested, f"{fn.__name__} defines {[c.co_name for c in nested]} inside: make them _section_* functions"
    tree = ast.parse(inspect.getsource(report))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"training", "crossval", "crossval_sources"}, imported
    assert braintumor.crossval.LABEL_CHECK_BELOW is report.LABEL_CHECK_BELOW
    assert braintumor.crossval_sources.SOURCE_METRICS is report.SOURCE_METRICS
