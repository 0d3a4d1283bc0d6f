"""Lesion erasure: the lesion of a tumour slice replaced by mirrored tissue; erased copies as no-tumour training
images (``--erase-lesions``; its bad use shared with ``--paste-lesions``); ``cv --by-source --hold-out``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.data.erase import erase_lesion, erased_copies
from braintumor.data.synthetic import make_phantom, write_phantoms
from conftest import train_with_lesion_copies, write_erasable_tumours

runner = CliRunner()


def _contrast(img: np.ndarray, lesion: np.ndarray) -> float:
    """How far the lesion's mean lies from the tissue in a ring around it."""
    wide = ndimage.binary_dilation(lesion, iterations=4)
    ring = ndimage.binary_dilation(wide, iterations=4) & ~wide & (img > 60)
    return abs(float(img[lesion].mean()) - float(img[ring].mean()))


def test_erase_lesion_leaves_normal_looking_tissue_and_the_rest_untouched():
    erased, before, after = 0, [], []
    for seed in range(30):
        img, mask = make_phantom(np.random.default_rng(seed), size=96, tumour=True)
        out = erase_lesion(np.dstack([img] * 3), mask)
        if out is None:
            continue
        erased += 1
        assert out.shape == (96, 96, 3) and out.dtype == np.uint8
        assert (out[..., 0] == out[..., 1]).all()  # a grey image stays grey
        far = ~ndimage.binary_dilation(mask, iterations=3 * max(2, 96 // 40) + 4)
        assert (out[..., 0][far] == img[far]).all()  # nothing changes away from the lesion
        before.append(_contrast(img.astype(float), mask))
        after.append(_contrast(out[..., 0].astype(float), mask))
    assert erased >= 8, erased  # phantom lesions are large and central: about a third can be mirrored
    assert np.median(before) > 30 and np.median(after) < 0.3 * np.median(before), (before, after)


def test_midline_and_empty_lesions_are_not_erased():
    img, _ = make_phantom(np.random.default_rng(0), size=96, tumour=False)
    yy, xx = np.mgrid[:96, :96]
    cols = np.flatnonzero((img > 60).any(axis=0))
    cx = (cols[0] + cols[-1]) / 2
    midline = (yy - 48) ** 2 + (xx - cx) ** 2 < 12 ** 2
    assert erase_lesion(img, midline) is None
    assert erase_lesion(img, np.zeros_like(midline)) is None
    off = (yy - 48) ** 2 + (xx - cx - 22) ** 2 < 6 ** 2
    out = erase_lesion(img, off)
    assert out is not None and out.shape == img.shape
    made = erased_copies(np.stack([img, img]), np.stack([midline, off]).astype(np.uint8), [0, 1])
    assert made.summary() == {"erased": 1, "not_erased": 1} and made.index.tolist() == [1]


def test_train_with_erased_lesions_adds_no_tumour_copies(phantoms, tmp_path):
    res, meta, rows, n_train = train_with_lesion_copies(phantoms, tmp_path / "run", "--erase-lesions")
    made = meta["tumour_map"]["lesions_erased"]
    n_yes, n_no = n_train["yes"], n_train["no"]
    assert made["erased"] + made["not_erased"] == n_yes and made["erased"] >= n_yes // 3, (made, n_yes)
    counts = meta["data"]["train_counts"]
    assert counts == {"no": n_no + made["erased"], "yes": n_yes}  # the copies train as no-tumour images
    assert meta["data"]["sources"][f"{phantoms.name} (lesion erased)"]["n_train"] == made["erased"]
    assert meta["tumour_map"]["train"]["negative"] == n_no + made["erased"]
    assert not any("lesion-erased" in r["path"] for r in rows)  # made in the run: not files to re-read
    assert "lesions erased" in res.output


@pytest.mark.parametrize("flag", ["--erase-lesions", "--paste-lesions"])
@pytest.mark.parametrize("args, words", [
    ([], "needs --masks"),
    (["--masks", "MASKS", "--classes", "tumour=yes", "--classes", "other=no"], "one no-tumour class"),
])
def test_erase_or_paste_lesions_bad_use_is_a_one_line_error(phantoms, tmp_path, flag, args, words):
    out = tmp_path / "run"
    args = [str(phantoms / "_masks") if a == "MASKS" else a for a in args]
    res = runner.invoke(app, ["train", str(phantoms), flag, *args, "--model", "cnn", "--img-size",
                              "32", "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 2 and flag in res.output and words in res.output, res.output
    assert "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.parametrize("option", [["--paste-per-normal", "1"], ["--paste-bright", "0.5"]])
def test_paste_options_without_pasting_are_a_one_line_error(phantoms, tmp_path, option):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(phantoms), "--masks", str(phantoms / "_masks"), *option,
                              "--model", "cnn", "--img-size", "32", "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 2 and f"{option[0]} needs --paste-lesions" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """Three phantom collections, each with one look: A holds only tumours (with masks, off the mid-line), B only
    normal slices, half as bright (its scanner), C both, at A's brightness: a model trained on A + B can tell tumour
    from normal by brightness alone."""
    base = tmp_path_factory.mktemp("collections")
    write_erasable_tumours(base / "srcA", 120, seed=21)
    write_phantoms(base / "srcB", n=120, size=64, seed=22, tumour_fraction=0.0, normal_gain=0.5)
    write_phantoms(base / "srcC", n=120, size=64, seed=23)
    (base / "srcB" / "yes").rmdir()  # a collection of one class has no folder for the other
    return base


def test_erased_lesions_recover_a_source_that_held_one_class(collections, tmp_path):
    """Left out, C exposes the shortcut (its bright normal slices are called tumours); with A's lesions erased
    (bright slices without a lesion, labelled normal) brightness no longer tells the classes apart and C recovers.
    ``--hold-out`` trains only that fold."""
    from braintumor.crossval import cv

    dirs = [str(collections / s) for s in ("srcA", "srcB", "srcC")]
    kw = dict(by_source=True, hold_out=[dirs[2]], model="cnn", img_size=64, epochs=20, batch_size=32, seed=0,
              masks=str(collections / "srcA" / "_masks"), classes={"tumour": ["yes"], "no_tumour": ["no"]})
    plain = cv(dirs, out=tmp_path / "plain", **kw)
    erased = cv(dirs, out=tmp_path / "erased", erase_lesions=True, **kw)
    for res in (plain, erased):
        assert {r["tested_on"] for r in res.rows if r["kind"] == "cross"} == {"srcC"}  # the one fold asked for
    ba = [next(r for r in res.rows if r["kind"] == "cross")["metrics"]["balanced_accuracy"]
          for res in (plain, erased)]
    print("balanced accuracy on C, plain / erased:", ba)
    assert ba[0] <= 0.75 and ba[1] >= ba[0] + 0.15, ba


def test_cv_hold_out_names_a_source(collections, tmp_path):
    dirs = [str(collections / s) for s in ("srcA", "srcC")]
    res = runner.invoke(app, ["cv", *dirs, "--by-source", "--hold-out", "nowhere", "--model", "cnn",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--hold-out nowhere: not one of the sources (srcA, srcC)" in res.output
    res = runner.invoke(app, ["cv", *dirs, "--hold-out", "srcA", "--model", "cnn", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "--hold-out needs --by-source" in res.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
