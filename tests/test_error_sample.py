"""benchmarks/error_sample.py: the seeded montage of one outcome of an evaluation that the by-eye counts use."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "error_sample.py"


def _predictions(tmp_path: Path) -> Path:
    """Eight images: each outcome twice, the image's brightness coding its row (row i is 20 * (i + 1))."""
    outcomes = [("tumour", "tumour"), ("tumour", "no_tumour"), ("no_tumour", "tumour"), ("no_tumour", "no_tumour")] * 2
    rows = []
    for i, (label, said) in enumerate(outcomes):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 30), 20 * (i + 1), np.uint8)).save(path)
        p = 0.9 if said == "tumour" else 0.1
        rows.append({"path": str(path), "label": label, "predicted": said, "p_tumour": p, "p_no_tumour": 1 - p})
    out = tmp_path / "predictions.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def _run(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_false_positives_drawn_with_their_thumbnails_and_index(tmp_path):
    preds = _predictions(tmp_path)
    got = _run(str(preds), "--kind", "fp", "--n", "5", "--side", "16", "--cols", "2", "--out", str(tmp_path / "fp.png"))
    assert got["counts"] == {"tp": 2, "fp": 2, "tn": 2, "fn": 2}
    assert got["drawn"] == 2
    with open(tmp_path / "fp.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    assert [r["label"] for r in index] == ["no_tumour"] * 2 and [r["predicted"] for r in index] == ["tumour"] * 2
    assert {Path(r["path"]).name for r in index} == {"2.png", "6.png"}
    assert all(r["p_tumour"] == "0.9" for r in index)
    grid = np.asarray(Image.open(tmp_path / "fp.png"))
    assert grid.shape == (16, 32)
    # each cell holds its own image (the index drawn in its corner aside): rows 2 and 6 have brightness 60 and 140
    for cell, r in enumerate(index):
        value = 20 * (int(Path(r["path"]).stem) + 1)
        assert np.median(grid[8:, cell * 16:(cell + 1) * 16]) == value


def test_same_seed_same_draw_and_skip_pages_on(tmp_path):
    preds = _predictions(tmp_path)
    first = [_run(str(preds), "--kind", "all", "--n", "3", "--seed", "7", "--out", str(tmp_path / f"a{i}.png"))
             for i in range(2)]
    assert first[0]["drawn"] == first[1]["drawn"] == 3
    a0 = (tmp_path / "a0.csv").read_text()
    assert a0 == (tmp_path / "a1.csv").read_text()
    _run(str(preds), "--kind", "all", "--n", "3", "--seed", "7", "--skip", "3", "--out", str(tmp_path / "b.png"))
    page1 = {r["path"] for r in csv.DictReader(open(tmp_path / "a0.csv"))}
    page2 = {r["path"] for r in csv.DictReader(open(tmp_path / "b.csv"))}
    assert len(page1) == len(page2) == 3 and not page1 & page2
