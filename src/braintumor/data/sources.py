"""Several data folders in one data set: each folder is a *source*, mapped onto the run's classes.

Public brain-MRI sets differ in scanner, sequence and export format, and a model trained on one of them learns the
source as much as the tumour. Training on several sources at once (and testing on a source left out, see
:func:`braintumor.crossval.cv` with ``by_source=True``) is how that is exposed and reduced. A *class map* says
which class folders of which source make up each class of the run::

    {"tumour": ["glioma", "meningioma", "pituitary", "yes"], "no_tumour": ["notumor", "no"]}

On the command line the same map is ``--classes tumour=glioma,meningioma,pituitary,yes --classes no_tumour=notumor,no``.
A folder name that is already a class of the run may be left out of its list (``no`` maps to ``no``). Without a
map, sources must share their class folder names.

Every record keeps its source (:attr:`~braintumor.data.discover.ImageRecord.source`, the folder's name, made unique),
so run folders, splits and reports can show results per source.

Example:
    >>> from braintumor.data.sources import parse_class_map, map_names
    >>> cmap = parse_class_map(["tumour=glioma,yes", "no_tumour=notumor,no"])
    >>> cmap
    {'tumour': ['glioma', 'yes'], 'no_tumour': ['notumor', 'no']}
    >>> map_names(["no", "yes"], cmap)
    [1, 0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import DataError, UsageError
from .discover import ImageFolder, discover


def parse_class_map(spec) -> dict[str, list[str]] | None:
    """A class map from ``["tumour=a,b", "no=c"]``, ``{"tumour": "a,b"}`` or ``{"tumour": ["a", "b"]}``.

    Raises:
        UsageError: an entry without ``=``, an empty class or folder name, a folder mapped twice, a class named
            twice, or fewer than two classes.
    """
    if spec is None:
        return None
    pairs: list[tuple[str, object]] = []
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    elif isinstance(spec, str | bytes):
        raise UsageError(f"classes: expected class=folder,folder entries, got {spec!r}")
    else:
        for item in spec:
            if not isinstance(item, str) or "=" not in item:
                raise UsageError(f"--classes {item!r}: expected CLASS=FOLDER[,FOLDER...], e.g. tumour=glioma,yes")
            name, _, rest = item.partition("=")
            pairs.append((name, rest))
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for name, members in pairs:
        name = str(name).strip()
        if not name:
            raise UsageError("--classes: a class needs a name (CLASS=FOLDER,...)")
        if name in out:
            raise UsageError(f"--classes: class '{name}' is given twice")
        if isinstance(members, str):
            items = [m.strip() for m in members.split(",")]
        elif isinstance(members, Sequence):
            # YAML 1.1 reads unquoted yes/no as booleans: they are the folder names 'yes' and 'no' here
            items = [("yes" if m else "no") if isinstance(m, bool) else str(m).strip() for m in members]
        else:
            raise UsageError(f"--classes: class '{name}' needs a list of folder names, got {members!r}")
        if not items or any(not m for m in items):
            raise UsageError(f"--classes {name}=...: an empty folder name")
        for m in items:
            if m in owner:
                where = "twice" if owner[m] == name else f"to both '{owner[m]}' and '{name}'"
                raise UsageError(f"--classes: folder '{m}' is mapped {where}")
            owner[m] = name
        out[name] = items
    if len(out) < 2:
        raise UsageError(f"--classes: need at least two classes, got {list(out)}")
    for name in out:  # a class name that is also another class's folder would be ambiguous
        if name in owner and owner[name] != name:
            raise UsageError(f"--classes: '{name}' is a class and also a folder of class '{owner[name]}'")
    return out


def class_of(name: str, class_map: Mapping[str, Sequence[str]]) -> str | None:
    """The class of the map that folder (or model class) ``name`` belongs to, or ``None``."""
    for target, members in class_map.items():
        if name == target or name in members:
            return target
    return None


def map_names(names: Sequence[str], class_map: Mapping[str, Sequence[str]], what: str = "class") -> list[int]:
    """Index into ``list(class_map)`` for every name; an unmapped name raises :class:`UsageError`."""
    targets = list(class_map)
    out = []
    for n in names:
        t = class_of(n, class_map)
        if t is None:
            raise UsageError(f"{what} '{n}' is in no class of --classes ({format_class_map(class_map)})")
        out.append(targets.index(t))
    return out


def format_class_map(class_map: Mapping[str, Sequence[str]]) -> str:
    """``tumour=glioma,yes no_tumour=notumor,no``: the map as the command line writes it."""
    return " ".join(f"{k}={','.join(v)}" for k, v in class_map.items())


#: folder names that say nothing of the data set: a source named so is called ``parent/name``
GENERIC_NAMES = {"training", "train", "testing", "test", "val", "validation", "images", "data", "dataset"}


def source_names(roots: Sequence[str | Path]) -> list[str]:
    """One readable, unique name per source folder: its name, or ``parent/name`` where names clash or say nothing.

    Example:
        >>> source_names(["data/nickparvar/Training", "data/brain_mri_yes_no"])
        ['nickparvar/Training', 'brain_mri_yes_no']
    """
    paths = [Path(r).resolve() for r in roots]
    names = [p.name or "data" for p in paths]
    for i, p in enumerate(paths):
        if names.count(names[i]) > 1 or names[i].lower() in GENERIC_NAMES:
            names[i] = f"{p.parent.name}/{p.name}"
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def discover_sources(roots: str | Path | Sequence[str | Path], class_map=None, slices=None,
                     require_all: bool = True, known: Sequence[str] = ()) -> ImageFolder:
    """Discover one or more labelled folders (sources) as one :class:`ImageFolder` on the map's classes.

    Args:
        roots: one folder or several, each ``<root>/<class>/<images>``.
        class_map: ``{class: [folder names]}`` (see :func:`parse_class_map`); ``None``: the sources' own folder
            names are the classes (their union, sorted).
        slices: as for :func:`~braintumor.data.discover.discover`.
        require_all: every class of the map must get images (training); ``False`` for evaluation folders, which
            may hold only some classes (e.g. tumour slices only).

    Returns:
        An :class:`ImageFolder` whose records carry ``source`` and whose ``source_roots`` maps each source name
        to its folder. Duplicate groups are not attached yet (the audit does that across all sources at once).

    Raises:
        DataError: a source folder is missing or has no images; a class folder no class of the map takes; a
            folder named in the map that no source has; a source whose classes overlap no other source's; fewer
            than two classes in all.

    Example:
        >>> ds = discover_sources(["data/nickparvar/Training", "data/brain_mri_yes_no"],
        ...                       {"tumour": ["glioma", "meningioma", "pituitary", "yes"],
        ...                        "no_tumour": ["notumor", "no"]})                  # doctest: +SKIP
        >>> ds.classes, ds.source_counts()                                          # doctest: +SKIP
        (['tumour', 'no_tumour'], {'Training': 5712, 'brain_mri_yes_no': 253})
    """
    if isinstance(roots, str | Path):
        roots = [roots]
    roots = [Path(r) for r in roots]
    if not roots:
        raise UsageError("no data folder given")
    if len({r.resolve() for r in roots}) < len(roots):
        raise UsageError("the same data folder is given twice")
    class_map = parse_class_map(class_map)
    names = source_names(roots)
    found: list[ImageFolder] = []
    for root in roots:
        if not root.is_dir():
            raise DataError(f"{root}: no such folder")
        try:
            one_ok = class_map or len(roots) > 1 or not require_all
            found.append(discover(root, slices=slices, min_classes=1 if one_ok else 2))
        except DataError as exc:
            if len(roots) == 1:  # the message names the folder already
                raise
            raise DataError(f"{exc} (source {root})") from None
    if class_map is None:
        classes = sorted({c for ds in found for c in ds.classes})
        cmap = {c: [c] for c in classes}
    else:
        cmap = class_map
        present = {c for ds in found for c in ds.classes}
        unknown = [m for members in cmap.values() for m in members
                   if m not in present and m not in cmap and m not in known]
        if unknown:
            raise DataError(f"--classes names {unknown}, but no source has a class folder of that name "
                            f"(sources have: {sorted(present)})")
    targets = list(cmap)
    records = []
    per_source: list[set[str]] = []
    for root, name, ds in zip(roots, names, found, strict=True):
        try:
            idx = map_names(ds.classes, cmap, what=f"class folder of {root}:")
        except UsageError as exc:
            raise DataError(str(exc)) from None
        per_source.append({targets[i] for i in idx})
        records.extend(replace(r, label=idx[r.label], source=name) for r in ds.records)
    used = {t for s in per_source for t in s}
    unused = [t for t in targets if t not in used]
    if unused and require_all:
        raise DataError(f"class(es) {unused} of --classes get no images: none of their folders is in any source")
    if len(roots) > 1:
        for i, s in enumerate(per_source):
            others = set().union(*(p for j, p in enumerate(per_source) if j != i))
            if not s & others:
                raise DataError(f"source {roots[i]} has only class(es) {sorted(s)}, which no other source has: "
                                f"the sources share no class (map their folders with --classes)")
    return ImageFolder(roots[0], targets, records, source_roots=dict(zip(names, map(str, roots), strict=True)))
