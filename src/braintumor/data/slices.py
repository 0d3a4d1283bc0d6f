"""Which slices of a multi-slice source become images, and one result per volume from per-slice predictions.

A *slice selection* is ``"middle"`` (one image per volume: its middle slice, the default), ``"all"`` (every
slice) or an integer ``K`` (``K`` slices evenly spaced through the volume; ``K=1`` is the middle slice). Training
records it in ``TrainConfig.slices`` and ``metadata.json["data"]["slices"]`` so prediction reproduces it
(:func:`run_slices`). Slices are referred to as ``"vol.nii.gz#12"`` (see :func:`braintumor.data.read.frame_ref`).

Example:
    >>> from braintumor.data.slices import parse_slices, select_frames
    >>> parse_slices("3"), select_frames(10, "middle"), select_frames(10, 3)
    (3, [5], [1, 5, 8])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import UsageError
from .classes import NEGATIVE_NAMES
from .classes import positive_class as binary_positive
from .read import split_ref

Slices = str | int

#: The default slice selection.
DEFAULT_SLICES = "middle"


def parse_slices(value: Slices | None) -> Slices:
    """Normalise a slice selection: ``"middle"``, ``"all"`` or a positive ``int`` (``"5"`` -> ``5``).

    Raises:
        UsageError: anything else.
    """
    if value is None:
        return DEFAULT_SLICES
    if isinstance(value, bool):
        raise UsageError(f"slices must be middle, all or a positive number, got {value!r}")
    if isinstance(value, int):
        k = value
    else:
        text = str(value).strip().lower()
        if text in ("middle", "all"):
            return text
        if not text.isdigit():
            raise UsageError(f"slices must be middle, all or a positive number, got '{value}'")
        k = int(text)
    if k < 1:
        raise UsageError(f"slices must be middle, all or a positive number, got {k}")
    return k


def select_frames(n: int, slices: Slices | None = None) -> list[int]:
    """Indices of the slices to use out of ``n`` (sorted, unique).

    ``"middle"`` -> ``[n // 2]``; ``"all"`` -> ``range(n)``; ``K`` -> the centres of ``K`` equal parts of the
    volume (``K >= n`` gives every slice).
    """
    slices = parse_slices(slices)
    if n <= 1:
        return [0]
    if slices == "middle":
        return [n // 2]
    if slices == "all" or slices >= n:
        return list(range(n))
    return sorted({min(n - 1, int((i + 0.5) * n / slices)) for i in range(slices)})


def run_slices(metadata: dict | None) -> Slices:
    """The slice selection a run was trained with (``metadata.json["data"]["slices"]``; ``"middle"`` before it
    was recorded). Pass a :class:`~braintumor.inference.Predictor`'s ``metadata``."""
    return parse_slices(((metadata or {}).get("data") or {}).get("slices"))


# ------------------------------------------------------------------------------------------- volume summaries


@dataclass
class VolumeSummary:
    """One volume's result from its slices' predictions.

    Attributes:
        source: the volume (file or DICOM series folder).
        label: the label of the slice with the highest tumour probability (so a volume is 'tumour' when any
            slice is).
        tumour_probability: that slice's tumour probability (``1 - p(negative class)``).
        slice: its frame index; ``slice_path``: its reference (``vol.nii.gz#12``).
        n_slices: slices predicted; ``errors``: ``(reference, reason)`` of slices that could not be read.
    """

    source: str
    label: str | None
    tumour_probability: float | None
    slice: int | None
    slice_path: str | None
    n_slices: int
    errors: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "label": self.label, "tumour_probability": self.tumour_probability,
                "slice": self.slice, "slice_path": self.slice_path, "n_slices": self.n_slices,
                "errors": [{"path": p, "error": e} for p, e in self.errors]}


def _get(pred, name):
    return pred.get(name) if isinstance(pred, dict) else getattr(pred, name, None)


def _tumour_probability(probs: dict[str, float], positive_class: str | None) -> float:
    classes = list(probs)
    if positive_class is None and len(classes) == 2:
        positive_class = binary_positive(classes)
    if positive_class is not None and positive_class in probs:
        return float(probs[positive_class])
    negatives = [c for c in classes if c.lower() in NEGATIVE_NAMES]
    if len(negatives) == 1:
        return 1.0 - float(probs[negatives[0]])
    return float(max(probs.values()))  # no negative class: the most confident class


def summarise_volume(predictions: Sequence, positive_class: str | None = None) -> VolumeSummary:
    """Summarise the per-slice predictions of ONE volume (``Prediction`` objects or their ``to_dict()``).

    The volume's tumour probability is the highest slice tumour probability, its label that slice's label.

    Example:
        >>> preds = [{"path": "v.nii.gz#3", "label": "no", "probabilities": {"no": 0.9, "yes": 0.1}},
        ...          {"path": "v.nii.gz#4", "label": "yes", "probabilities": {"no": 0.2, "yes": 0.8}}]
        >>> s = summarise_volume(preds)
        >>> s.label, s.tumour_probability, s.slice
        ('yes', 0.8, 4)

    Raises:
        ValueError: no predictions, or predictions of several sources.
    """
    if not predictions:
        raise ValueError("no predictions to summarise")
    sources = {str(split_ref(_get(p, "path"))[0]) for p in predictions}
    if len(sources) != 1:
        raise ValueError(f"predictions of {len(sources)} sources; use summarise_volumes")
    best, errors = None, []
    for p in predictions:
        ref = str(_get(p, "path"))
        if _get(p, "error"):
            errors.append((ref, str(_get(p, "error"))))
            continue
        prob = _tumour_probability(dict(_get(p, "probabilities") or {}), positive_class)
        if best is None or prob > best[0]:
            best = (prob, p, ref)
    if best is None:
        return VolumeSummary(sources.pop(), None, None, None, None, len(predictions), errors)
    prob, p, ref = best
    return VolumeSummary(sources.pop(), _get(p, "label"), prob, split_ref(ref)[1], ref, len(predictions), errors)


def summarise_volumes(predictions: Iterable, positive_class: str | None = None,
                      include_images: bool = False) -> list[VolumeSummary]:
    """:func:`summarise_volume` for every volume among ``predictions`` (in order of first appearance).

    Predictions of plain 2-D images (paths without a ``#frame``) are left out, unless ``include_images``: then
    each is its own one-slice summary (``slice`` is ``None``).
    """
    by_source: dict[str, list] = {}
    for p in predictions:
        src, frame = split_ref(_get(p, "path"))
        if frame is not None or include_images:
            by_source.setdefault(str(src), []).append(p)
    return [summarise_volume(preds, positive_class) for preds in by_source.values()]
