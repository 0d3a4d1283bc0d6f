"""braintumor.data.datasets and `braintumor data ...`: verification names missing, extra and corrupt files;
download without kagglehub or network gives one message with the manual steps and exit code 2."""

from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.data import datasets
from braintumor.data.datasets import DatasetSpec, download, load_manifest, verify
from braintumor.errors import DataError, UsageError
from conftest import NAVONEEL, NICKPARVAR, needs_data

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_bundled_manifests():
    nav = load_manifest("navoneel.sha256")
    assert len(nav) == 253 and sum(k.startswith("yes/") for k in nav) == 155
    assert all(v is not None and len(v) == 64 for v in nav.values()) and "no/1 no.jpeg" in nav
    names = load_manifest("nickparvar_training.txt.gz")
    assert len(names) == 5712 and all(v is None for v in names.values())
    assert sum(k.startswith("notumor/") for k in names) == 1595


@needs_data(NAVONEEL)
def test_verify_navoneel_ok_then_names_removed_corrupted_and_extra_files(tmp_path):
    r = _invoke("data", "verify", NAVONEEL, "--dataset", "navoneel")
    assert r.exit_code == 0, r.output
    assert "253 files checked, OK" in r.output
    copy = tmp_path / "kaggle" / "brain_tumor_dataset"  # the nested layout of the Kaggle archive
    shutil.copytree(NAVONEEL, copy)
    for f in copy.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    rep = verify(tmp_path / "kaggle", "navoneel")
    assert rep.ok and rep.counts[("", "yes")] == (155, 155)
    (copy / "no" / "1 no.jpeg").unlink()
    data = (copy / "yes" / "Y1.jpg").read_bytes()
    (copy / "yes" / "Y1.jpg").write_bytes(data[: len(data) // 3])
    y2 = bytearray((copy / "yes" / "Y2.jpg").read_bytes())
    y2[-100] ^= 0xFF  # one flipped byte still decodes: only the manifest can tell
    (copy / "yes" / "Y2.jpg").write_bytes(bytes(y2))
    (copy / "yes" / "notes.txt").write_text("x")
    r = _invoke("data", "verify", copy, "--dataset", "navoneel")
    assert r.exit_code == 1, r.output
    out = r.output
    assert "missing: no/1 no.jpeg" in out
    assert "corrupt: yes/Y1.jpg (truncated" in out
    assert "corrupt: yes/Y2.jpg (content differs from the published file" in out
    assert "extra: yes/notes.txt" in out
    assert "1 extra, 1 missing" in out and "2 corrupt" in out


@needs_data(NICKPARVAR)
def test_verify_nickparvar_training_split_counts_and_names():
    rep = verify(NICKPARVAR, "nickparvar", decode=False)
    assert rep.ok, rep.problems[:5]
    assert rep.counts[("Training", "notumor")] == (1595, 1595) and rep.checked_files == 5712
    parent = verify(NICKPARVAR.parent, "nickparvar", decode=False)  # a parent must hold both splits
    assert [str(p) for p in parent.problems] == ["missing: Testing/ (split folder missing (1311 images expected))"]


def _small_nickparvar(monkeypatch, root, counts=(3, 2)):
    spec = DatasetSpec("nickparvar", "masoudnickparvar/brain-tumor-mri-dataset", "test",
                       {"Training": {"glioma": counts[0], "notumor": counts[1]},
                        "Testing": {"glioma": 1, "notumor": 1}})
    monkeypatch.setitem(datasets.DATASETS, "nickparvar", spec)
    img = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    for split, per in spec.splits.items():
        for cls, n in per.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(img).save(root / split / cls / f"{cls}_{i}.jpg")
    return spec


def test_verify_split_layouts_and_corrupt_files(tmp_path, monkeypatch):
    _small_nickparvar(monkeypatch, tmp_path)
    assert verify(tmp_path, "nickparvar").ok
    assert verify(tmp_path / "Testing", "nickparvar").ok
    assert set(verify(tmp_path / "Training", "nickparvar").counts) == {("Training", "glioma"), ("Training", "notumor")}
    (tmp_path / "Training" / "glioma" / "glioma_1.jpg").write_bytes(bytes(range(256)))
    (tmp_path / "Testing" / "notumor" / "notumor_0.jpg").unlink()
    (tmp_path / "Training" / "pituitary").mkdir()
    (tmp_path / "Training" / "notumor" / "readme.md").write_text("x")
    rep = verify(tmp_path, "nickparvar")
    found = sorted(str(p) for p in rep.problems)
    assert found == sorted([
        "corrupt: Training/glioma/glioma_1.jpg (not a recognised image format)",
        "count: Testing/notumor/ (0 images, expected 1)",
        "extra: Training/pituitary/ (unexpected folder)",
        "extra: Training/notumor/readme.md (not an image file)",
    ]), found
    with pytest.raises(DataError, match="does not look like"):
        verify(tmp_path / "Training" / "glioma", "nickparvar")
    r = _invoke("data", "verify", tmp_path / "nowhere", "--dataset", "nickparvar")
    assert r.exit_code == 2 and "no such folder" in r.output
    r = _invoke("data", "verify", tmp_path, "--dataset", "brats")
    assert r.exit_code == 2 and "unknown data set 'brats'" in r.output


def test_download_without_kagglehub_one_message_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import fails as if not installed
    with pytest.raises(UsageError, match="kagglehub is not installed"):
        download("navoneel", tmp_path / "nav")
    r = _invoke("data", "download", "nickparvar", "--to", tmp_path / "nick")
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    msg = " ".join(r.output.split())  # the message is one line, wrapped by the terminal width
    assert "masoudnickparvar/brain-tumor-mri-dataset" in msg and "braintumor data verify" in msg
    assert "https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset" in msg


def test_download_offline_exit_2(tmp_path, monkeypatch):
    fake = types.ModuleType("kagglehub")

    def dataset_download(handle, path=None, *, force_download=False):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'")

    fake.dataset_download = dataset_download
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    r = _invoke("data", "download", "navoneel", "--to", tmp_path / "nav")
    assert r.exit_code == 2
    msg = " ".join(r.output.split())
    assert "could not download from Kaggle (ConnectionError" in msg
    assert "navoneel/brain-mri-images-for-brain-tumor-detection" in msg and "yes and" in msg


def test_download_with_kagglehub_copies_then_verifies(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _small_nickparvar(monkeypatch, cache)
    calls = []
    fake = types.ModuleType("kagglehub")

    def dataset_download(handle, path=None, *, force_download=False):  # older kagglehub: no output_dir
        calls.append(handle)
        return str(cache)

    fake.dataset_download = dataset_download
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    r = _invoke("data", "download", "nickparvar", "--to", tmp_path / "nick")
    assert r.exit_code == 0, r.output
    assert calls == ["masoudnickparvar/brain-tumor-mri-dataset"]
    assert (tmp_path / "nick" / "Testing" / "glioma" / "glioma_0.jpg").is_file() and "OK" in r.output

    def dataset_download_out(handle, path=None, *, force_download=False, output_dir=None):  # newer kagglehub
        shutil.copytree(cache, output_dir, dirs_exist_ok=True)
        return output_dir

    fake.dataset_download = dataset_download_out
    assert download("nickparvar", tmp_path / "nick2") == tmp_path / "nick2"
    assert verify(tmp_path / "nick2", "nickparvar").ok
