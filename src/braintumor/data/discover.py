"""Find labelled images in a folder: one sub-folder per class, any class names.

Folders whose names start with ``.`` or ``_`` are ignored (``_masks/`` from ``braintumor synth`` lives there).
Files inside a class folder are found recursively; suffixes are matched case-insensitively; files without a
suffix are picked up when their content is a registered format (DICOM). A class folder may mix formats.

Multi-slice sources (NIfTI volumes, multi-frame DICOM, folders holding one DICOM series) become one record per
selected slice (``slices``: ``"middle"``, ``"all"`` or ``K``, see :mod:`braintumor.data.slices`). Such a record has
``frame`` set, its :attr:`ImageRecord.ref` reads ``vol.nii.gz#12``, and its ``group`` is the volume, so the slices
of one volume never straddle a split.

Example:
    >>> from braintumor.data import discover
    >>> ds = discover("data/brain_mri_yes_no")          # doctest: +SKIP
    >>> ds.classes, len(ds)                              # doctest: +SKIP
    (['no', 'yes'], 253)
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import DataError
from .classes import NEGATIVE_NAMES, positive_class  # noqa: F401  (public here too)
from .read import IMAGE_SUFFIXES, frame_count, frame_ref, sniff_supported, split_ref, supported_suffixes


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image. ``group`` ties duplicates (or the slices of one volume) together so splits keep them on
    one side; ``frame`` is the slice of a multi-slice ``path`` (``None`` for 2-D images); ``source`` names the data
    folder it came from when a data set has several (:mod:`braintumor.data.sources`)."""

    path: Path
    label: int
    group: str | None = None
    frame: int | None = None
    source: str | None = None

    @property
    def ref(self) -> Path:
        """What to read: ``path``, or ``path#frame`` for a slice (accepted by ``read_image`` and ``load_images``)."""
        return frame_ref(self.path, self.frame)

    @property
    def name(self) -> str:
        """Display name: ``scan.png`` or ``vol.nii.gz#12``."""
        return self.ref.name


@dataclass
class ImageFolder:
    """Labelled files found under ``root``; ``classes[i]`` is the folder name of label ``i``."""

    root: Path
    classes: list[str]
    records: list[ImageRecord] = field(default_factory=list)
    #: source name -> its folder, for data sets of several folders (:mod:`braintumor.data.sources`).
    source_roots: dict[str, str] = field(default_factory=dict)

    def _with(self, records: list[ImageRecord]) -> ImageFolder:
        return ImageFolder(self.root, list(self.classes), records, dict(self.source_roots))

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        counts = Counter(r.label for r in self.records)
        per = ", ".join(f"{c}={counts.get(i, 0)}" for i, c in enumerate(self.classes))
        return f"ImageFolder({str(self.root)!r}, {len(self)} images: {per})"

    @property
    def paths(self) -> list[Path]:
        """What to read for each record: the file, or ``file#frame`` for a slice of a volume."""
        return [r.ref for r in self.records]

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def groups(self) -> list[str] | None:
        """One group per record (``None`` when nothing is grouped). Slices of a volume always share one."""
        if all(r.group is None and r.frame is None for r in self.records):
            return None
        return [r.group if r.group is not None else str(r.path) for r in self.records]

    @property
    def sources(self) -> list[str]:
        """The source of every record (the folder's name for a one-folder data set)."""
        default = next(iter(self.source_roots), None) or self.root.name
        return [r.source or default for r in self.records]

    def source_counts(self) -> dict[str, int]:
        """Images per source, in the order the sources were given."""
        counts = Counter(self.sources)
        order = list(self.source_roots) or sorted(counts)
        return {s: counts[s] for s in order if counts.get(s)}

    def strata(self) -> list[int]:
        """One stratum per record for splits: the label, or (source, label) when there are several sources."""
        sources = self.sources
        index = {s: i for i, s in enumerate(sorted(set(sources)))}
        if len(index) < 2:
            return self.labels
        k = len(self.classes)
        return [index[s] * k + r.label for s, r in zip(sources, self.records, strict=True)]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.records)
        return {c: counts.get(i, 0) for i, c in enumerate(self.classes)}

    def subset(self, indices) -> ImageFolder:
        return self._with([self.records[i] for i in indices])

    def with_groups(self, groups: list[str | None]) -> ImageFolder:
        """A copy whose records carry ``groups`` (one per record, e.g. from the duplicate audit)."""
        if len(groups) != len(self.records):
            raise ValueError("one group per record")
        return self._with([replace(r, group=g) for r, g in zip(self.records, groups, strict=True)])

    def group_duplicates(self, duplicate_groups) -> ImageFolder:
        """A copy with ``duplicate_groups(paths) -> one group per path`` applied to the ungrouped 2-D files.

        Slices of volumes keep their volume group (the duplicate audit only sees plain image files).
        """
        todo = [i for i, r in enumerate(self.records) if r.group is None and r.frame is None]
        if not todo:
            return self
        found = list(duplicate_groups([self.records[i].path for i in todo]))
        groups = [r.group for r in self.records]
        for i, g in zip(todo, found, strict=True):
            groups[i] = None if g is None else f"dup:{g}"
        return self._with([replace(r, group=g) for r, g in zip(self.records, groups, strict=True)])

    def without(self, paths) -> ImageFolder:
        drop = {Path(p) for p in paths}
        return self._with([r for r in self.records if r.ref not in drop and r.path not in drop])

    def positive_class(self) -> str | None:
        """For two classes, the 'tumour' one: the class that is not named like a negative."""
        return positive_class(self.classes)


def _is_hidden(p: Path) -> bool:
    return p.name.startswith((".", "_"))


def _is_candidate(p: Path, suffixes: set[str]) -> bool:
    name = p.name.lower()
    if not p.is_file() or _is_hidden(p):
        return False
    if p.suffix.lower() in suffixes or any(name.endswith(s) for s in suffixes if s.count(".") > 1):
        return True
    # No (or a numeric, UID-style) suffix: let the registered formats look at the content.
    return (not p.suffix or p.suffix[1:].isdigit()) and sniff_supported(p)


def _collapse_series(files: list[Path]) -> list[Path]:
    """Replace the slice files of a folder holding one DICOM series by the folder itself (at its first slice)."""
    from .dicom import DICOM_SUFFIXES, has_dicom_magic, series_files

    by_parent: dict[Path, list[Path]] = {}
    for f in files:
        suffix = f.suffix.lower()
        if suffix in DICOM_SUFFIXES or ((not suffix or suffix[1:].isdigit()) and has_dicom_magic(f)):
            by_parent.setdefault(f.parent, []).append(f)
    replaced: dict[Path, Path] = {}
    for parent, members in by_parent.items():
        if len(members) < 2:
            continue
        series = series_files(parent)
        if series:
            replaced.update((m, parent) for m in series)
    out, seen = [], set()
    for f in files:
        src = replaced.get(f, f)
        if src not in seen:
            seen.add(src)
            out.append(src)
    return out


def expand_sources(files, slices=None) -> list[tuple[Path, int | None]]:
    """``(source, frame)`` for every image in ``files``: DICOM series folders collapsed, multi-slice sources
    expanded to the selected slices (``frame`` is ``None`` for 2-D images)."""
    from .slices import select_frames

    out: list[tuple[Path, int | None]] = []
    for src in _collapse_series([Path(f) for f in files]):
        src, frame = split_ref(src)
        if frame is not None or src.suffix.lower() in IMAGE_SUFFIXES:  # 2-D rasters: no need to ask the readers
            out.append((src, frame))
            continue
        n = frame_count(src)
        if n > 1:
            out.extend((src, k) for k in select_frames(n, slices))
        else:
            out.append((src, None))
    return out


def list_images(path: str | Path, slices=None) -> list[Path]:
    """Files, folders (recursive) or glob patterns -> sorted list of candidate image files.

    Args:
        path: a file, a folder or a glob pattern.
        slices: ``None`` (default): files as they are (a volume is one entry, read as its middle slice).
            ``"middle"``, ``"all"`` or ``K``: folders holding one DICOM series become one source and multi-slice
            sources are expanded into slice references ``vol.nii.gz#12`` (see :mod:`braintumor.data.slices`).
    """
    files = _list_files(path)
    if slices is None:
        return files
    if not files and Path(path).is_dir():
        files = [Path(path)]  # perhaps a DICOM series folder given directly
    return [frame_ref(s, f) for s, f in expand_sources(files, slices) if f is not None or s.is_file()]


def _list_files(path: str | Path) -> list[Path]:
    suffixes = supported_suffixes()
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if _is_candidate(f, suffixes)
                      and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts[:-1])
                      and f.name.upper() != "DICOMDIR")
    if p.is_file():
        return [p]
    src, frame = split_ref(p)
    if frame is not None and src.exists():
        return [p]
    if any(ch in str(path) for ch in "*?["):
        import glob

        return sorted(Path(f) for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
    return []


def discover(root: str | Path, classes: list[str] | None = None, slices=None, min_classes: int = 2) -> ImageFolder:
    """Discover ``root/<class>/**/<image>``.

    Args:
        root: folder with one sub-folder per class.
        classes: expected class names in label order (e.g. a trained run's classes when evaluating a
            different folder). Defaults to the sorted sub-folder names.
        slices: which slices of multi-slice sources become images: ``"middle"`` (default), ``"all"`` or ``K``
            (use the run's, :func:`braintumor.data.slices.run_slices`, when evaluating a trained model).
        min_classes: fewest class folders accepted (1 for one source among several).

    Returns:
        An :class:`ImageFolder`: ``paths``, ``labels``, ``classes`` (and duplicate ``groups`` once audited).

    Raises:
        DataError: ``root`` is missing, has no class folders, a class folder is empty, or only one class.

    Example:
        >>> from braintumor import load_folder, write_phantoms
        >>> write_phantoms("data/phantoms", n=10, size=64)          # doctest: +SKIP
        {'no': 5, 'yes': 5}
        >>> load_folder("data/phantoms")                             # doctest: +SKIP
        ImageFolder('data/phantoms', 10 images: no=5, yes=5)
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not _is_hidden(d))
    if not folders:
        loose = list_images(root)
        hint = f" ({len(loose)} images lie directly in it)" if loose else ""
        raise DataError(f"{root}: no class sub-folders found{hint}; expected {root}/<class>/<images>")
    names = [d.name for d in folders]
    if classes is None:
        classes = names
    else:
        missing = [c for c in names if c not in classes]
        if missing:
            raise DataError(f"{root}: class folder(s) {missing} not among the model's classes {classes}")
    records: list[ImageRecord] = []
    for d in folders:
        files = list_images(d)
        if not files:
            raise DataError(f"{d}: class folder '{d.name}' has no images")
        label = classes.index(d.name)
        records.extend(ImageRecord(src, label, None if frame is None else str(src), frame)
                       for src, frame in expand_sources(files, slices))
    if len(names) < min_classes and len(classes) < 2:
        raise DataError(f"{root}: only one class folder ('{names[0]}'); need at least two classes")
    return ImageFolder(root, list(classes), records)


def _digest(p: Path) -> bytes:
    """SHA-256 of a file's bytes; of a folder (a DICOM series): over its files' names and digests."""
    fh = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x for x in p.iterdir() if x.is_file()):
            fh.update(os.fsencode(f.name) + b"\0" + _digest(f))
        return fh.digest()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            fh.update(chunk)
    return fh.digest()


def fingerprint(paths, root: str | Path | None = None) -> str:
    """SHA-256 over the sorted relative paths and the bytes of every file: changes when any file does.

    Slice references (``vol.nii.gz#12``) count with their name and their volume's bytes. Names are hashed as the
    file system's bytes (``os.fsencode``): any file name works, and UTF-8 names hash as they always did.
    """
    h = hashlib.sha256()
    items = []
    for p in paths:
        p = Path(p)
        rel = str(p.relative_to(root)) if root is not None and p.is_relative_to(root) else p.name
        items.append((rel.replace("\\", "/"), p))
    digests: dict[Path, bytes] = {}
    for rel, p in sorted(items):
        h.update(os.fsencode(rel))
        h.update(b"\0")
        src = split_ref(p)[0]
        if src not in digests:
            digests[src] = _digest(src)
        h.update(digests[src])
    return h.hexdigest()
