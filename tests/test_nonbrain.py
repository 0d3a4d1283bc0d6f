"""The non-brain-MRI corpus: size, format, determinism, filters and writing it out."""

from __future__ import annotations

import hashlib
import sys
from collections import Counter

import numpy as np
import pytest

from braintumor.data import nonbrain
from braintumor.data.dicom import WINDOW_ENV
from braintumor.data.nonbrain import KINDS, CorpusImage, non_brain_corpus, write_corpus
from braintumor.data.read import read_image


def _digest(items: list[CorpusImage]) -> list[tuple[str, str, tuple, str]]:
    return [(it.name, it.kind, it.image.shape, hashlib.sha1(it.image.tobytes()).hexdigest()) for it in items]


@pytest.fixture(scope="module")
def corpus() -> list[CorpusImage]:
    return non_brain_corpus(seed=0)


def test_default_corpus_is_large_and_covers_every_kind(corpus):
    pytest.importorskip("skimage")
    pytest.importorskip("pydicom")
    assert len(corpus) >= 320
    counts = Counter(it.kind for it in corpus)
    assert set(counts) == set(KINDS), counts
    dicom = [it for it in corpus if it.source_file]
    assert 5 <= len(dicom) <= 60
    assert {it.name for it in dicom} >= {"pydicom/CT_small", "pydicom/MR_small"}


def test_items_are_rgb_uint8_with_unique_names_and_known_kinds(corpus):
    assert len(corpus) > 50  # synthetic images and phantoms alone
    for it in corpus:
        assert isinstance(it.image, np.ndarray), it.name
        assert it.image.dtype == np.uint8, it.name
        assert it.image.ndim == 3 and it.image.shape[2] == 3, (it.name, it.image.shape)
        assert min(it.image.shape[:2]) >= 16, (it.name, it.image.shape)
        assert it.kind in KINDS, it.name
        assert (it.source_file is not None) == it.name.startswith("pydicom/"), it.name
    names = [it.name for it in corpus]
    assert len(set(names)) == len(names)


def test_no_brain_mr_among_the_dicom_items(corpus):
    pytest.importorskip("pydicom")
    import pydicom

    for it in corpus:
        if it.source_file:
            ds = pydicom.dcmread(it.source_file, stop_before_pixels=True)
            if ds.get("Modality") == "MR":
                text = " ".join(str(ds.get(k, "")) for k in ("BodyPartExamined", "StudyDescription",
                                                              "SeriesDescription", "ProtocolName"))
                assert "brain" not in text.lower() and "head" not in text.lower(), (it.name, text)


def test_deterministic_for_a_seed(corpus):
    again = non_brain_corpus(seed=0)
    assert _digest(again) == _digest(corpus)
    other = non_brain_corpus(seed=1, kinds=["synthetic", "phantom"])
    mine = [d for d in _digest(corpus) if d[1] in ("synthetic", "phantom")]
    assert [d[0] for d in _digest(other)] == [d[0] for d in mine]  # same names...
    assert sum(a[3] != b[3] for a, b in zip(_digest(other), mine, strict=True)) > len(mine) // 2  # ...other pixels


def test_kinds_filter_keeps_the_same_items(corpus):
    picked = non_brain_corpus(seed=0, kinds=["synthetic", "phantom", "ct"])
    assert picked and {it.kind for it in picked} <= {"synthetic", "phantom", "ct"}
    assert _digest(picked) == _digest([it for it in corpus if it.kind in ("synthetic", "phantom", "ct")])
    assert non_brain_corpus(kinds=[]) == []
    with pytest.raises(ValueError, match="unknown kind"):
        non_brain_corpus(kinds=["brain"])


def test_limit_spreads_over_kinds(corpus):
    small = non_brain_corpus(seed=0, limit=20)
    assert len(small) == 20
    available = {it.kind for it in corpus}
    assert {it.kind for it in small} == available  # at most 9 kinds: each gets at least one
    assert non_brain_corpus(seed=0, kinds=["phantom"], limit=0) == []


def test_write_corpus_round_trips(corpus, tmp_path, monkeypatch):
    monkeypatch.delenv(WINDOW_ENV, raising=False)
    per_kind: dict[str, int] = {}
    chosen = []
    for it in corpus:
        if it.source_file or per_kind.get(it.kind, 0) < 3:
            chosen.append(it)
            per_kind[it.kind] = per_kind.get(it.kind, 0) + 1
    paths = write_corpus(chosen, tmp_path / "out")
    assert len(paths) == len(chosen) == len({p.name for p in paths})
    for it, path in zip(chosen, paths, strict=True):
        assert path.is_file() and path.parent == tmp_path / "out"
        back = read_image(path)
        if it.source_file:
            assert path.suffix == ".dcm"
            assert path.read_bytes() == open(it.source_file, "rb").read()
        else:
            assert path.suffix == ".png"
        np.testing.assert_array_equal(back, it.image, err_msg=it.name)


def test_optional_dependencies_missing(monkeypatch):
    for mod in ("skimage", "skimage.data", "pydicom", "pydicom.data"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes `import mod` raise ImportError
    nonbrain._dicom_scan.cache_clear()
    try:
        items = non_brain_corpus(seed=0)
    finally:
        nonbrain._dicom_scan.cache_clear()
    assert len(items) > 50
    assert {it.kind for it in items} == {"synthetic", "phantom"}
    assert not any(it.name.startswith(("skimage/", "pydicom/")) for it in items)
