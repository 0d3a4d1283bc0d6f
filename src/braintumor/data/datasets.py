"""The public data sets this project is built on: download from Kaggle, and verify a local copy.

* ``navoneel``: Navoneel Chakrabarty, "Brain MRI Images for Brain Tumor Detection"
  (``navoneel/brain-mri-images-for-brain-tumor-detection``): ``yes/`` 155, ``no/`` 98. Every file is checked
  against the bundled SHA-256 manifest, so a missing, extra or altered file is named exactly.
* ``nickparvar``: Masoud Nickparvar, "Brain Tumor MRI Dataset" (``masoudnickparvar/brain-tumor-mri-dataset``):
  ``Training/`` glioma 1321, meningioma 1339, notumor 1595, pituitary 1457 and ``Testing/`` 300, 306, 405, 300.
  Training file names are checked against the bundled list; every image of both splits is decoded to find
  corrupt files.

:func:`download` uses ``kagglehub`` (optional, imported lazily); without it or without network it raises a
:class:`~braintumor.errors.UsageError` carrying the manual steps.

Example:
    >>> from braintumor.data.datasets import verify
    >>> report = verify("data/brain_mri_yes_no", "navoneel")      # doctest: +SKIP
    >>> report.ok, report.problems                                 # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import DataError, UnreadableImageError, UsageError
from .read import read_image, supported_suffixes


@dataclass(frozen=True)
class DatasetSpec:
    """A published data set: Kaggle id, expected layout and counts, optional bundled manifest."""

    name: str
    kaggle_id: str
    title: str
    #: split folder name ("" for none) -> class -> number of images.
    splits: dict[str, dict[str, int]]
    #: split -> bundled manifest file under ``braintumor/data/manifests`` (SHA-256 lines or a list of names).
    manifests: dict[str, str] = field(default_factory=dict)
    #: folders inside a download that may hold the data set (tried in order).
    nested: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"https://www.kaggle.com/datasets/{self.kaggle_id}"


DATASETS: dict[str, DatasetSpec] = {
    "navoneel": DatasetSpec(
        "navoneel", "navoneel/brain-mri-images-for-brain-tumor-detection",
        "Brain MRI Images for Brain Tumor Detection (Navoneel Chakrabarty)",
        {"": {"no": 98, "yes": 155}}, {"": "navoneel.sha256"}, nested=("brain_tumor_dataset",)),
    "nickparvar": DatasetSpec(
        "nickparvar", "masoudnickparvar/brain-tumor-mri-dataset", "Brain Tumor MRI Dataset (Masoud Nickparvar)",
        {"Training": {"glioma": 1321, "meningioma": 1339, "notumor": 1595, "pituitary": 1457},
         "Testing": {"glioma": 300, "meningioma": 306, "notumor": 405, "pituitary": 300}},
        {"Training": "nickparvar_training.txt.gz"}),
}


def get_dataset(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` called ``name``.

    Raises:
        UsageError: unknown name.
    """
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown data set '{name}'; known: {', '.join(DATASETS)}") from None


# ---------------------------------------------------------------------------------------------------- download


def manual_steps(spec: DatasetSpec, to: str | Path) -> str:
    """One line telling a user how to fetch the data set by hand."""
    layout = ("DIR/yes and DIR/no" if spec.name == "navoneel" else "DIR/Training and DIR/Testing")
    return (f"download '{spec.kaggle_id}' by hand from {spec.url} (Download button, needs a Kaggle account), "
            f"unzip it into {to} so that {layout.replace('DIR', str(to))} exist, then run: "
            f"braintumor data verify {to} --dataset {spec.name}")


def _kaggle_download(kagglehub, handle: str, to: Path) -> Path:
    fn = kagglehub.dataset_download
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "output_dir" in params:
        return Path(fn(handle, output_dir=str(to)))
    cached = Path(fn(handle))
    to.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cached, to, dirs_exist_ok=True)
    return to


def download(name: str, to: str | Path) -> Path:
    """Download a data set from Kaggle with ``kagglehub`` into ``to``; return the folder to verify.

    Raises:
        UsageError: unknown name, ``kagglehub`` missing, or the download failed (no network, no credentials):
            the message says why and gives the manual steps.
    """
    spec = get_dataset(name)
    to = Path(to)
    try:
        import kagglehub
    except ImportError:
        raise UsageError(f"kagglehub is not installed (pip install kagglehub); {manual_steps(spec, to)}") from None
    try:
        got = _kaggle_download(kagglehub, spec.kaggle_id, to)
    except Exception as exc:  # noqa: BLE001 - network, auth and HTTP errors all mean "do it by hand"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"could not download from Kaggle ({type(exc).__name__}: {reason}); "
                         f"{manual_steps(spec, to)}") from None
    return _locate(spec, got if got.is_dir() else to)


# ------------------------------------------------------------------------------------------------------ verify


@dataclass
class Problem:
    """One finding: ``kind`` is ``missing``, ``extra``, ``corrupt`` or ``count``; ``path`` is relative."""

    kind: str
    path: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``counts[(split, cls)] = (found, expected)``; ``ok`` when nothing is wrong."""

    dataset: str
    root: Path
    counts: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    checked_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        kinds = {}
        for p in self.problems:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        state = "OK" if self.ok else "PROBLEMS: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return f"{self.dataset} at {self.root}: {self.checked_files} files checked, {state}"


def _manifest_lines(filename: str) -> list[str]:
    data = resources.files("braintumor.data").joinpath("manifests", filename).read_bytes()
    if filename.endswith(".gz"):
        data = gzip.decompress(data)
    return [ln for ln in data.decode("utf-8").splitlines() if ln.strip()]


def load_manifest(filename: str) -> dict[str, str | None]:
    """Bundled manifest: relative path -> SHA-256 (``None`` for a list of names only)."""
    out: dict[str, str | None] = {}
    for ln in _manifest_lines(filename):
        head, sep, tail = ln.partition("  ")
        if sep and len(head) == 64 and all(c in "0123456789abcdef" for c in head):
            out[tail.removeprefix("./").removeprefix("*")] = head
        else:
            out[ln.strip()] = None
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _visible(p: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(base).parts)


def _has_classes(folder: Path, classes) -> bool:
    return folder.is_dir() and any((folder / c).is_dir() for c in classes)


def _locate(spec: DatasetSpec, root: Path) -> Path:
    """The folder holding the data set inside ``root`` (``root`` itself, or a known nested folder)."""
    if spec.name == "navoneel":
        classes = spec.splits[""]
        for cand in (root, *(root / n for n in spec.nested)):
            if all((cand / c).is_dir() for c in classes):
                return cand
        return root
    return root


def _splits_to_check(spec: DatasetSpec, root: Path) -> list[tuple[str, Path]]:
    """``(split, folder)`` pairs: a single split folder, or the split folders under a parent."""
    names = {k.lower(): k for k in spec.splits}
    if "" in spec.splits:
        return [("", _locate(spec, root))]
    if root.name.lower() in names:
        return [(names[root.name.lower()], root)]
    children = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    if any(n in children for n in names):
        return [(split, children.get(split.lower(), root / split)) for split in spec.splits]
    some = next(iter(spec.splits.values()))
    if _has_classes(root, some):
        # Class folders directly: the split whose total is closest to what is there.
        n = sum(len([f for f in (root / c).rglob("*") if f.is_file()]) for c in some if (root / c).is_dir())
        split = min(spec.splits, key=lambda s: abs(sum(spec.splits[s].values()) - n))
        return [(split, root)]
    return []


def _decode_check(files: list[Path], workers: int | None) -> dict[Path, str]:
    def check(p: Path) -> str | None:
        try:
            if p.stat().st_size == 0:
                return "empty file"
            read_image(p)
        except UnreadableImageError as exc:
            return exc.reason
        except Exception as exc:  # noqa: BLE001 - any decoder failure is "corrupt"
            return f"{type(exc).__name__}: {exc}"
        return None

    workers = workers or min(4, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return {p: r for p, r in zip(files, pool.map(check, files), strict=True) if r is not None}


def verify(root: str | Path, dataset: str, *, decode: bool = True, workers: int | None = None) -> VerifyReport:
    """Check a local copy of a published data set: layout, class counts, and every file.

    Args:
        root: the data set folder (``navoneel``: the folder with ``yes/`` and ``no/``, or the unzipped Kaggle
            download; ``nickparvar``: ``Training/`` or ``Testing/``, or their parent).
        dataset: ``"navoneel"`` or ``"nickparvar"``.
        decode: decode images that no SHA-256 manifest vouches for (finds corrupt files; slower).

    Returns:
        A :class:`VerifyReport`; ``report.problems`` name every missing, extra or corrupt file.

    Raises:
        UsageError: unknown data set; DataError: ``root`` is not a folder or has none of the expected folders.
    """
    spec = get_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    pairs = _splits_to_check(spec, root)
    if not pairs or not any(_has_classes(folder, spec.splits[split]) for split, folder in pairs):
        want = ", ".join(f"{s + '/' if s else ''}{c}/" for s in spec.splits for c in spec.splits[s])
        raise DataError(f"{root}: does not look like the {spec.name} data set (expected folders {want})")
    report = VerifyReport(spec.name, root)
    images = supported_suffixes()
    for split, folder in pairs:
        prefix = f"{split}/" if len(pairs) > 1 or (split and folder != root) else ""
        expected = spec.splits[split]
        if not folder.is_dir():
            report.problems.append(Problem("missing", f"{split}/", f"split folder missing "
                                                                   f"({sum(expected.values())} images expected)"))
            for c, n in expected.items():
                report.counts[(split, c)] = (0, n)
            continue
        manifest = load_manifest(spec.manifests[split]) if split in spec.manifests else None
        present: dict[str, Path] = {}
        for c, n in expected.items():
            d = folder / c
            if not d.is_dir():
                report.problems.append(Problem("missing", f"{prefix}{c}/", f"class folder missing ({n} images)"))
                report.counts[(split, c)] = (0, n)
                continue
            files = sorted(f for f in d.rglob("*") if f.is_file() and _visible(f, d))
            present.update((f.relative_to(folder).as_posix(), f) for f in files)
            found = sum(1 for f in files if f.suffix.lower() in images)
            report.counts[(split, c)] = (found, n)
            if manifest is None and found != n:
                report.problems.append(Problem("count", f"{prefix}{c}/", f"{found} images, expected {n}"))
        for d in sorted(x for x in folder.iterdir() if x.is_dir() and not x.name.startswith((".", "_"))):
            if d.name not in expected and d.name not in spec.nested:
                report.problems.append(Problem("extra", f"{prefix}{d.name}/", "unexpected folder"))
        report.checked_files += len(present)
        to_decode: list[Path] = []
        if manifest is not None:
            missing_dirs = {c for c in expected if not (folder / c).is_dir()}
            for rel in sorted(set(manifest) - set(present)):
                if rel.split("/")[0] not in missing_dirs:
                    report.problems.append(Problem("missing", prefix + rel))
            for rel in sorted(set(present) - set(manifest)):
                report.problems.append(Problem("extra", prefix + rel, "not part of the published data set"))
            for rel in sorted(set(present) & set(manifest)):
                want = manifest[rel]
                if want is None:
                    to_decode.append(present[rel])
                elif _sha256(present[rel]) != want:
                    reason = _decode_check([present[rel]], 1).get(present[rel])
                    report.problems.append(Problem("corrupt", prefix + rel, reason or
                                                   "content differs from the published file (SHA-256 mismatch)"))
        else:
            for rel, f in sorted(present.items()):
                if f.suffix.lower() not in images:
                    report.problems.append(Problem("extra", prefix + rel, "not an image file"))
                else:
                    to_decode.append(f)
        if decode and to_decode:
            for f, reason in sorted(_decode_check(to_decode, workers).items()):
                report.problems.append(Problem("corrupt", prefix + f.relative_to(folder).as_posix(), reason))
    return report
