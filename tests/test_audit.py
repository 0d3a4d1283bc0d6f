"""Duplicate and leakage audit: known copies must group, distinct scans must not, labels and leaks reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.data.audit import AuditReport, audit, duplicate_groups
from braintumor.data.synthetic import make_phantom
from conftest import NAVONEEL, needs_data


def _scan(seed: int, tumour: bool = False) -> np.ndarray:
    """A phantom head on a larger black canvas, like a real slice with background around it."""
    img, _ = make_phantom(np.random.default_rng(seed), size=160, tumour=tumour)
    canvas = np.zeros((200, 220), np.uint8)
    canvas[20:180, 30:190] = img
    return canvas


def _save(arr: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


# The copies of scan A that must all land in one group, and the distinct scans that must not join it.
COPIES = ["yes/a.png", "yes/a_bytes.png", "yes/a_reencoded.jpg", "yes/a_resized.png", "yes/a_cropped.png",
          "yes/a_brighter.png", "yes/a_rgb_png_named.jpg"]
DISTINCT = ["yes/b.png", "yes/c.png", "no/d.png", "no/e.png", "no/f.jpg"]


@pytest.fixture(scope="module")
def copies_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    a = _scan(1, tumour=True)
    _save(a, root / "yes/a.png")
    shutil.copyfile(root / "yes/a.png", root / "yes/a_bytes.png")
    _save(a, root / "yes/a_reencoded.jpg", quality=80)
    _save(np.asarray(Image.fromarray(a).resize((150, 136), Image.BILINEAR)), root / "yes/a_resized.png")
    _save(a[6:-4, 12:-8], root / "yes/a_cropped.png")                            # trims background and a bit more
    _save(np.clip(a.astype(np.float32) * 1.15 + 10, 0, 255).astype(np.uint8), root / "yes/a_brighter.png")
    _save(np.repeat(a[..., None], 3, axis=2), root / "yes/a_rgb_png_named.jpg", format="PNG")
    _save(_scan(2, tumour=True), root / "yes/b.png")
    _save(_scan(3, tumour=True), root / "yes/c.png")
    _save(_scan(4), root / "no/d.png")
    _save(_scan(5), root / "no/e.png")
    _save(_scan(6), root / "no/f.jpg", quality=90)
    return root


def _group_of(root: Path, names: list[str]) -> dict[str, str]:
    paths = [root / n for n in names]
    return dict(zip(names, duplicate_groups(paths), strict=True))


def test_duplicate_groups_known_copies(copies_dir):
    g = _group_of(copies_dir, COPIES + DISTINCT)
    assert len({g[n] for n in COPIES}) == 1, g
    assert len({g[n] for n in DISTINCT}) == len(DISTINCT)
    assert g["yes/a.png"] not in {g[n] for n in DISTINCT}
    # Ids depend on content, not on order.
    rev = _group_of(copies_dir, list(reversed(COPIES + DISTINCT)))
    assert rev == g


def test_distinct_phantoms_never_merge(phantoms):
    from braintumor.data import discover

    ds = discover(phantoms)
    groups = duplicate_groups(ds.paths)
    assert len(groups) == len(ds) == 400
    assert len(set(groups)) == 400


def test_proposal_equals_the_dense_matrix(phantoms):
    """The chunked proposal (upper triangle within one set, the full rectangle between two) finds exactly the pairs
    of the whole correlation matrix, up to float rounding at the threshold."""
    from braintumor.data import discover
    from braintumor.data.audit import PROPOSE_MIN, _propose, _thumbs, _unit_rows, scan

    th = _thumbs(scan(discover(phantoms).paths))
    ok = np.ones(len(th), bool)

    def same_pairs(found, c, upper):
        dense = {(a, b) for a, b in np.argwhere(c >= PROPOSE_MIN).tolist() if a < b or not upper}
        return len(dense) > 500 and all(abs(c[a, b] - PROPOSE_MIN) < 1e-4 for a, b in dense ^ found)

    z = _unit_rows(th)
    i, j, _ = _propose(th, None, ok, None, chunk=37)
    assert same_pairs(set(zip(i.tolist(), j.tolist(), strict=True)), z @ z.T, upper=True)
    i, j, _ = _propose(th[:150], th[150:], ok[:150], ok[150:], chunk=37)
    assert same_pairs(set(zip(i.tolist(), j.tolist(), strict=True)), z[:150] @ z[150:].T, upper=False)


def test_audit_report_on_copies(copies_dir):
    r = audit(copies_dir)
    assert isinstance(r, AuditReport)
    assert r.n_images == 12 and r.n_readable == 12
    assert r.n_distinct == 1 + len(DISTINCT)
    assert r.byte_groups == [["yes/a.png", "yes/a_bytes.png"]]
    # The PNG named .jpg decodes to the same pixels as a.png (greyscale stored as RGB: same RGB array).
    assert r.pixel_groups and "yes/a_rgb_png_named.jpg" in r.pixel_groups[0]
    assert len(r.near_groups) == 1 and sorted(r.near_groups[0]["files"]) == sorted(COPIES)
    assert r.near_groups[0]["min_score"] >= 0.8
    assert r.cross_class_groups == []
    assert r.distinct_per_class == {"no": 3, "yes": 3}
    assert r.class_stats["yes"]["name_mismatch"] == 1 and r.class_stats["no"]["name_mismatch"] == 0
    assert r.class_stats["yes"]["formats"] == {"PNG": 8, "JPEG": 1}
    d = json.loads(json.dumps(r.to_dict()))
    assert d["n_distinct"] == 6 and d["against"] is None
    assert "n_distinct" in repr(r) or "6 distinct" in repr(r)


def test_cross_class_conflict_and_unreadable(copies_dir, tmp_path):
    root = tmp_path / "conflict"
    shutil.copytree(copies_dir, root)
    _save(np.asarray(Image.open(root / "yes/c.png")), root / "no/c_again.jpg", quality=85)  # label conflict
    (root / "no/broken.png").write_text("not an image")
    _save(np.full((40, 30), 120, np.uint8), root / "no/tiny.png")
    r = audit(root)
    assert len(r.cross_class_groups) == 1
    conflict = r.cross_class_groups[0]
    assert sorted(conflict["files"]) == ["no/c_again.jpg", "yes/c.png"]
    assert sorted(conflict["classes"]) == ["no", "yes"]
    assert r.warnings[0].startswith("1 duplicate group(s)")            # label conflicts come first
    assert r.unreadable == [{"file": "no/broken.png", "reason": "not an image (looks like text)"}]
    assert r.tiny == [{"file": "no/tiny.png", "width": 30, "height": 40}]
    assert r.n_images == 15 and r.n_readable == 14
    groups = duplicate_groups([root / "no/broken.png", root / "yes/c.png", root / "no/c_again.jpg"])
    assert groups[1] == groups[2] != groups[0]


def test_against_leakage(copies_dir, tmp_path):
    other = tmp_path / "other"
    _save(np.asarray(Image.open(copies_dir / "no/d.png")).copy(), other / "notumor/d_copy.jpg", quality=75)
    _save(_scan(7), other / "notumor/g.png")
    _save(_scan(8, tumour=True), other / "glioma/h.png")
    shutil.copyfile(copies_dir / "yes/b.png", other / "glioma/b_same_bytes.png")
    r = audit(copies_dir, against=other, confounders=False)
    leaked = {e["file"]: e for e in r.leaks}
    assert sorted(leaked) == ["no/d.png", "yes/b.png"]
    assert leaked["no/d.png"]["matches"][0]["file"] == "notumor/d_copy.jpg"
    assert leaked["no/d.png"]["matches"][0]["kind"] == "near"
    assert leaked["yes/b.png"]["matches"] == [{"file": "glioma/b_same_bytes.png", "class": "glioma",
                                              "score": 1.0, "kind": "bytes"}]
    assert r.leak_counts == {"files": 2, "exact": 1, "per_class": {"no": 1, "yes": 1}, "other_files": 2}
    assert any("have a copy in" in w for w in r.warnings)


def test_confounder_check_flags_source_difference(tmp_path):
    # Same anatomy generator, but each class comes from a "different scanner": sizes and brightness differ.
    for k in range(20):
        _save(_scan(100 + k), tmp_path / "no" / f"n{k}.png")
        big = np.asarray(Image.fromarray(_scan(200 + k, tumour=True)).resize((330, 300)))
        _save(np.clip(big.astype(np.int16) + 25, 0, 255).astype(np.uint8), tmp_path / "yes" / f"y{k}.jpg")
    r = audit(tmp_path)
    conf = r.confounders
    assert conf["warning"] and conf["auc"] >= 0.95 and conf["accuracy"] >= 0.9
    assert conf["chance_accuracy"] == 0.5 and conf["folds"] == 5
    assert any("image statistics alone" in w for w in r.warnings)


def test_cli_audit_json(copies_dir, tmp_path):
    out = tmp_path / "audit.json"
    other = tmp_path / "other"
    _save(np.asarray(Image.open(copies_dir / "no/e.png")), other / "notumor/e.png", compress_level=1)
    _save(_scan(9, tumour=True), other / "glioma/x.png")
    res = CliRunner().invoke(app, ["audit", str(copies_dir), "--against", str(other), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "near-duplicate groups: 1" in res.output and "distinct images: 6" in res.output
    assert "images with a copy in" in res.output and "no/e.png (no) -> notumor/e.png (notumor, pixels 1.00)" \
        in res.output
    d = json.loads(out.read_text())
    assert d["n_distinct"] == 6 and len(d["byte_groups"]) == 1 and d["cross_class_groups"] == []
    assert d["leak_counts"]["files"] == 1 and d["leaks"][0]["file"] == "no/e.png"
    assert set(d) >= {"class_stats", "confounders", "near_groups", "leaks", "unreadable", "warnings"}


def test_cli_audit_missing_folder(tmp_path):
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "no such folder" in res.output


@needs_data(NAVONEEL)
def test_navoneel_duplicates():
    r = audit(NAVONEEL)
    assert len(r.byte_groups) == 22 and r.n_byte_duplicates == 47
    assert r.cross_class_groups == []
    assert 195 <= r.n_distinct <= 210
    assert r.unreadable == [] and r.class_counts == {"no": 98, "yes": 155}
    assert r.class_stats["no"]["name_mismatch"] == 6
    # Image statistics alone separate the classes of this set (different sources): the audit must say so.
    assert r.confounders["warning"] and r.confounders["auc"] > 0.75


# ------------------------------------------------------------------------------------------- source confounder
@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> dict[str, Path]:
    """Three phantom folders (60 images of 64 px each, other seeds): ``a``, ``same`` (no cue) and ``darker`` (a
    planted source cue: every image re-saved at 70 % brightness, plus 6 byte copies of ``a``'s images)."""
    from braintumor.data.synthetic import write_phantoms

    root = tmp_path_factory.mktemp("sources")
    for name, seed in (("a", 11), ("same", 12), ("darker", 13)):
        write_phantoms(root / name, n=60, size=64, seed=seed)
    for p in sorted((root / "darker").glob("*/*.png")):
        _save((np.asarray(Image.open(p)).astype(np.float32) * 0.7).astype(np.uint8), p)
    for p in sorted((root / "a" / "no").glob("*.png"))[:6]:
        shutil.copyfile(p, root / "darker" / "no" / f"copy_{p.name}")
    return {k: root / k for k in ("a", "same", "darker")}


def test_source_confounder_flags_planted_cue(two_sources):
    r = audit(two_sources["a"], against=two_sources["darker"])
    src = r.source_confounder
    assert src["auc"] > 0.9 and src["warning"]
    assert src["sources"] == [str(two_sources["a"]), str(two_sources["darker"])]
    # The byte copies of A's images are leaks: left out of B, so B counts its 60 phantoms only.
    assert r.leak_counts["files"] == 6 and src["excluded_b"] == 6
    assert src["n"] == [60, 60] and sum(src["class_counts"]["no"]) + sum(src["class_counts"]["yes"]) == 120
    assert set(src["per_class"]) == {"no", "yes"}
    assert all(v["how"] == "name" and v["auc"] > 0.85 for v in src["per_class"].values())
    top = [f["words"] for f in src["top_features"]]
    assert "mean intensity" in top and src["top_features"][0]["higher_in"] == str(two_sources["a"])
    assert any(w.startswith(f"image statistics alone tell {two_sources['a']} from {two_sources['darker']} (AUC")
               and w.endswith("a model can learn the source instead of the tumour") for w in r.warnings)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["source_confounder"]["auc"] == src["auc"]


def test_source_confounder_near_chance_without_cue(two_sources):
    r = audit(two_sources["a"], against=two_sources["same"])
    src = r.source_confounder
    assert src["auc"] < 0.75 and not src["warning"]
    assert src["excluded_b"] == 0 and src["n"] == [60, 60]
    assert not any("tell" in w for w in r.warnings)
    assert audit(two_sources["a"]).source_confounder is None
    assert audit(two_sources["a"], against=two_sources["same"], confounders=False).source_confounder == \
        {"skipped": "not requested"}


def test_source_confounder_check_validation_and_strata(two_sources):
    from braintumor.data import discover
    from braintumor.data.audit import scan, source_confounder_check

    a, b = discover(two_sources["a"]), discover(two_sources["same"])
    ia, ib = scan(a.paths), scan(b.paths)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        source_confounder_check(ia, ib, a.labels[:-1], b.labels, a.classes, b.classes)
    with pytest.raises(ValueError, match="labels_b must be indices"):
        source_confounder_check(ia, ib, a.labels, [5] * len(ib), a.classes, b.classes)
    with pytest.raises(ValueError, match="n_splits"):
        source_confounder_check(ia, ib, a.labels, b.labels, a.classes, b.classes, n_splits=1)
    with pytest.raises(ValueError, match="exclude_b"):
        source_confounder_check(ia, ib, a.labels, b.labels, a.classes, b.classes, exclude_b=[len(ib)])
    # Different class names: the negative classes and the tumour classes are still compared with each other.
    renamed = ["notumor", "glioma"]
    r = source_confounder_check(ia, ib, a.labels, b.labels, a.classes, renamed, names=("x", "y"), n_splits=3)
    assert r["folds"] == 3 and r["sources"] == ["x", "y"]
    assert {k: v["how"] for k, v in r["per_class"].items()} == {"no=notumor": "negative", "yes=glioma": "tumour"}
    assert r["class_counts"] == {"no": [30, 0], "yes": [30, 0], "notumor": [0, 30], "glioma": [0, 30]}
    # Too few images on one side: reported as skipped, no crash.
    tiny = source_confounder_check(ia, ib[:1], a.labels, b.labels[:1], a.classes, b.classes)
    assert "skipped" in tiny and "auc" not in tiny and not tiny["warning"]


def test_cli_audit_prints_source_check(two_sources):
    res = CliRunner().invoke(app, ["audit", str(two_sources["a"]), "--against", str(two_sources["darker"])])
    assert res.exit_code == 0, res.output
    assert "source check" in res.output and "all images" in res.output
    assert "top features (AUC of each alone)" in res.output and "class balance (A | B): no 30|30" in res.output
    assert "6 copies of A's images left out of B" in res.output
    assert "a model can learn the source instead of the tumour" in " ".join(res.output.split())


def test_candidate_cap_keeps_each_images_most_similar_proposals(phantoms):
    """A pair is confirmed only when it is among the first k proposals (highest thumbnail correlation) of one of its
    images: brute force agrees, the cap bounds the work on look-alikes, and the phantoms' groups do not change."""
    from braintumor.data import discover
    from braintumor.data.audit import _first_candidates, _group_ids, _propose, _thumbs, match, scan

    infos = scan(discover(phantoms).paths)
    th = _thumbs(infos)
    ci, cj, ncc = _propose(th, None, np.ones(len(th), bool), None)
    k = 3
    keep = _first_candidates(ci, cj, ncc, k)
    top: dict[int, set] = {}
    for a in set(ci.tolist()) | set(cj.tolist()):
        mine = [(-float(ncc[q]), q) for q in np.flatnonzero((ci == a) | (cj == a))]
        top[a] = {q for _, q in sorted(mine)[:k]}
    brute = np.array([q in top[int(ci[q])] or q in top[int(cj[q])] for q in range(len(ci))])
    assert len(ci) > 5 * len(th) and (keep == brute).all() and keep.sum() <= 2 * k * len(th) < len(ci)
    assert _group_ids(infos, match(infos)) == _group_ids(infos, match(infos, max_candidates=None))


def test_the_audit_does_not_load_torch(tmp_path):
    # `braintumor audit` reads and compares images: importing torch (~1 s) was a quarter of Navoneel's audit
    import subprocess
    import sys

    for k in range(6):
        cls = tmp_path / ("yes" if k % 2 else "no")
        cls.mkdir(exist_ok=True)
        img, _ = make_phantom(np.random.default_rng(k), size=96, tumour=bool(k % 2))
        Image.fromarray(img).save(cls / f"p{k}.png")
    code = ("import sys; from typer.testing import CliRunner; from braintumor.cli import app; "
            f"r = CliRunner().invoke(app, ['audit', {str(tmp_path)!r}]); print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-2:] == ["0", "False"], out
