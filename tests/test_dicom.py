"""braintumor.data.dicom: LUTs, windowing, MONOCHROME1, multi-frame, series folders, broken files; DICOM phantoms
predict and explain like their PNGs; a class folder mixing PNG, DICOM and NIfTI trains end to end."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from braintumor.data.cache import load_images  # noqa: E402
from braintumor.data.dicom import apply_window, parse_window, read_dicom, series_files  # noqa: E402
from braintumor.data.discover import discover, list_images  # noqa: E402
from braintumor.data.read import frame_count, read_image  # noqa: E402
from braintumor.data.synthetic import make_phantom  # noqa: E402
from braintumor.errors import UnreadableImageError, UsageError  # noqa: E402
from braintumor.preprocess import Preprocessor  # noqa: E402


def write_dicom(path, arr, *, photometric="MONOCHROME2", slope=None, intercept=None, center=None, width=None,
                function=None, series_uid=None, position=None, instance=None, pixels=True, preamble=True):
    """A minimal MR image (single- or multi-frame when ``arr`` is 3-D) with the given tags."""
    arr = np.asarray(arr)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if pixels:
        ds.Rows, ds.Columns = arr.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = arr.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
        if arr.ndim == 3:
            ds.NumberOfFrames = arr.shape[0]
        ds.PixelData = arr.tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if function is not None:
        ds.VOILUTFunction = function
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if instance is not None:
        ds.InstanceNumber = instance
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # no preamble, no 'DICM': readable only by suffix
        ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


def write_series(folder, slices, *, by="position", uid=None):
    """One file per slice, named in scrambled order; ``by`` decides which tag carries the order."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    n = len(slices)
    names = [f"IM{(k * 7 + 3) % n:04d}" for k in range(n)]  # file-name order != slice order
    for k, (arr, name) in enumerate(zip(slices, names, strict=True)):
        kw = {"position": (0, 0, 2.5 * k - 10)} if by == "position" else {"instance": k + 1}
        write_dicom(folder / name, arr, series_uid=uid, **kw)
    return folder


def _grad(h=32, w=40, lo=0, hi=200, dtype=np.uint16):
    return np.linspace(lo, hi, h * w).reshape(h, w).round().astype(dtype)


# ----------------------------------------------------------------------------------------------- detection


def test_detected_by_suffix_magic_and_without_suffix(tmp_path):
    a = _grad()
    write_dicom(tmp_path / "a.dcm", a)
    write_dicom(tmp_path / "b.DICOM", a)
    write_dicom(tmp_path / "IM000001", a)                      # no suffix: by content
    write_dicom(tmp_path / "1.2.840.113619.2.55", a)           # UID name, numeric suffix: by content
    write_dicom(tmp_path / "nopreamble.dcm", a, preamble=False)  # no 'DICM': by suffix, read with force
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "notes.txt").write_text("not an image")
    found = sorted(p.name for p in list_images(tmp_path))
    assert found == ["1.2.840.113619.2.55", "IM000001", "a.dcm", "b.DICOM", "nopreamble.dcm"]
    for name in found:
        img = read_image(tmp_path / name)
        assert img.shape == (32, 40, 3) and img.dtype == np.uint8
        assert np.array_equal(img[..., 0], a), name  # 8-bit-range values kept as they are


def test_dicom_under_a_raster_name_is_still_read_as_dicom(tmp_path):
    """Raster names are decoded by PIL first (no look for the DICOM magic); a file PIL does not recognise then
    goes to the registered readers, so a DICOM file named .png reads exactly as under its own name."""
    a = _grad()
    write_dicom(tmp_path / "a.dcm", a)
    (tmp_path / "a.png").write_bytes((tmp_path / "a.dcm").read_bytes())
    info: dict = {}
    img = read_image(tmp_path / "a.png", describe=info)
    assert np.array_equal(img, read_image(tmp_path / "a.dcm"))
    assert info == {"format": "DICOM", "mode": None}
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "b.png")
    info = {}
    assert read_image(tmp_path / "b.png", describe=info).shape == (32, 40, 3) and info == {"format": "PNG",
                                                                                          "mode": "L"}


# --------------------------------------------------------------------------------------------- pixel values


def test_rescale_slope_intercept_then_window(tmp_path):
    stored = _grad(lo=0, hi=2000, dtype=np.int16)
    write_dicom(tmp_path / "ct.dcm", stored, slope=2, intercept=-1024, center=40, width=400)
    got = read_dicom(tmp_path / "ct.dcm")
    hu = stored.astype(np.float64) * 2 - 1024
    # DICOM PS3.3 C.11.2.1.2 linear window, to 0..255.
    want = np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255)
    assert np.abs(got.astype(float) - want).max() <= 0.5 + 1e-6
    assert got[hu <= 40 - 200].max() == 0 and got[hu > 40 + 199].min() == 255
    # A window centred on the range: values below/above are clipped, the middle is mid-grey.
    mid = np.argmin(np.abs(hu - 40))
    assert abs(int(got.flat[mid]) - 128) <= 2


def test_rescale_without_window_stretches_full_range(tmp_path):
    stored = _grad(lo=100, hi=1100)
    write_dicom(tmp_path / "mr.dcm", stored, slope=0.5, intercept=10)
    got = read_dicom(tmp_path / "mr.dcm")
    assert got.min() == 0 and got.max() == 255
    assert np.all(np.diff(got.astype(int).ravel()) >= 0)  # monotone


def test_window_functions_and_override(tmp_path, monkeypatch):
    stored = _grad(lo=0, hi=1000)
    write_dicom(tmp_path / "w.dcm", stored, center=500, width=200)
    auto = read_dicom(tmp_path / "w.dcm")
    assert auto[stored < 399].max() == 0 and auto[stored > 600].min() == 255
    # Argument override: a wider window, and minmax ignoring the file's window.
    wide = read_dicom(tmp_path / "w.dcm", window=(500, 1000))
    assert 0 < wide[stored == 200].min() < 255
    mm = read_dicom(tmp_path / "w.dcm", window="minmax")
    assert mm.min() == 0 and mm.max() == 255 and 120 <= mm[stored == 500].min() <= 135
    # Environment override (used by read_image, hence by every command).
    monkeypatch.setenv("BRAINTUMOR_DICOM_WINDOW", "500,1000")
    assert np.array_equal(read_image(tmp_path / "w.dcm")[..., 0], wide)
    monkeypatch.setenv("BRAINTUMOR_DICOM_WINDOW", "minmax")
    assert np.array_equal(read_image(tmp_path / "w.dcm")[..., 0], mm)
    monkeypatch.setenv("BRAINTUMOR_DICOM_WINDOW", "bright")
    with pytest.raises(UsageError, match="CENTER,WIDTH"):
        read_image(tmp_path / "w.dcm")
    assert parse_window("40, 80") == (40.0, 80.0)
    with pytest.raises(UsageError):
        parse_window((40, 0))
    # SIGMOID and LINEAR_EXACT VOI LUT functions.
    x = np.array([400.0, 500.0, 600.0])
    assert list(apply_window(x, 500, 200, "SIGMOID")) == [30, 128, 225]  # 255 / (1 + exp(-4 (x - c) / w))
    assert list(apply_window(x, 500, 200, "LINEAR_EXACT")) == [0, 128, 255]
    write_dicom(tmp_path / "s.dcm", stored, center=500, width=200, function="SIGMOID")
    monkeypatch.delenv("BRAINTUMOR_DICOM_WINDOW")
    assert read_dicom(tmp_path / "s.dcm")[stored == 500].min() == 128


def test_monochrome1_is_inverted(tmp_path):
    a = _grad()
    write_dicom(tmp_path / "m2.dcm", a)
    write_dicom(tmp_path / "m1.dcm", a, photometric="MONOCHROME1")
    assert np.array_equal(read_image(tmp_path / "m1.dcm"), 255 - read_image(tmp_path / "m2.dcm"))
    write_dicom(tmp_path / "m1w.dcm", _grad(hi=1000), photometric="MONOCHROME1", center=500, width=1000)
    w = read_dicom(tmp_path / "m1w.dcm")
    assert w[0, 0] == 255 and w[-1, -1] == 0  # low signal is white in MONOCHROME1 storage -> shown dark


# ------------------------------------------------------------------------------------------------ frames


def test_multiframe_frames_references_and_expansion(tmp_path):
    frames = np.stack([_grad() // 2 + 20 * k for k in range(5)]).astype(np.uint16)
    (tmp_path / "cls").mkdir()
    f = write_dicom(tmp_path / "cls" / "mf.dcm", frames)
    assert frame_count(f) == 5
    for k in range(5):
        assert np.array_equal(read_image(f, frame=k)[..., 0], frames[k])
    assert np.array_equal(read_image(f"{f}#3"), read_image(f, frame=3))
    assert np.array_equal(read_image(f), read_image(f, frame=2))  # default: the middle frame
    with pytest.raises(UnreadableImageError, match="out of range"):
        read_image(f, frame=5)
    assert [p.name for p in list_images(tmp_path / "cls")] == ["mf.dcm"]
    assert [p.name for p in list_images(tmp_path / "cls", slices="all")] == [f"mf.dcm#{k}" for k in range(5)]
    assert [p.name for p in list_images(tmp_path / "cls", slices="middle")] == ["mf.dcm#2"]
    assert [p.name for p in list_images(tmp_path / "cls", slices=2)] == ["mf.dcm#1", "mf.dcm#3"]
    # load_images takes paths, slice references, records or (path, frame); a bad frame is skipped and named.
    from braintumor.data.discover import ImageRecord
    from braintumor.data.read import image_format

    items = [(f, 0), ImageRecord(f, 1, None, 4), f"{f}#1", (f, 9)]
    loaded = load_images(items, Preprocessor(img_size=32, crop_brain=False))
    assert loaded.kept == [0, 1, 2] and loaded.skipped[0][0].name == "mf.dcm#9"
    assert np.array_equal(loaded.images[1], Preprocessor(img_size=32, crop_brain=False).prepare(read_image(f, 4)))
    assert image_format(f) == image_format(f"{f}#1") == "DICOM"


@pytest.mark.parametrize("by", ["position", "instance"])
def test_series_folder_is_one_volume_ordered_by_position(tmp_path, by):
    slices = [np.full((16, 24), 10 + 30 * k, np.uint16) for k in range(6)]
    series = write_series(tmp_path / "yes" / "patient1", slices, by=by)
    files = series_files(series)
    assert len(files) == 6 and [f.name for f in files] != sorted(f.name for f in files)
    assert frame_count(series) == 6
    assert [int(read_image(series, k)[0, 0, 0]) for k in range(6)] == [10 + 30 * k for k in range(6)]
    # Discovery: the folder is one source; its slices share one split group.
    Image.fromarray(np.full((16, 16), 50, np.uint8)).save(tmp_path / "yes" / "flat.png")
    (tmp_path / "no").mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16), 90 + i, np.uint8)).save(tmp_path / "no" / f"n{i}.png")
    ds = discover(tmp_path, slices="all")
    vol = [r for r in ds.records if r.frame is not None]
    assert len(vol) == 6 and {r.group for r in vol} == {str(series)} and {r.path for r in vol} == {series}
    assert vol[0].name == "patient1#0" and ds.groups is not None
    assert len(discover(tmp_path).records) == 1 + 1 + 2  # middle slice only by default
    # A folder mixing two series is not collapsed: its files are read one by one.
    write_dicom(series / "other.dcm", slices[0])
    assert series_files(series) is None
    assert len(list_images(tmp_path / "yes", slices="all")) == 8


# ------------------------------------------------------------------------------------------- broken files


def test_file_without_pixel_data_is_reported_and_skipped(tmp_path):
    write_dicom(tmp_path / "report.dcm", None, pixels=False)
    write_dicom(tmp_path / "ok.dcm", _grad())
    with pytest.raises(UnreadableImageError, match="without pixel data"):
        read_image(tmp_path / "report.dcm")
    loaded = load_images([tmp_path / "ok.dcm", tmp_path / "report.dcm"], Preprocessor(img_size=32))
    assert loaded.kept == [0]
    assert loaded.skipped[0][0].name == "report.dcm" and "pixel data" in loaded.skipped[0][1]


def test_truncated_file_is_unreadable_with_a_reason(tmp_path):
    write_dicom(tmp_path / "full.dcm", _grad(64, 64))
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 3000])
    (tmp_path / "stub.dcm").write_bytes(data[:200])
    for name in ("cut.dcm", "stub.dcm"):
        with pytest.raises(UnreadableImageError) as exc:
            read_image(tmp_path / name)
        assert "truncated or corrupt" in exc.value.reason or "pixel data" in exc.value.reason
        assert "\n" not in exc.value.reason


def test_compressed_transfer_syntaxes(tmp_path):
    a = _grad(64, 64, hi=1000)
    write_dicom(tmp_path / "raw.dcm", a)
    ds = pydicom.dcmread(tmp_path / "raw.dcm")
    ds.compress(RLELossless)  # pydicom's own RLE handler: always available
    ds.save_as(tmp_path / "rle.dcm")
    assert np.array_equal(read_image(tmp_path / "rle.dcm"), read_image(tmp_path / "raw.dcm"))
    # JPEG-LS has no handler here: a one-line error that names what to install.
    ds = pydicom.dcmread(tmp_path / "raw.dcm")
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7not really jpeg-ls"])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jls.dcm")
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS handler is installed here")
    with pytest.raises(UnreadableImageError) as exc:
        read_image(tmp_path / "jls.dcm")
    assert "JPEG-LS" in exc.value.reason and "install" in exc.value.reason and "\n" not in exc.value.reason


# ------------------------------------------------------------------------------------- acceptance: phantoms


def _phantoms(n, seed=7):
    rng = np.random.default_rng(seed)
    return [make_phantom(rng, 64, tumour=bool(i % 2))[0] for i in range(n)]


def test_predict_and_explain_dicom_series_like_png(trained_run, tmp_path):
    from braintumor.data.slices import summarise_volumes

    pred = trained_run.predictor()
    imgs = _phantoms(6)
    series = write_series(tmp_path / "series", [im.astype(np.uint16) for im in imgs])
    pngs = []
    for k, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"slice{k}.png")
        pngs.append(tmp_path / f"slice{k}.png")
    refs = list_images(series, slices="all")
    assert [r.name for r in refs] == [f"series#{k}" for k in range(6)]
    p_dcm = pred.predict_paths(refs)
    p_png = pred.predict_paths(pngs)
    assert all(p.ok for p in p_dcm)
    assert [p.label for p in p_dcm] == [p.label for p in p_png]
    for a, b in zip(p_dcm, p_png, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    (vol,) = summarise_volumes(p_dcm, pred.positive_class)
    best = int(np.argmax([p.probabilities["yes"] for p in p_png]))
    assert vol.slice == best and vol.label == p_png[best].label and vol.n_slices == 6
    assert vol.tumour_probability == pytest.approx(p_png[best].probabilities["yes"], abs=1e-6)
    try:
        from braintumor.explanation import explain
    except ImportError:
        pytest.skip("braintumor.explanation is not available")
    for k in (0, 1):
        e_dcm, e_png = explain(pred, refs[k]), explain(pred, pngs[k])
        assert e_dcm.label == e_png.label
        assert np.allclose(e_dcm.heatmap, e_png.heatmap, atol=1e-5)


def test_training_on_mixed_png_dicom_nifti_folder(phantoms, tmp_path):
    """A class folder mixing PNG, DICOM (single, multi-frame, series) and NIfTI trains end to end via the CLI."""
    nib = pytest.importorskip("nibabel")
    from typer.testing import CliRunner

    from braintumor.cli import app

    data = tmp_path / "mixed"
    rng = np.random.default_rng(3)
    n_vol_slices = 0
    for cls, tumour in (("yes", True), ("no", False)):
        src = sorted((phantoms / cls).glob("*.png"))[:30]
        (data / cls).mkdir(parents=True)
        for p in src[:18]:
            shutil.copy(p, data / cls / p.name)
        for p in src[18:26]:
            write_dicom(data / cls / (p.stem + ".dcm"), np.asarray(Image.open(p)).astype(np.uint16))
        imgs = [make_phantom(rng, 64, tumour)[0] for _ in range(12)]
        write_dicom(data / cls / "multi.dcm", np.stack(imgs[:4]).astype(np.uint16))
        write_series(data / cls / "series1", [im.astype(np.uint16) for im in imgs[4:8]])
        vol = np.stack([im.T[::-1, ::-1] for im in imgs[8:12]], axis=2)  # x, y, z in RAS
        nib.save(nib.Nifti1Image(vol, np.eye(4)), data / cls / "vol.nii.gz")
        n_vol_slices += 12
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", str(data), "--model", "cnn", "--img-size", "64", "--epochs", "3",
                                 "--batch-size", "16", "--slices", "all", "--no-augment", "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["data"]["slices"] == "all" and meta["data"]["skipped"] == []
    assert meta["data"]["n_train"] + meta["data"]["n_val"] == 2 * (18 + 8) + n_vol_slices
    split = (out / "split.csv").read_text().splitlines()[1:]
    side: dict[str, set] = {}
    for line in split:
        path, _, subset = line.rsplit(",", 2)
        if "#" in path:
            side.setdefault(path.rsplit("#", 1)[0], set()).add(subset)
    assert len(side) == 6 and all(len(s) == 1 for s in side.values())  # no volume straddles the split
    # Evaluate and predict accept the same mixed folder.
    r = CliRunner().invoke(app, ["evaluate", str(out), "--data", str(data)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["predict", str(out), str(data / "yes" / "vol.nii.gz"), str(data / "no" / "series1"),
                                 "--format", "json"])
    assert r.exit_code == 0, r.output


def test_prediction_reads_dicom_with_the_runs_training_window(trained_run, tmp_path, monkeypatch):
    """A run trained with BRAINTUMOR_DICOM_WINDOW=C,W predicts with the same window, and says so on a conflict."""
    import warnings

    from braintumor.backends import load_predictor
    from braintumor.data.dicom import WINDOW_ENV
    from braintumor.inference import Predictor

    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    meta = json.loads((run / "metadata.json").read_text())
    meta["dicom_window"] = "100,120"
    (run / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setenv(WINDOW_ENV, "auto")  # recorded, so whatever loading sets is undone after the test
    monkeypatch.delenv(WINDOW_ENV)
    Predictor.from_run(run, device="cpu")
    assert os.environ[WINDOW_ENV] == "100,120"

    monkeypatch.setenv(WINDOW_ENV, "minmax")
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_predictor(run, device="cpu", backend="torch", notice=notes.append)
    assert not [w for w in caught if "DICOM window" in str(w.message)], "said once, through notice"
    assert os.environ[WINDOW_ENV] == "minmax" and len(notes) == 1
    assert "trained with DICOM window '100,120'" in notes[0] and str(run) in notes[0]
