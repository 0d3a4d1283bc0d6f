"""Lesion pasting: the lesion of a tumour slice carried into a normal slice; pasted copies as tumour training
images (``--paste-lesions``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from braintumor.data.erase import erase_lesion
from braintumor.data.paste import lift_lesion, paste_lesion, pasted_copies, place_lesion
from braintumor.data.synthetic import make_phantom
from conftest import train_with_lesion_copies, write_erasable_tumours


def _contrast(img: np.ndarray, lesion: np.ndarray) -> float:
    """How far the lesion's mean lies from the tissue in a ring around it."""
    wide = ndimage.binary_dilation(lesion, iterations=4)
    ring = ndimage.binary_dilation(wide, iterations=4) & ~wide & (img > 30)
    return float(img[lesion].mean()) - float(img[ring].mean())


def _pairs(n: int, seed: int = 0):
    """``n`` (tumour phantom with an erasable lesion, its mask, normal phantom) triples."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        img, mask = make_phantom(rng, size=96, tumour=True)
        if erase_lesion(img, mask) is None:
            continue
        normal, _ = make_phantom(rng, size=96, tumour=False)
        out.append((img, mask, normal))
    return out


def test_pasted_lesion_keeps_its_contrast_and_leaves_the_rest_untouched():
    for donor, mask, normal in _pairs(8):
        res = paste_lesion(np.dstack([donor] * 3), mask, np.dstack([normal] * 3))
        assert res is not None
        out, placed = res
        assert out.shape == (96, 96, 3) and out.dtype == np.uint8 and placed.dtype == bool
        assert (out[..., 0] == out[..., 2]).all()  # a grey image stays grey
        assert placed.sum() == (mask > 0).sum()  # the same lesion, here or mirrored
        far = ~ndimage.binary_dilation(placed, iterations=3 * max(2, 96 // 40) + 4)
        assert (out[..., 0][far] == normal[far]).all()  # nothing changes away from the lesion
        lesion = _contrast(donor.astype(float), mask > 0)
        added = _contrast(out[..., 0].astype(float), placed) - _contrast(normal.astype(float), placed)
        assert np.sign(added) == np.sign(lesion) and 0.4 * abs(lesion) < abs(added) < 2.5 * abs(lesion), \
            (lesion, added)


def test_a_lesion_that_would_leave_the_head_is_mirrored_or_left_out():
    donor, mask, normal = _pairs(1, seed=4)[0]
    lesion = lift_lesion(donor, mask)
    cols = np.flatnonzero(mask.any(axis=0))
    left = cols.mean() < 48
    squeezed = normal.copy()  # the lesion's half of the head blanked: it must go to the other side
    if left:
        squeezed[:, :48] = 0
    else:
        squeezed[:, 48:] = 0
    res = place_lesion(lesion, squeezed)
    if res is not None:  # mirrored into the half that is left
        placed_cols = np.flatnonzero(res[1].any(axis=0))
        assert (placed_cols.mean() < 48) != left
        assert (res[0][squeezed == 0] == 0).mean() > 0.99
    assert place_lesion(lesion, np.zeros_like(normal)) is None  # no head at all
    yy, xx = np.mgrid[:96, :96]
    assert lift_lesion(donor, (yy - 48) ** 2 + (xx - 48) ** 2 < 10 ** 2) is None  # a mid-line lesion
    with pytest.raises(ValueError, match="differ in shape"):
        paste_lesion(donor, mask, normal[:90])


def test_pasted_copies_pair_every_lesion_with_a_normal_image():
    pairs = _pairs(6)
    images = np.stack([p[0] for p in pairs] + [p[2] for p in pairs])[..., None].repeat(3, axis=3)
    masks = np.stack([p[1].astype(np.uint8) for p in pairs] + [np.zeros((96, 96), np.uint8)] * 6)
    made = pasted_copies(images, masks, range(6), range(6, 12), seed=1)
    assert made.summary() == {"pasted": 6, "not_pasted": 0}
    assert made.donor.tolist() == list(range(6)) and set(made.recipient.tolist()) == set(range(6, 12))
    assert made.images.shape == (6, 96, 96, 3) and made.masks.shape == (6, 96, 96)
    assert [int(m.sum()) for m in made.masks] == [int((masks[i] > 0).sum()) for i in range(6)]
    again = pasted_copies(images, masks, range(6), range(6, 12), seed=1)
    assert (again.images == made.images).all()  # seeded
    none = pasted_copies(images, masks, range(6), [], seed=1)
    assert none.summary() == {"pasted": 0, "not_pasted": 6} and none.images.shape == (0, 96, 96, 3)


def test_a_cap_per_normal_image_pastes_a_random_sample_of_lesions():
    pairs = _pairs(8, seed=2)
    images = np.stack([p[0] for p in pairs] + [p[2] for p in pairs[:3]])[..., None].repeat(3, axis=3)
    masks = np.stack([p[1].astype(np.uint8) for p in pairs] + [np.zeros((96, 96), np.uint8)] * 3)
    uncapped = pasted_copies(images, masks, range(8), range(8, 11), seed=1)
    assert uncapped.summary() == {"pasted": 8, "not_pasted": 0}  # three normal images take eight lesions
    assert np.bincount(uncapped.recipient - 8).max() >= 3
    same = pasted_copies(images, masks, range(8), range(8, 11), seed=1, per_recipient=0)
    assert (same.images == uncapped.images).all() and (same.donor == uncapped.donor).all()  # 0: no cap
    capped = pasted_copies(images, masks, range(8), range(8, 11), seed=1, per_recipient=1)
    assert capped.summary() == {"pasted": 3, "not_pasted": 5}
    assert sorted(capped.recipient.tolist()) == [8, 9, 10]  # each normal image once
    twice = pasted_copies(images, masks, range(8), range(8, 11), seed=1, per_recipient=2)
    assert twice.summary()["pasted"] == 6 and np.bincount(twice.recipient - 8).tolist() == [2, 2, 2]
    donors = {tuple(pasted_copies(images, masks, range(8), range(8, 11), seed=s, per_recipient=1).donor)
              for s in range(6)}
    assert len(donors) > 1 and any(max(d) > 2 for d in donors)  # a seeded sample, not always the first donors


def test_bright_lesions_are_bright_throughout_and_leave_the_pairing_alone():
    pairs = _pairs(8, seed=5)
    images = np.stack([p[0] for p in pairs] + [p[2] for p in pairs])[..., None].repeat(3, axis=3)
    masks = np.stack([p[1].astype(np.uint8) for p in pairs] + [np.zeros((96, 96), np.uint8)] * 8)
    plain = pasted_copies(images, masks, range(8), range(8, 16), seed=3)
    every = pasted_copies(images, masks, range(8), range(8, 16), seed=3, bright=1.0)
    assert every.summary() == plain.summary() | {"bright": 8}
    assert (every.donor == plain.donor).all() and (every.recipient == plain.recipient).all()
    for k, j in enumerate(every.recipient):
        added = every.images[k, ..., 0].astype(int) - images[j, ..., 0].astype(int)
        assert added.min() >= 0 and added.max() > 20  # nothing darker, the lesion brighter
        assert (plain.images[k, ..., 0].astype(int) - images[j, ..., 0]).min() < -5  # as-is: a dark part too
    some = pasted_copies(images, masks, range(8), range(8, 16), seed=3, bright=0.5)
    assert 0 < some.summary()["bright"] < 8 and (some.recipient == plain.recipient).all()
    assert "bright" not in plain.summary()


def test_train_with_pasted_lesions_adds_tumour_copies(phantoms, tmp_path):
    res, meta, rows, n_train = train_with_lesion_copies(phantoms, tmp_path / "run", "--paste-lesions")
    made = meta["tumour_map"]["lesions_pasted"]
    n_yes, n_no = n_train["yes"], n_train["no"]
    assert made["pasted"] + made["not_pasted"] == n_yes and made["pasted"] >= n_yes // 4, (made, n_yes)
    assert meta["data"]["train_counts"] == {"no": n_no, "yes": n_yes + made["pasted"]}  # they train as tumours
    assert meta["data"]["sources"][f"{phantoms.name} (lesion pasted)"]["n_train"] == made["pasted"]
    assert meta["tumour_map"]["train"]["masked"] == n_yes + made["pasted"]  # with the pasted outline as mask
    assert not any("lesion-pasted" in r["path"] for r in rows)  # made in the run: not files to re-read
    assert "lesions pasted" in res.output


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """Three phantom collections: A holds only tumours (with masks, off the mid-line), B only normal slices, half
    as bright (its scanner), D both, at B's brightness: a model trained on A + B can call every dark slice normal."""
    from PIL import Image

    from braintumor.data.synthetic import write_phantoms

    base = tmp_path_factory.mktemp("collections")
    write_erasable_tumours(base / "srcA", 120, seed=31)
    write_phantoms(base / "srcB", n=120, size=64, seed=32, tumour_fraction=0.0, normal_gain=0.5)
    (base / "srcB" / "yes").rmdir()  # a collection of one class has no folder for the other
    write_phantoms(base / "srcD", n=120, size=64, seed=33)
    for p in (base / "srcD").glob("[ny]*/*.png"):  # D's scanner: everything half as bright
        Image.fromarray((np.asarray(Image.open(p), np.float32) * 0.5).astype(np.uint8)).save(p)
    return base


def test_pasted_lesions_recover_a_source_whose_look_meant_normal(collections, tmp_path):
    """Left out, D exposes the shortcut (its dark tumour slices are called normal); with A's lesions pasted into
    B's dark normal slices (dark slices with a lesion, labelled tumour) darkness no longer means normal and D
    recovers."""
    from braintumor.crossval import cv

    dirs = [str(collections / s) for s in ("srcA", "srcB", "srcD")]
    kw = dict(by_source=True, hold_out=[dirs[2]], model="cnn", img_size=64, epochs=20, batch_size=32, seed=0,
              masks=str(collections / "srcA" / "_masks"), classes={"tumour": ["yes"], "no_tumour": ["no"]})
    plain = cv(dirs, out=tmp_path / "plain", **kw)
    pasted = cv(dirs, out=tmp_path / "pasted", paste_lesions=True, **kw)
    m = [next(r for r in res.rows if r["kind"] == "cross")["metrics"] for res in (plain, pasted)]
    print("on D, plain / pasted:", [(x["balanced_accuracy"], x["sensitivity"]) for x in m])
    assert m[0]["balanced_accuracy"] <= 0.75 and m[0]["sensitivity"] <= 0.5, m[0]
    assert m[1]["balanced_accuracy"] >= m[0]["balanced_accuracy"] + 0.15, m
