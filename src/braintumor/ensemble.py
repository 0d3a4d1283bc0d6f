"""Several trained runs as one predictor: their probabilities (and tumour maps) averaged.

Two trainings of the same recipe that differ only in their seed can disagree on the images nearest the decision, and
most of all on a source neither was trained on (README, "Across sources"). Averaging their outputs is the classic
remedy (Lakshminarayanan et al., 2017, "deep ensembles"): a fixed rule, chosen before any test image is seen.

An :class:`Ensemble` is a :class:`~braintumor.inference.Predictor`: ``predict_paths``, ``outputs_prepared``,
``proba_prepared``, ``tta`` and the input check work as for one run, so :func:`braintumor.evaluate` and ``braintumor
predict``/``evaluate RUN --with RUN2`` take one. Members must prepare images the same way (one
:class:`~braintumor.preprocess.Preprocessor`) and have the same classes in the same order; each applies its own
temperature before the average. The input check is the first member's (its feature distance, its rules), applied to
the averaged probabilities. There is no Grad-CAM of an ensemble (no single torch model).

Example:
    >>> from braintumor.ensemble import load_ensemble
    >>> ens = load_ensemble(["runs/detector-s0", "runs/detector-s1"], backend="auto")   # doctest: +SKIP
    >>> ens                                                                             # doctest: +SKIP
    Ensemble(2 runs: ['detector-s0', 'detector-s1'], classes=['tumour', 'no_tumour'], img_size=224, threshold=None)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import UsageError
from .inference import Predictor


def _name(p: Predictor) -> str:
    if p.run_dir is not None:
        return str(p.run_dir)
    return str(getattr(p, "path", None) or p.metadata.get("run_name") or "?")


class Ensemble(Predictor):
    """The average of several predictors' probabilities and tumour maps.

    Args:
        members: two or more :class:`~braintumor.inference.Predictor` (torch or onnxruntime, any mix) with the same
            classes and preprocessing.

    Raises:
        UsageError: fewer than two members; members whose classes, positive class or preprocessing differ from the
            first's (named in the message).

    The decision threshold is the members' when they share one, their mean when they do not (``None``, argmax, when
    none has one).
    """

    model = None  # no single torch model: no Grad-CAM

    def __init__(self, members: Sequence[Predictor]):
        members = list(members)
        if len(members) < 2:
            raise UsageError("an ensemble needs two or more runs")
        first = members[0]
        for m in members[1:]:
            if list(m.classes) != list(first.classes) or m.positive_class != first.positive_class:
                raise UsageError(f"{_name(m)}: classes {m.classes} differ from {_name(first)}'s {first.classes}: "
                                 "an ensemble averages the same classes")
            a, b = first.preprocessor.to_dict(), m.preprocessor.to_dict()
            if a != b:
                diff = ", ".join(f"{k} {b.get(k)!r} vs {a.get(k)!r}" for k in sorted(set(a) | set(b))
                                 if a.get(k) != b.get(k))
                raise UsageError(f"{_name(m)}: prepares images differently from {_name(first)} ({diff}): an "
                                 "ensemble needs one preparation")
        self.members = members
        self.preprocessor = first.preprocessor
        self.classes = list(first.classes)
        self.positive_class = first.positive_class
        self.temperature = 1.0  # each member applies its own
        thresholds = [m.threshold for m in members]
        if all(t is None for t in thresholds):
            self.threshold = None
        else:
            vals = [0.5 if t is None else float(t) for t in thresholds]
            self.threshold = vals[0] if len(set(vals)) == 1 else float(np.mean(vals))
        self.metadata = dict(first.metadata)
        self.metadata["ensemble"] = [_name(m) for m in members]
        self.input_check = first.input_check
        self.check_inputs = True
        self.tta = False
        self.run_dir = None  # an ensemble's figures belong to no one run
        #: The members' run folders (``None`` for an ``.onnx`` file): an evaluation never writes into them.
        self.run_dirs = [m.run_dir for m in members]
        self.device = getattr(first, "device", "cpu")
        self.checkpoint_file = None
        self._checkpoint_stat = None
        self._fingerprint = None
        backends = {m.backend for m in members}
        self.backend = backends.pop() if len(backends) == 1 else "mixed"
        precisions = {m.precision for m in members}
        self.precision = precisions.pop() if len(precisions) == 1 else "mixed"

    def __repr__(self) -> str:
        names = [Path(_name(m)).name for m in self.members]
        return (f"Ensemble({len(self.members)} runs: {names}, classes={self.classes}, "
                f"img_size={self.preprocessor.img_size}, threshold={self.threshold})")

    @property
    def fingerprint(self) -> str:
        """A hash of the members' fingerprints, in order."""
        if self._fingerprint is None:
            joined = "|".join(m.fingerprint for m in self.members)
            self._fingerprint = hashlib.sha256(joined.encode()).hexdigest()[:16]
        return self._fingerprint

    def model_info(self) -> dict:
        info = super().model_info()
        info.update(name=f"ensemble of {len(self.members)}", version=None,
                    members=[m.model_info() for m in self.members])
        return info

    @property
    def has_tumour_map(self) -> bool:
        """Whether every member predicts a tumour map."""
        return all(m.has_tumour_map for m in self.members)

    @property
    def has_input_check(self) -> bool:
        return self.members[0].has_input_check

    def logits(self, x, batch_size: int = 64):
        raise UsageError("an ensemble averages probabilities; it has no logits")

    def proba_prepared(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return self.outputs_prepared(images, maps=False, scores=False, batch_size=batch_size).proba

    def _outputs_batch(self, images: np.ndarray, maps: bool, scores: bool
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The members' outputs of one batch, averaged; the input check's scores from the first member."""
        outs = [m._outputs_batch(images, maps, scores and k == 0) for k, m in enumerate(self.members)]
        proba = np.mean([o[0] for o in outs], axis=0).astype(np.float32)
        mean_map = np.mean([o[1] for o in outs], axis=0).astype(np.float32) if maps else None
        return proba, mean_map, outs[0][2] if scores else None


def load_ensemble(paths: Sequence[str | Path], *, device: str = "auto", backend: str | None = None,
                  notice: Callable[[str], None] | None = None, precision: str = "auto") -> Ensemble:
    """Load each run folder (or ``.onnx`` file) with :func:`braintumor.backends.load_predictor` and average them.

    Raises:
        UsageError: a path given twice, fewer than two paths, or runs that cannot be averaged (:class:`Ensemble`).
        RunError: a path that is not a run folder or an ``.onnx`` file.
    """
    from .backends import load_predictor

    seen: set[Path] = set()
    for p in paths:
        r = Path(p).resolve()
        if r in seen:
            raise UsageError(f"{p}: given twice: an ensemble's members are different runs")
        seen.add(r)
    return Ensemble([load_predictor(p, device=device, backend=backend, notice=notice, precision=precision)
                     for p in paths])
