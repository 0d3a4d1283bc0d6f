"""Discovery (class folders, errors) and the one split function (stratified, seeded, group-aware)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from braintumor.data import discover, kfold, train_val_split
from braintumor.data.discover import fingerprint, positive_class
from braintumor.data.split import assert_disjoint_groups
from braintumor.errors import DataError


def _img(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def test_discover_classes_case_insensitive_and_hidden(tmp_path):
    _img(tmp_path / "yes" / "a.PNG")
    _img(tmp_path / "yes" / "sub" / "b.jpeg")
    _img(tmp_path / "no" / "c.png")
    (tmp_path / "no" / "readme.txt").write_text("x")
    _img(tmp_path / "_masks" / "yes" / "a.png")
    _img(tmp_path / ".cache" / "d.png")
    ds = discover(tmp_path)
    assert ds.classes == ["no", "yes"]
    assert ds.class_counts() == {"no": 1, "yes": 2}
    assert ds.positive_class() == "yes"


def test_empty_class_folder_is_an_error(tmp_path):
    _img(tmp_path / "yes" / "a.png")
    (tmp_path / "no").mkdir()
    with pytest.raises(DataError, match="'no' has no images"):
        discover(tmp_path)


def test_single_class_is_an_error(tmp_path):
    _img(tmp_path / "yes" / "a.png")
    with pytest.raises(DataError, match="only one class"):
        discover(tmp_path)


def test_no_class_folders_is_an_error(tmp_path):
    _img(tmp_path / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        discover(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        discover(tmp_path / "missing")


def test_positive_class_names():
    assert positive_class(["no", "yes"]) == "yes"
    assert positive_class(["normal", "tumor"]) == "tumor"
    assert positive_class(["glioma", "meningioma", "notumor", "pituitary"]) is None


def test_split_stratified_and_seeded():
    y = [0] * 60 + [1] * 40
    tr, va = train_val_split(y, val_fraction=0.2, seed=3)
    assert len(va) == 20 and len(set(tr) | set(va)) == 100 and not set(tr) & set(va)
    assert np.bincount(np.asarray(y)[va]).tolist() == [12, 8]
    tr2, va2 = train_val_split(y, val_fraction=0.2, seed=3)
    assert np.array_equal(va, va2)
    _, va3 = train_val_split(y, val_fraction=0.2, seed=4)
    assert not np.array_equal(va, va3)


def test_split_keeps_groups_together():
    rng = np.random.default_rng(0)
    groups = [f"g{i // 3}" for i in range(90)]  # triplets of copies
    y = [int(g[1:]) % 2 for g in groups]
    tr, va = train_val_split(y, groups, val_fraction=0.2, seed=0)
    assert_disjoint_groups(groups, tr, va)
    assert 0.1 < len(va) / 90 < 0.3
    for _, _, a, b in kfold(y, groups, n_splits=5, seed=int(rng.integers(100))):
        assert_disjoint_groups(groups, a, b)


def test_fingerprint_changes_with_bytes(tmp_path):
    _img(tmp_path / "yes" / "a.png", 1)
    _img(tmp_path / "no" / "b.png", 2)
    ds = discover(tmp_path)
    f1 = fingerprint(ds.paths, tmp_path)
    assert f1 == fingerprint(ds.paths, tmp_path)
    _img(tmp_path / "no" / "b.png", 3)
    assert fingerprint(ds.paths, tmp_path) != f1


def test_split_ignores_group_names():
    y = [i % 2 for i in range(40)]
    a = [f"x{i // 2}" for i in range(40)]
    b = [f"renamed-{(i // 2) * 7919 % 1000}" for i in range(40)]
    assert all(np.array_equal(u, v) for u, v in zip(train_val_split(y, a), train_val_split(y, b), strict=True))
