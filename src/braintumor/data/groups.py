"""Patient groups: which images must stay on one side of every split, beyond the duplicate audit's copies.

Slices of one patient look alike; a split that puts some in training and others in validation measures memory,
not generalisation. Where the files carry no patient id, two ways of naming the groups:

* ``"id-runs"``: files named by an integer (``1841.jpg``) whose numbers run on without a gap form one group: when
  slices are numbered consecutively per patient and a subset keeps whole patients with gaps between them, a run
  holds one or more whole patients, never part of one.
* ``"id-blocks:N"``: blocks of ``N`` consecutive integer names (``id // N``). The figshare
  brain-tumour set (Cheng et al.: 3,064 slices of 233 patients, about 13 per patient, numbered consecutively per
  patient without a patient id) needs this: its subsets are single runs. Only the patient straddling a block
  boundary can fall on both sides of a split; blocks of 3-4 patients (``id-blocks:40``) keep that share small.
* a CSV file with the columns ``path`` and ``group`` (paths as listed, or file names): any grouping you know.

:func:`merge_groups` joins these with the duplicate groups (a copy of a slice in another patient's run ties the
two runs together).

Example:
    >>> id_runs(["a/7.jpg", "b/8.jpg", "a/10.jpg", "a/x.png"])
    ['ids:7-8', 'ids:7-8', 'ids:10-10', None]
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError

#: ``group_by`` keywords (anything else is a CSV path).
GROUP_RULES = ("id-runs", "id-blocks:N")


def _integer_ids(paths: Sequence[str | Path]) -> list[int | None]:
    ids: list[int | None] = []
    for p in paths:
        stem = Path(str(p).split("#")[0]).stem
        ids.append(int(stem) if stem.isdigit() else None)
    return ids


def id_runs(paths: Sequence[str | Path]) -> list[str | None]:
    """One group per path: runs of consecutive integer file names (``None`` for names that are not integers)."""
    ids = _integer_ids(paths)
    numbers = sorted({i for i in ids if i is not None})
    start: dict[int, int] = {}
    for k, n in enumerate(numbers):
        start[n] = start[numbers[k - 1]] if k and numbers[k - 1] == n - 1 else n
    end: dict[int, int] = {}
    for n in numbers:
        end[start[n]] = n
    return [None if i is None else f"ids:{start[i]}-{end[start[i]]}" for i in ids]


def id_blocks(paths: Sequence[str | Path], size: int) -> list[str | None]:
    """One group per path: the block ``id // size`` of its integer name (``None``: not an integer).

    Example:
        >>> id_blocks(["1.jpg", "2.jpg", "3.jpg", "9.jpg"], size=2)
        ['ids:0-1', 'ids:2-3', 'ids:2-3', 'ids:8-9']
    """
    if size < 1:
        raise DataError(f"id-blocks needs a block size >= 1, got {size}")
    return [None if i is None else f"ids:{i // size * size}-{i // size * size + size - 1}"
            for i in _integer_ids(paths)]


def read_group_csv(path: str | Path, paths: Sequence[str | Path]) -> list[str | None]:
    """Groups from a ``path,group`` CSV; a row matches a listed path exactly or by file name.

    Any file name: bytes that are not UTF-8 in the file are the name's own bytes, and a ``path_bytes`` column (as
    braintumor's CSV files carry, :func:`braintumor.display.name_from_row`) gives the exact name.
    """
    from ..display import name_from_row, printable

    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error) as exc:
        raise DataError(f"{printable(path)}: cannot read the group file ({printable(exc)})") from None
    if not rows or not {"path", "group"} <= set(rows[0]):
        raise DataError(f"{printable(path)}: a group file needs the columns 'path' and 'group'")
    by_path = {name_from_row(r): r["group"] for r in rows if r.get("group")}
    by_name = {Path(name_from_row(r)).name: r["group"] for r in rows if r.get("group")}
    out = [by_path.get(str(p), by_name.get(Path(str(p)).name)) for p in paths]
    if not any(g is not None for g in out):
        raise DataError(f"{printable(path)}: no row matches any image (columns path,group; paths or file names)")
    return [None if g is None else f"csv:{g}" for g in out]


def patient_groups(rule: str, paths: Sequence[str | Path]) -> list[str | None]:
    """``rule`` (``"id-runs"`` or a CSV path) applied to ``paths``."""
    if rule == "id-runs" or rule.startswith("id-blocks:"):
        if rule == "id-runs":
            groups = id_runs(paths)
        else:
            try:
                groups = id_blocks(paths, int(rule.split(":", 1)[1]))
            except ValueError:
                raise DataError(f"group_by '{rule}': expected id-blocks:N with an integer N, like "
                                "id-blocks:40") from None
        if not any(g is not None for g in groups):
            raise DataError(f"group_by '{rule}': no image is named by an integer (like 1841.jpg)")
        return groups
    if not Path(rule).is_file():
        raise DataError(f"group_by must be 'id-runs', 'id-blocks:N' or a CSV file with columns path,group; "
                        f"'{rule}' is neither")
    return read_group_csv(rule, paths)


def merge_groups(*labelings: Sequence[str | None]) -> list[str | None]:
    """Join several groupings of the same items: two items sharing a group in any of them end up together.

    Example:
        >>> merge_groups(["a", "a", None, None], [None, "x", "x", None])
        ['a', 'a', 'a', None]
    """
    n = len(labelings[0])
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for lab in labelings:
        if len(lab) != n:
            raise ValueError("every grouping needs one entry per item")
        first: dict[str, int] = {}
        for i, g in enumerate(lab):
            if g is None:
                continue
            if g in first:
                parent[find(i)] = find(first[g])
            else:
                first[g] = i
    name: dict[int, str | None] = {}
    for i in range(n):  # a group's name: the first non-empty label of its first member
        r = find(i)
        if r not in name or name[r] is None:
            name[r] = next((lab[i] for lab in labelings if lab[i] is not None), name.get(r))
    return [name[find(i)] for i in range(n)]
