"""Every bad input of issue 19, tried through the CLI and the HTTP API: each must end in a one-line error (exit 2)
or a 4xx, never a traceback, a 500 or lost work. Prints one JSON object per case and a summary line.

A tiny CNN is trained on generated phantoms in a temporary folder (about a minute on 2 cores); nothing outside that
folder is touched. Cases run in-process through the CLI (typer's test runner: an exception that escapes
``handle_errors`` counts as a traceback) and through FastAPI's test client.

    python benchmarks/bad_inputs.py                 # all cases
    python benchmarks/bad_inputs.py --only onnx     # the cases whose name contains 'onnx'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402

RESULTS: list[dict] = []


def _cli(argv: list) -> dict:
    from typer.testing import CliRunner

    from braintumor.cli import app

    t0 = time.perf_counter()
    res = CliRunner().invoke(app, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv])
    dt = time.perf_counter() - t0
    err = (res.stderr or "").strip()
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    traceback = res.exception is not None and not isinstance(res.exception, SystemExit)
    traceback = traceback or "Traceback" in err or "Traceback" in (res.stdout or "")
    return {"exit": res.exit_code, "error": lines[-1][:200] if lines else "", "error_lines": len(lines),
            "traceback": bool(traceback), "seconds": round(dt, 2),
            "exception": repr(res.exception)[:200] if traceback else None}


def case(name: str, kind: str, outcome: dict, ok: bool, **extra) -> None:
    row = {"case": name, "via": kind, "ok": bool(ok), **outcome, **extra}
    RESULTS.append(row)
    emit(row)


def cli_case(name: str, argv: list, *, expect_exit: int = 2, check=None) -> dict:
    out = _cli(argv)
    ok = out["exit"] == expect_exit and not out["traceback"] and (expect_exit == 0 or out["error_lines"] == 1)
    if check is not None:
        extra = check()
        ok = extra.pop("ok", True) and ok
        out.update(extra)
    case(name, "cli", out, ok)
    return out


# --------------------------------------------------------------------------------------------------- set-up


def make_run(root: Path) -> tuple[Path, Path]:
    from braintumor.config import TrainConfig
    from braintumor.data.synthetic import write_phantoms
    from braintumor.training import train

    data = root / "phantoms"
    write_phantoms(data, n=80, size=64, seed=0)
    run = root / "run"
    train(TrainConfig(data_dir=str(data), model="cnn", img_size=64, epochs=3, batch_size=32, seed=0), out=run)
    return data, run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("model.onnx", "evaluations"))
    return dest


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    data = fn(data)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


# --------------------------------------------------------------------------------------------------- cases


def config_cases(root: Path, data: Path) -> None:
    bad = {"seed -1": "seed: -1", "seed 1e30": "seed: 1.0e+30", 'img_size "224"': 'img_size: "224"',
           "batch_size null": "batch_size: null", "epochs 3.0": "epochs: 3.0",
           "label_smoothing 5": "label_smoothing: 5", "weight_decay -1": "weight_decay: -1",
           "num_threads -2": "num_threads: -2", "device banana": "device: banana",
           "target_sensitivity 2": "target_sensitivity: 2", "unknown key": "epoch: 3"}
    for i, (name, text) in enumerate(bad.items()):
        cfg = root / f"bad{i}.yaml"
        cfg.write_text(f"model: cnn\nimg_size: 64\nepochs: 1\n{text}\n")
        out = root / f"cfgrun{i}"
        cli_case(f"config: {name}", ["train", data, "--config", cfg, "--out", out],
                 check=lambda out=out: {"ok": not out.exists(), "left_folder": out.exists()})
    binary = root / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    cli_case("config: a binary file", ["train", data, "--config", binary, "--out", root / "cfgbin"])
    cli_case("config: a directory", ["train", data, "--config", root, "--out", root / "cfgdir"])
    lst = root / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    cli_case("config: a list", ["train", data, "--config", lst, "--out", root / "cfglist"])
    afile = root / "afile.txt"
    afile.write_text("keep me")
    cli_case("train --out naming a file", ["train", data, "--model", "cnn", "--epochs", "1", "--out", afile],
             check=lambda: {"ok": afile.read_text() == "keep me"})
    out = root / "ts2"
    cli_case("train --target-sensitivity 2 (checked before training)",
             ["train", data, "--model", "cnn", "--img-size", "64", "--epochs", "1", "--target-sensitivity", "2",
              "--out", out], check=lambda: {"ok": not out.exists(), "left_folder": out.exists()})
    out = root / "self-excl"
    cli_case("train --exclude-copies-of the training folder",
             ["train", data, "--model", "cnn", "--img-size", "64", "--epochs", "1", "--exclude-copies-of", data,
              "--out", out], expect_exit=2)


def metadata_cases(root: Path, run: Path, image: Path) -> None:
    mutations = {
        "empty file": lambda m: "",
        "a list": lambda m: [m],
        "no preprocessing": lambda m: {k: v for k, v in m.items() if k != "preprocessing"},
        "no classes": lambda m: {k: v for k, v in m.items() if k != "classes"},
        "no model": lambda m: {k: v for k, v in m.items() if k != "model"},
        "no img_size": lambda m: {k: v for k, v in m.items() if k != "img_size"},
        "string threshold": lambda m: {**m, "threshold": "0.5"},
        "img_size 100000": lambda m: {**m, "img_size": 100000,
                                      "preprocessing": {**m["preprocessing"], "img_size": 100000}},
        "three classes for a 2-class head": lambda m: {**m, "classes": [*m["classes"], "extra"]},
    }
    for i, (name, fn) in enumerate(mutations.items()):
        bad = copy_run(run, root / f"meta{i}")
        edit_json(bad / "metadata.json", fn)
        cli_case(f"metadata.json: {name}", ["predict", bad, image, "--backend", "torch"])
        cli_case(f"metadata.json: {name} (evaluate)", ["evaluate", bad, "--data", root / "phantoms"])


def onnx_cases(root: Path, run: Path, image: Path) -> None:
    import onnx

    from braintumor.export import METADATA_KEY, export_onnx

    src = root / "good.onnx"
    export_onnx(run, src)

    def tampered(name: str, fn) -> Path:
        model = onnx.load(str(src))
        for prop in model.metadata_props:
            if prop.key == METADATA_KEY:
                prop.value = json.dumps(fn(json.loads(prop.value)))
        path = root / f"{name}.onnx"
        onnx.save(model, str(path))
        return path

    mutations = {
        "img_size disagrees with the graph": lambda m: {**m, "img_size": 96,
                                                        "preprocessing": {**m["preprocessing"], "img_size": 96}},
        "classes disagree with the graph": lambda m: {**m, "classes": ["a", "b", "c"]},
        "string threshold": lambda m: {**m, "threshold": "high"},
        "string temperature": lambda m: {**m, "calibration": {**(m.get("calibration") or {}), "temperature": "x"}},
        "temperature -1": lambda m: {**m, "calibration": {**(m.get("calibration") or {}), "temperature": -1}},
        "threshold 5": lambda m: {**m, "threshold": 5},
    }
    for i, (name, fn) in enumerate(mutations.items()):
        path = tampered(f"t{i}", fn)
        cli_case(f"onnx: {name}", ["predict", path, image])
        api_start_case(f"onnx: {name} (serve)", path)


def api_start_case(name: str, model: Path) -> None:
    """A model the server must refuse at start-up (one line), not answer with a 500 later."""
    from braintumor.errors import BrainTumorError
    from braintumor.serve import create_app

    t0 = time.perf_counter()
    try:
        create_app(model)
        outcome = {"status": "started", "error": ""}
        ok = False
    except BrainTumorError as exc:
        outcome = {"status": "refused", "error": str(exc)[:200]}
        ok = "\n" not in str(exc)
    except Exception as exc:  # noqa: BLE001
        outcome = {"status": "traceback", "error": repr(exc)[:200]}
        ok = False
    outcome["seconds"] = round(time.perf_counter() - t0, 2)
    case(name, "api", outcome, ok)


def filename_cases(root: Path, data: Path, run: Path) -> None:
    weird = root / "weird"
    for cls in ("no", "yes"):
        (weird / cls).mkdir(parents=True)
        for i, p in enumerate(sorted((data / cls).iterdir())[:12]):
            name = os.fsdecode(b"scan\xff" + str(i).encode() + b".png") if i % 2 else f"[bold red]x{i}.png"
            shutil.copy(p, weird / cls / name)
    probe = weird / "yes" / os.fsdecode(b"scan\xff1.png")
    wout = root / "weird-run"
    cli_case("non-UTF-8 names: train", ["train", weird, "--model", "cnn", "--img-size", "64", "--epochs", "1",
                                        "--out", wout], expect_exit=0)
    cli_case("non-UTF-8 names: evaluate", ["evaluate", run, "--data", weird, "--out", root / "weird-eval"],
             expect_exit=0)
    cli_case("non-UTF-8 names: explain", ["explain", run, probe, "--out", root / "weird-explain"], expect_exit=0)
    for fmt in ("table", "csv", "json"):
        cli_case(f"non-UTF-8 names: predict --format {fmt}", ["predict", run, weird / "yes", "--format", fmt],
                 expect_exit=0)


def bomb_cases(root: Path, run: Path) -> None:
    from service_abuse import dicom_bomb, nifti_bomb  # the bombs of the service benchmark

    dcm, nii = root / "bomb.dcm", root / "bomb.nii.gz"
    dcm.write_bytes(dicom_bomb(9000, 9000))  # deflated, ~160 KB: 9000x9000 pixels
    nii.write_bytes(nifti_bomb(512))  # gzip, ~0.5 MB: 1024x1024x512 voxels (512 MiB)
    for p in (dcm, nii):
        t0 = time.perf_counter()
        out = _cli(["predict", run, p, "--backend", "torch"])
        out["seconds"] = round(time.perf_counter() - t0, 2)
        # the CLI's caps are wider than the service's: the file's error row (exit 1: the other files would go on)
        # or a prediction, quickly, never a traceback
        ok = not out["traceback"] and out["seconds"] < 5 and out["exit"] in (0, 1)
        case(f"bomb via predict: {p.name} ({p.stat().st_size >> 10} KiB on disk)", "cli", out, ok)
    from fastapi.testclient import TestClient

    from braintumor.serve import create_app

    client = TestClient(create_app(run, backend="torch"))
    for p in (dcm, nii):
        t0 = time.perf_counter()
        r = client.post("/v1/predict", files={"file": (p.name, p.read_bytes(), "application/octet-stream")})
        dt = time.perf_counter() - t0
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        case(f"bomb via API: {p.name}", "api", {"status": r.status_code, "error": str(body.get("detail", ""))[:200],
                                                  "seconds": round(dt, 2)}, r.status_code == 413 and dt < 1.0)


def run_folder_cases(root: Path, run: Path, data: Path) -> None:
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cli_case("evaluate RUN --out RUN", ["evaluate", run, "--data", data, "--out", run],
             check=lambda: {"ok": all(p.read_bytes() == b for p, b in before.items())})
    marker = root / "pwned"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    import torch

    bad = copy_run(run, root / "pickled")
    torch.save({"model": Payload()}, bad / "checkpoints" / "best.pt")
    torch.save({"model": Payload()}, bad / "checkpoints" / "last.pt")
    image = next((data / "yes").iterdir())
    for argv in (["predict", bad, image, "--backend", "torch"], ["evaluate", bad, "--data", data],
                 ["export", bad], ["train", "--resume", bad]):
        cli_case(f"pickle payload: {argv[0]}", argv, check=lambda: {"ok": not marker.exists()})
    api_start_case("pickle payload: serve", bad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run only the case groups whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bt-bad-inputs-"))
    try:
        data, run = make_run(root)
        image = next((data / "yes").iterdir())
        groups = {"config": lambda: config_cases(root, data), "metadata": lambda: metadata_cases(root, run, image),
                  "onnx": lambda: onnx_cases(root, run, image), "names": lambda: filename_cases(root, data, run),
                  "bombs": lambda: bomb_cases(root, run), "run": lambda: run_folder_cases(root, run, data)}
        for name, fn in groups.items():
            if args.only in name:
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - a broken group is a finding, the others still run
                    case(f"group {name} crashed", "script", {"error": repr(exc)[:300]}, False)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    bad = [r["case"] for r in RESULTS if not r["ok"]]
    emit({"summary": True, "cases": len(RESULTS), "ok": len(RESULTS) - len(bad), "failed": bad})


if __name__ == "__main__":
    main()
