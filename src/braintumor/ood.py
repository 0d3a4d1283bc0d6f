"""The input check: is this a brain-MRI slice like the ones the model was trained on? Fitted at training time.

A classifier gives every input a class: a portrait, a CT of a vertebra or a grey gradient comes back "tumour" with
p = 0.99. The input check answers first whether the model should answer at all, in two stages:

1. **Rules on the decoded image** (:class:`InputRules`, no model): a brain-MRI slice is greyscale, roughly square,
   has real contrast, a dark background around the head (the border of the frame is mostly dark) and a head that
   covers a sensible part of the frame. Photographs, documents, colour captures, blank and noise images fail one
   of these and are ``not_brain_mri`` in microseconds. The limits are wide on purpose: they were set on the brain
   slices of three public collections (Navoneel's, Nickparvar's, figshare's: see ``benchmarks/ood.py``), of which
   they flag almost none.
2. **Distance in the model's own feature space** (:class:`FeatureDistance`): the Mahalanobis distance of the pooled
   backbone features to the nearest class mean, with one shared covariance (Lee et al., NeurIPS 2018; Ledoit-Wolf
   shrinkage, since runs have far fewer images than features), fitted on the training split. The threshold is
   fitted on the *validation* split: a high quantile of the validation distances (``quantile``, 0.99 by default) of
   a log-normal fitted to them, so that a 40-image validation split gives a stable value, and never below the
   largest validation distance times ``1.0``. Inputs beyond it are ``unfamiliar``: the model was not trained on
   anything like them (another scanner, sequence, body part or modality), so its class is not to be trusted.

A prediction whose check passes can still be unsure: **abstention** (``min_confidence``) answers ``uncertain``
when the calibrated probability of the predicted class is below the limit. The run report shows the coverage /
accuracy trade-off of this limit on the validation split.

Each prediction then has a ``verdict``: the class, ``not_brain_mri``, ``unfamiliar`` or ``uncertain``, beside its
``label`` (the model's class, always given for inspection), ``ood_score`` (the distance divided by the threshold:
above 1 is unfamiliar) and ``in_distribution``. A run keeps its check in ``ood.npz`` (NumPy arrays, loaded without
pickle) and ``metadata.json`` (``input_check``); an ONNX export computes ``ood_score`` in the graph (an output of its
own), so the onnxruntime path checks inputs too. Runs made before the check existed predict as before, with
``verdict`` = the class, ``in_distribution`` = ``None`` and a notice that they have no check
(``braintumor fit-input-check RUN`` fits one from the run's own split).

Example:
    >>> import numpy as np
    >>> from braintumor.ood import InputRules, image_stats
    >>> photo = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    >>> InputRules().reasons(image_stats(photo))[0]
    'colour image (brain MRI is greyscale)'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import RunError
from .input_rules import ImageStats, InputRules, image_stats  # noqa: F401  (stage 1, public here too)
from .lazy import inference_mode, no_grad, torch

#: The file of a run folder that holds the fitted feature distance (NumPy ``.npz``, no pickle).
OOD_FILE = "ood.npz"
#: ``verdict`` values other than a class name.
NOT_BRAIN = "not_brain_mri"
UNFAMILIAR = "unfamiliar"
UNCERTAIN = "uncertain"
VERDICTS = (NOT_BRAIN, UNFAMILIAR, UNCERTAIN)
#: What each verdict tells a user (CLI table footnote, web page, API docs).
VERDICT_TEXT = {
    NOT_BRAIN: "this does not look like a brain MRI slice; the model gives no class",
    UNFAMILIAR: "this scan is unlike anything the model was trained on; its class is not to be trusted",
    UNCERTAIN: "the model is not confident enough to answer",
}
#: Default quantile of the validation distances that becomes the threshold.
DEFAULT_QUANTILE = 0.99
#: Default abstention limit: below this calibrated probability of the predicted class, the verdict is uncertain.
DEFAULT_MIN_CONFIDENCE = 0.6


# Stage 1 (rules on the decoded image) lives in braintumor.input_rules, re-exported here.


# ------------------------------------------------------------------------------- stage 2: distance in feature space


class FeatureDistance:
    """Mahalanobis distance to the nearest class mean, one shared (Ledoit-Wolf shrunk) covariance.

    ``fit(features, labels)`` then ``distance(features)``: ``min_c sqrt((f - mu_c)^T P (f - mu_c))`` with ``f`` the
    L2-normalised feature vector and ``P`` the shrunk precision matrix, computed as ``|| (f - mu_c) W ||`` with
    ``W`` its Cholesky factor (also what the ONNX graph computes). Normalising first (the feature's direction, not
    its size) separated photographs, CT and other non-brain images from brain MRI better on the default model
    (``benchmarks/ood.py``), as in the cosine-feature detectors of the OOD literature.

    Example:
        >>> import numpy as np
        >>> from braintumor.ood import FeatureDistance
        >>> rng = np.random.default_rng(0)
        >>> f = rng.normal(size=(200, 8)) + 5; y = np.arange(200) % 2
        >>> d = FeatureDistance().fit(f, y)
        >>> bool(d.distance(-f).min() > d.distance(f).max())     # features pointing the other way
        True
    """

    def __init__(self, means: np.ndarray | None = None, whiten: np.ndarray | None = None):
        self.means = None if means is None else np.asarray(means, np.float32)
        self.whiten = None if whiten is None else np.asarray(whiten, np.float32)

    def fit(self, features: np.ndarray, labels: Sequence[int]) -> FeatureDistance:
        from sklearn.covariance import LedoitWolf

        f = _unit(np.asarray(features, np.float64))
        y = np.asarray(labels)
        classes = np.unique(y)
        means = np.stack([f[y == c].mean(axis=0) for c in classes])
        centred = f - means[np.searchsorted(classes, y)]
        cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
        precision = np.linalg.inv(cov)
        precision = (precision + precision.T) / 2
        self.means = means.astype(np.float32)
        self.whiten = np.linalg.cholesky(precision).astype(np.float32)
        return self

    @property
    def dim(self) -> int:
        return 0 if self.means is None else int(self.means.shape[1])

    def _whitened_means(self) -> np.ndarray:
        """``means @ whiten`` ``(K, D)``, cached: the distance is ``|| f W - mu_c W ||``, one product per input
        whatever the number of classes."""
        cached = self.__dict__.get("_mw")
        if cached is None or cached[0] is not self.means or cached[1] is not self.whiten:
            mw = (self.means.astype(np.float64) @ self.whiten.astype(np.float64)).astype(np.float32)
            cached = (self.means, self.whiten, mw)
            self.__dict__["_mw"] = cached
        return cached[2]

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Distances ``(N,)`` (``float64``; the product in ``float32``, as in the ONNX graph)."""
        z = _unit(np.asarray(features, np.float32)) @ self.whiten
        mw = self._whitened_means()
        d2 = ((z[:, None, :] - mw[None, :, :]) ** 2).sum(axis=2, dtype=np.float64)
        return np.sqrt(d2.min(axis=1))

    def torch_module(self, threshold: float) -> torch.nn.Module:
        """A module ``features (N, D) -> distance / threshold (N,)`` (the ONNX export's ``ood_score``)."""
        return _distance_module_class()(self._whitened_means(), self.whiten, threshold)


def _unit(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), np.float32(1e-12)).astype(f.dtype)


@functools.cache
def _distance_module_class() -> type:
    """The class of :meth:`FeatureDistance.torch_module`, defined on first use (torch is imported then)."""

    class _DistanceModule(torch.nn.Module):
        def __init__(self, whitened_means: np.ndarray, whiten: np.ndarray, threshold: float):
            super().__init__()
            self.register_buffer("mw", torch.from_numpy(np.asarray(whitened_means, np.float32)))
            self.register_buffer("whiten", torch.from_numpy(np.asarray(whiten, np.float32)))
            self.scale = 1.0 / float(threshold)

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            f = f.float()
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
            z = f @ self.whiten
            d2 = (z.unsqueeze(1) - self.mw.unsqueeze(0)).pow(2).sum(dim=2)
            return torch.sqrt(d2.min(dim=1).values) * self.scale

    return _DistanceModule


# ----------------------------------------------------------------------------------------------- the fitted check


def pooled_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, pooled backbone features (N, C))`` of a :class:`~braintumor.models.registry.Classifier` in one
    pass (a hook on its global pooling)."""
    pool = getattr(model, "pool", None)
    if pool is None:
        raise RunError("this model has no global pooling layer to take features from")
    got: list[torch.Tensor] = []
    handle = pool.register_forward_hook(lambda _m, _i, out: got.append(out))
    try:
        logits = model.logits_of(x) if hasattr(model, "logits_of") else model(x)
    finally:
        handle.remove()
    return logits, got[-1].flatten(1)


#: Relative margin of the threshold above the largest validation distance: far above float32 rounding (~1e-7),
#: far below anything that changes a verdict.
FLOAT_SLACK = 1e-4


def threshold_from(distances: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
    """The ``quantile`` of a log-normal fitted to ``distances``, and never below their maximum.

    A quantile read straight from a 40-image validation split is its largest value, noisy from run to run; the
    log-normal fit uses every value. Taking at least the largest one (plus :data:`FLOAT_SLACK`) keeps every
    validation image in: the float32 graph's score of the image that set it can land a few ulp above 1 (seen on
    an AVX2 CPU: 1.0000002), which would flag a validation image as unfamiliar.
    """
    from statistics import NormalDist

    d = np.asarray(distances, np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    if len(d) == 0:
        raise ValueError("no validation distances to fit a threshold on")
    logs = np.log(d)
    sd = float(logs.std(ddof=1)) if len(d) > 1 else 0.0
    fitted = math.exp(float(logs.mean()) + NormalDist().inv_cdf(quantile) * sd)
    return float(max(fitted, d.max() * (1 + FLOAT_SLACK)))


@dataclass
class InputCheck:
    """A run's fitted input check: rules, feature distance, threshold, abstention limit.

    Use :func:`fit_input_check` to make one and :meth:`save` / :meth:`load` to keep it in a run folder.
    """

    rules: InputRules = field(default_factory=InputRules)
    distance: FeatureDistance | None = None
    threshold: float | None = None
    quantile: float = DEFAULT_QUANTILE
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    summary: dict = field(default_factory=dict)

    @property
    def has_distance(self) -> bool:
        return self.distance is not None and self.threshold is not None

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``ood_score`` of pooled features: distance / threshold (above 1: unfamiliar)."""
        return self.distance.distance(features) / self.threshold

    @no_grad
    def torch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` of a torch ``(N, D)`` tensor, computed by the module the ONNX export embeds."""
        cached = self.__dict__.get("_module")
        if cached is None or cached[0] is not self.distance or cached[1] != self.threshold:
            cached = (self.distance, self.threshold, self.distance.torch_module(self.threshold).eval())
            self.__dict__["_module"] = cached
        module = cached[2]
        if module.whiten.device != features.device:
            module.to(features.device)
        return module(features)

    def to_metadata(self) -> dict:
        """The ``input_check`` entry of ``metadata.json`` (the arrays go to :data:`OOD_FILE`)."""
        fitted = None
        if self.distance is not None:
            import hashlib

            h = hashlib.sha256(self.distance.means.tobytes() + self.distance.whiten.tobytes())
            fitted = h.hexdigest()[:16]
        return {"method": "mahalanobis-unit-pooled-features", "file": OOD_FILE if self.distance is not None else None,
                "fitted": fitted,
                "feature_dim": self.distance.dim if self.distance is not None else None,
                "threshold": self.threshold, "quantile": self.quantile, "min_confidence": self.min_confidence,
                "rules": self.rules.to_dict(), "summary": self.summary}

    def save(self, run_root: str | Path) -> Path | None:
        """Write :data:`OOD_FILE` into the run folder (atomically); returns it (``None`` without a distance)."""
        if self.distance is None:
            return None
        import io

        from .rundir import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, means=self.distance.means, whiten=self.distance.whiten)
        path = Path(run_root) / OOD_FILE
        data = buf.getvalue()
        atomic_write_bytes(path, lambda fh: fh.write(data))
        return path

    @classmethod
    def from_metadata(cls, meta: dict, run_root: str | Path | None = None, arrays: dict | None = None
                      ) -> InputCheck | None:
        """The check described by ``meta["input_check"]`` (``None`` for a run without one).

        ``arrays`` gives ``means``/``whiten`` directly (an ONNX file computes the distance in its graph and needs
        none); otherwise they are read from the run folder's :data:`OOD_FILE` without pickle.

        Raises:
            RunError: the entry or the file is malformed (named, one line).
        """
        entry = (meta or {}).get("input_check")
        if entry is None:
            return None
        where = f"{run_root}: " if run_root is not None else ""
        if not isinstance(entry, dict):
            raise RunError(f"{where}metadata.json input_check is not an object")
        try:
            threshold = None if entry.get("threshold") is None else float(entry["threshold"])
            quantile = float(entry.get("quantile", DEFAULT_QUANTILE))
            min_conf = float(entry.get("min_confidence", DEFAULT_MIN_CONFIDENCE))
        except (TypeError, ValueError):
            raise RunError(f"{where}metadata.json input_check: threshold, quantile and min_confidence must be "
                           f"numbers") from None
        if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
            raise RunError(f"{where}metadata.json input_check.threshold must be a positive number, got {threshold}")
        if not 0.0 <= min_conf <= 1.0:
            raise RunError(f"{where}metadata.json input_check.min_confidence must be in [0, 1], got {min_conf}")
        distance = None
        if entry.get("file") and threshold is not None:
            if arrays is None and run_root is not None:
                arrays = _read_arrays(Path(run_root) / OOD_FILE)
            if arrays:
                distance = FeatureDistance(arrays["means"], arrays["whiten"])
                dim = entry.get("feature_dim")
                if distance.whiten.shape != (distance.dim, distance.dim) or (dim is not None and dim != distance.dim):
                    raise RunError(f"{where}{OOD_FILE} does not match metadata.json input_check (feature_dim "
                                   f"{dim}, arrays {distance.means.shape} and {distance.whiten.shape})")
        summary = entry.get("summary") if isinstance(entry.get("summary"), dict) else {}
        return cls(InputRules.from_dict(entry.get("rules")), distance, threshold, quantile, min_conf, summary)


def _read_arrays(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k], np.float32) for k in ("means", "whiten")}
    except FileNotFoundError:
        raise RunError(f"{path}: missing (metadata.json names an input check); fit it again with "
                       f"`braintumor fit-input-check {path.parent}`") from None
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path}: not a valid input-check file ({str(exc).splitlines()[0][:200]})") from None
    m, w = arrays["means"], arrays["whiten"]
    if m.ndim != 2 or w.ndim != 2 or not np.isfinite(m).all() or not np.isfinite(w).all():
        raise RunError(f"{path}: not a valid input-check file (arrays of the wrong shape or not finite)")
    return arrays


@inference_mode
def features_of(predictor, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, K), pooled features (N, C))`` of prepared ``uint8`` images with a torch predictor."""
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        x = predictor.preprocessor.normalise(images[i:i + batch_size]).to(predictor.device).contiguous()
        logits, f = pooled_features(predictor.model, x)
        probs.append(torch.softmax(logits.float().cpu() / predictor.temperature, dim=1).numpy())
        feats.append(f.float().cpu().numpy())
    if not probs:
        return np.zeros((0, len(predictor.classes)), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probs), np.concatenate(feats)


def fit_input_check(predictor, train_x: np.ndarray, train_y: Sequence[int], val_x: np.ndarray,
                    val_y: Sequence[int], *, quantile: float = DEFAULT_QUANTILE,
                    min_confidence: float = DEFAULT_MIN_CONFIDENCE, rules: InputRules | None = None,
                    val_stats: Sequence[ImageStats] | None = None) -> InputCheck:
    """Fit the feature distance on the training split and its threshold on the validation split.

    Args:
        predictor: the run's torch :class:`~braintumor.inference.Predictor` (calibrated).
        train_x, val_x: prepared ``uint8`` images of the two splits; ``train_y``/``val_y`` their labels.
        quantile: quantile of the validation distances that becomes the threshold (:func:`threshold_from`).
        min_confidence: the abstention limit stored with the check.
        val_stats: the validation images' :class:`ImageStats` (then the summary counts what the rules flag).
    """
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    _, f_train = features_of(predictor, train_x)
    proba_val, f_val = features_of(predictor, val_x)
    distance = FeatureDistance().fit(f_train, np.asarray(train_y))
    d_train, d_val = distance.distance(f_train), distance.distance(f_val)
    threshold = threshold_from(d_val, quantile)
    rules = rules or InputRules()
    # the probability of the class the predictor answers (its decision threshold included), as assess() uses it
    pick = np.array([predictor.classes.index(lab) for lab in predictor.labels_from_proba(proba_val)], dtype=int)
    conf = proba_val[np.arange(len(pick)), pick] if len(pick) else np.zeros(0)
    correct = pick == np.asarray(val_y)
    summary = {
        "n_train": int(len(f_train)), "n_val": int(len(f_val)),
        "train_score": _quantiles(d_train / threshold), "val_score": _quantiles(d_val / threshold),
        "val_flagged_unfamiliar": float((d_val > threshold).mean()) if len(d_val) else 0.0,
        "val_uncertain": float((conf < min_confidence).mean()) if len(conf) else 0.0,
        "val_accuracy_answered": float(correct[conf >= min_confidence].mean()) if (conf >= min_confidence).any()
        else None,
    }
    if val_stats is not None:
        summary["val_flagged_not_brain"] = float(np.mean([bool(rules.reasons(s)) for s in val_stats])) \
            if len(val_stats) else 0.0
    return InputCheck(rules, distance, threshold, quantile, min_confidence, summary)


def _quantiles(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    q = np.percentile(x, [1, 5, 25, 50, 75, 95, 99])
    return {f"p{p}": round(float(v), 4) for p, v in zip((1, 5, 25, 50, 75, 95, 99), q, strict=True)} | {
        "max": round(float(np.max(x)), 4)}


def coverage_curve(proba: np.ndarray, y: Sequence[int], limits: Sequence[float] | None = None,
                   predicted: Sequence[int] | None = None) -> dict:
    """Coverage (share answered) and accuracy on the answered part for each abstention limit.

    An image is answered when the probability of its predicted class reaches the limit. ``predicted``: the class
    index each image is given (a run's decision threshold included, as predictions apply it); default the argmax.

    Example:
        >>> import numpy as np
        >>> from braintumor.ood import coverage_curve
        >>> c = coverage_curve(np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]]), [0, 1, 1], [0.5, 0.6])
        >>> c["coverage"], c["accuracy"]
        ([1.0, 0.6667], [0.6667, 1.0])
    """
    proba = np.asarray(proba, np.float64)
    y = np.asarray(y)
    limits = list(limits) if limits is not None else [round(v, 2) for v in np.arange(0.5, 1.0, 0.025)]
    pick = proba.argmax(axis=1) if predicted is None else np.asarray(predicted, dtype=int)
    conf, correct = proba[np.arange(len(pick)), pick], pick == y
    cov, acc = [], []
    for t in limits:
        m = conf >= t
        cov.append(round(float(m.mean()), 4) if len(m) else 0.0)
        acc.append(round(float(correct[m].mean()), 4) if m.any() else None)
    return {"limit": [float(t) for t in limits], "coverage": cov, "accuracy": acc}


def verdict(label: str | None, confidence: float | None, reasons: Sequence[str], score: float | None,
            min_confidence: float) -> str | None:
    """The answer to give: ``not_brain_mri`` (a rule failed), ``unfamiliar`` (``score > 1``), ``uncertain``
    (``confidence < min_confidence``) or the class ``label``."""
    if label is None:
        return None
    if reasons:
        return NOT_BRAIN
    if score is not None and score > 1.0:
        return UNFAMILIAR
    if confidence is not None and confidence < min_confidence:
        return UNCERTAIN
    return label
