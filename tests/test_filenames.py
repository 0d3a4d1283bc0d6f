"""Any file name: names that are not UTF-8 (legal on Linux) and names holding rich markup, through every command.

A tiny CNN is trained once (CLI, on phantoms, with a validation folder holding the odd names so that they reach
``predictions.csv``, the report and the figures); evaluate, explain and predict then run on that folder. Each
command must finish without a traceback, print the names literally (``[red]x[/red]`` is not a colour), write
valid UTF-8 (the odd bytes as ``\\xNN``) and keep the exact name where it is read back (``path_bytes``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.data.synthetic import write_phantoms
from braintumor.display import csv_text, exact_name, json_names, markup, name_from_row, plot_text, printable

runner = CliRunner()

NOT_UTF8 = os.fsdecode(b"scan\xff.png")  # 'scan\udcff.png'
MARKUP_DIR, MARKUP_FILE = "[red]x[", "red].png"  # together: '[red]x[/red].png' (a name cannot hold '/')
BOLD = "[bold]b$1.png"  # markup and a mathtext '$' (figure titles)
BROKEN = "[bold]broken.png"  # not an image: named in the 'skipped' / 'could not be read' lines


def _odd_names_supported(tmp: Path) -> bool:
    try:
        (tmp / NOT_UTF8).write_bytes(b"")
        (tmp / NOT_UTF8).unlink()
        return True
    except (OSError, UnicodeEncodeError):
        return False


def _rename_first(folder: Path, name: str) -> Path:
    first = sorted(folder.glob("phantom_*.png"))[0]
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    first.rename(target)
    return target


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """A trained run and a validation folder ``val`` with the odd names; the current folder is their parent."""
    root = tmp_path_factory.mktemp("names")
    if not _odd_names_supported(root):
        pytest.skip("this file system does not take file names that are not UTF-8")
    write_phantoms(root / "train", n=40, size=32, seed=1)
    _rename_first(root / "train" / "yes", NOT_UTF8)  # in the data fingerprint
    write_phantoms(root / "val", n=12, size=32, seed=2)
    _rename_first(root / "val" / "yes", NOT_UTF8)
    _rename_first(root / "val" / "no", f"{MARKUP_DIR}/{MARKUP_FILE}")
    _rename_first(root / "val" / "no", BOLD)
    old = os.getcwd()
    os.chdir(root)  # short relative paths: table cells stay on one line
    try:
        r = runner.invoke(app, ["train", "train", "--val-dir", "val", "--model", "cnn", "--img-size", "32",
                                "--epochs", "1", "--batch-size", "16", "--no-ood-check", "--out", "run"])
    finally:
        os.chdir(old)
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture
def here(odd, monkeypatch):
    monkeypatch.chdir(odd)
    return odd


def _names_in(text: str) -> None:
    """The odd names, printed literally (markup not applied) and printable (``\\xff``)."""
    assert "scan\\xff.png" in text
    assert "[red]x[/red].png" in text and "[bold]b$1.png" in text


def _exact_rows(path: Path) -> list[dict]:
    raw = path.read_bytes()
    raw.decode("utf-8")  # valid UTF-8, whatever the names
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))


def _check_exact(rows: list[dict], root: Path, key: str = "path") -> None:
    """Every row's exact name (``path_bytes`` where the printable one differs) is a real file."""
    odd_rows = [r for r in rows if "scan" in r[key]]
    assert odd_rows and all(r[f"{key}_bytes"] for r in odd_rows)
    for r in rows:
        assert (root / name_from_row(r, key)).is_file(), r


def test_train_with_odd_names(here):
    run = here / "run"
    _check_exact(_exact_rows(run / "split.csv"), here)
    rows = _exact_rows(run / "predictions.csv")
    _check_exact(rows, here)
    names = {r["path"] for r in rows}
    assert "val/yes/scan\\xff.png" in names and "val/no/[red]x[/red].png" in names
    (run / "report.html").read_bytes().decode("utf-8")
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "complete" and len(meta["data"]["fingerprint"]) == 64


def test_fingerprint_hashes_the_name_bytes(tmp_path):
    """Names are hashed as bytes: a name that is not UTF-8 works, and UTF-8 names hash as before."""
    import hashlib

    from braintumor.data.discover import _digest, fingerprint

    if not _odd_names_supported(tmp_path):
        pytest.skip("file names that are not UTF-8 are not supported here")
    (tmp_path / "a.png").write_bytes(b"1")
    (tmp_path / "é.png").write_bytes(b"2")
    paths = [tmp_path / "a.png", tmp_path / "é.png"]
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0" + _digest(p))
    assert fingerprint(paths, tmp_path) == h.hexdigest()  # the old digest of UTF-8 names
    (tmp_path / NOT_UTF8).write_bytes(b"3")
    fp = fingerprint([*paths, tmp_path / NOT_UTF8], tmp_path)
    assert len(fp) == 64 and fp != h.hexdigest()


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_predict_prints_and_writes_any_name(here, fmt):
    (here / "val" / "no" / BROKEN).write_bytes(b"not an image")
    try:
        r = runner.invoke(app, ["predict", "run", "val", "--format", fmt, "--backend", "torch"],
                          env={"COLUMNS": "200"})  # table cells on one line
    finally:
        (here / "val" / "no" / BROKEN).unlink()
    assert r.exit_code == 1, r.output  # one unreadable file
    assert "Traceback" not in r.output and "1 of 13 file(s) could not be read" in r.output
    assert "val/no/[bold]broken.png:" in r.output  # its line on stderr, markup printed as text
    if fmt != "json":
        _names_in(r.output)
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        _check_exact([x for x in rows if not x["error"]], here)
    if fmt == "json":
        preds = json.loads(r.stdout)["predictions"]
        _names_in(" ".join(p["path"] for p in preds))
        odd_one = next(p for p in preds if "scan" in p["path"])
        assert os.fsdecode(bytes.fromhex(odd_one["path_bytes"])) == f"val/yes/{NOT_UTF8}"


def test_predict_out_file_is_valid_utf8(here, tmp_path):
    out = tmp_path / "p.csv"
    r = runner.invoke(app, ["predict", "run", "val", "--out", str(out), "--backend", "torch"])
    assert r.exit_code == 0, r.output
    _check_exact(_exact_rows(out), here)


def test_evaluate_with_odd_names(here, tmp_path):
    (here / "val" / "no" / BROKEN).write_bytes(b"not an image")
    try:
        r = runner.invoke(app, ["evaluate", "run", "--data", "val", "--out", str(tmp_path / "ev")])
    finally:
        (here / "val" / "no" / BROKEN).unlink()
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "skipped val/no/[bold]broken.png" in r.output
    rows = _exact_rows(tmp_path / "ev" / "predictions.csv")
    assert len(rows) == 12  # whole: every readable image, the odd names included
    _check_exact(rows, here)


def test_explain_with_odd_names(here, tmp_path):
    out = tmp_path / "ex"
    r = runner.invoke(app, ["explain", "run", "val", "--out", str(out), "--no-ood-check", "--method", "gradcam"])
    assert r.exit_code == 0, r.output
    assert "wrote 12 explanation(s)" in r.output
    assert (out / os.fsdecode(b"scan\xff.png")).is_file()  # the figure keeps the image's own name
    assert (out / "[bold]b$1.png").is_file() and (out / "red]_overlay.png").is_file()
    masks = runner.invoke(app, ["explain", "run", "val", "--out", str(tmp_path / "exm"), "--masks",
                                str(here / "val" / "_masks"), "--method", "gradcam", "--steps", "2"])
    assert masks.exit_code == 0, masks.output
    _check_exact(_exact_rows(tmp_path / "exm" / "explain_metrics.csv"), here)


def test_figure_titles_take_any_name(tmp_path):
    """A title with undecodable bytes or a broken mathtext formula renders (matplotlib fails on both raw)."""
    from braintumor.plots import plot_confusion

    for title in (NOT_UTF8, "$\\frac{", "[red]x[/red] $x"):
        plot_confusion([[1, 0], [0, 1]], ["n$o", os.fsdecode(b"y\xffes")], tmp_path / "cm.png", title)
        assert (tmp_path / "cm.png").stat().st_size > 0


@pytest.mark.parametrize("name,shown,exact", [
    ("plain.png", "plain.png", ""),
    ("é [x].png", "é [x].png", ""),
    (NOT_UTF8, "scan\\xff.png", "7363616eff2e706e67"),
    ("a\nb\x1b[31m.png", "a\\x0ab\\x1b[31m.png", b"a\nb\x1b[31m.png".hex()),
    ("[red]x[/red] [bold]", "[red]x[/red] [bold]", ""),
])
def test_printable_and_exact(name, shown, exact):
    from rich.console import Console

    assert printable(name) == shown and printable(Path(name)) == shown
    assert exact_name(name) == exact
    printable(name).encode("utf-8")
    if exact:
        assert name_from_row({"path": shown, "path_bytes": exact}) == name
    con = Console(file=io.StringIO(), width=200, color_system=None)
    con.print(markup(name), end="")
    assert con.file.getvalue() == shown  # rich markup in a name is printed as it is


def test_surrogates_that_are_not_bytes_and_mathtext():
    """Text that no file system made (a lone surrogate from JSON, say) still becomes printable."""
    s = printable("\udc80\ud800")
    s.encode("utf-8")
    assert s.startswith("\\") and exact_name("\udc80\ud800")
    assert plot_text("a$b") == "a\\$b"


def test_csv_and_json_helpers_round_trip():
    rows = [[NOT_UTF8, "yes"], ["b.png", "no"]]
    text = csv_text(["path", "label"], rows)
    back = list(csv.DictReader(io.StringIO(text)))
    assert [name_from_row(r) for r in back] == [NOT_UTF8, "b.png"]
    assert list(back[0]) == ["path", "label", "path_bytes"]
    assert "path_bytes" not in csv_text(["path"], [["b.png"]])  # plain names: the columns as they always were
    doc = json.dumps(json_names({"predictions": [{"path": NOT_UTF8}]}))
    doc.encode("ascii")
    assert "\\udcff" not in doc and os.fsdecode(bytes.fromhex(json.loads(doc)["predictions"][0]["path_bytes"])) \
        == NOT_UTF8


def test_rich_markup_in_an_error_is_printed_literally(tmp_path):
    missing = tmp_path / "[bold]nope[/bold]"
    r = runner.invoke(app, ["predict", str(tmp_path / "run"), str(missing)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("[bold]nope[/bold]"), r.output


def test_copying_a_run_with_odd_names_keeps_them(here, tmp_path):
    """split.csv's exact names survive a copy of the run folder (they live in the file, not in the file system)."""
    dst = tmp_path / "copy"
    shutil.copytree(here / "run", dst)
    _check_exact(_exact_rows(dst / "split.csv"), here)
