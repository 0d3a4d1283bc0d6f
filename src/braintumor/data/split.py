"""Every split in the project comes from here: seeded, stratified, and group-aware when groups are given.

A *group* ties together files that must stay on one side of a split (byte-identical or near-duplicate copies
of one scan, slices of one patient). Without groups every file is its own group.

Example:
    >>> from braintumor.data.split import train_val_split
    >>> tr, va = train_val_split([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], val_fraction=0.2, seed=0)
    >>> len(tr), len(va)
    (8, 2)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import DataError


def _check(labels: Sequence[int], groups: Sequence | None) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.asarray(labels)
    if groups is None:
        return y, None
    if len(groups) != len(y):
        raise ValueError(f"{len(groups)} groups for {len(y)} labels")
    # Canonical ids (order of first appearance) so the split depends on which files belong together, never on
    # how the groups happen to be named.
    first: dict[str, int] = {}
    g = np.asarray([first.setdefault(str(x), len(first)) for x in groups])
    return y, g


def train_val_split(labels: Sequence[int], groups: Sequence | None = None, val_fraction: float = 0.2,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/validation split; groups never straddle the two sides.

    With groups, ``StratifiedGroupKFold`` with ``round(1 / val_fraction)`` folds is used and its first fold is
    the validation set, so the validation fraction is approximate.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    y, g = _check(labels, groups)
    counts = np.bincount(y)
    if (counts[counts > 0] < 2).any():
        raise DataError("every class needs at least 2 images for a train/validation split")
    idx = np.arange(len(y))
    # scikit-learn on first use: importing it costs ~1 s, and prediction (which imports this package) never splits
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    if g is None:
        n_val = max(int(round(val_fraction * len(y))), int((counts > 0).sum()))
        sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        tr, va = next(sss.split(idx, y))
        return np.sort(tr), np.sort(va)
    n_splits = max(2, int(round(1.0 / val_fraction)))
    n_groups = len(set(g))
    if n_groups < n_splits:
        raise DataError(f"only {n_groups} distinct groups: too few for a {val_fraction:.0%} validation split")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    tr, va = next(sgkf.split(idx, y, g))
    return np.sort(tr), np.sort(va)


def kfold(labels: Sequence[int], groups: Sequence | None = None, n_splits: int = 5, repeats: int = 1,
          seed: int = 0) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield ``(repeat, fold, train_idx, test_idx)`` for (repeated) stratified (group) k-fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    y, g = _check(labels, groups)
    idx = np.arange(len(y))
    for r in range(repeats):
        groups_r = g if g is not None else idx.astype(str)
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + r)
        for f, (tr, te) in enumerate(sgkf.split(idx, y, groups_r)):
            yield r, f, np.sort(tr), np.sort(te)


def assert_disjoint_groups(groups: Sequence, a: Sequence[int], b: Sequence[int]) -> None:
    """Raise ``AssertionError`` if any group has members on both sides."""
    ga = {str(groups[i]) for i in a}
    gb = {str(groups[i]) for i in b}
    both = ga & gb
    if both:
        raise AssertionError(f"{len(both)} groups on both sides of a split, e.g. {sorted(both)[:3]}")


def read_split_file(run_root) -> list[dict]:
    """The rows of a run's ``split.csv`` (``path``, ``label``, ``subset`` = ``train``/``val``, ``source``).

    ``path`` is the exact file name (a name that is not UTF-8 is read back from its ``path_bytes`` column, see
    :func:`braintumor.display.csv_text`), ready to open.

    Raises:
        RunError: the run has no ``split.csv``.
    """
    import csv
    from pathlib import Path

    from ..display import name_from_row
    from ..errors import RunError

    path = Path(run_root) / "split.csv"
    if not path.is_file():
        raise RunError(f"{Path(run_root)}: no split.csv (the training and validation images of the run)")
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return [{"path": name_from_row(r), "label": r.get("label") or "", "subset": r.get("subset") or "",
                 "source": r.get("source") or ""} for r in csv.DictReader(fh)]
