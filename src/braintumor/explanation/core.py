"""The explanation API: :func:`explain` / :func:`explain_batch` -> :class:`Explanation` (map, figure, files).

Images go through the run's own :class:`~braintumor.preprocess.Preprocessor`; the map is computed at the
prepared-image resolution, for the predicted class (the Predictor's decision, threshold included) unless a
``target`` class is given.

Example:
    >>> from braintumor.explanation import explain
    >>> ex = explain("runs/demo", "scan.png", method="layercam")     # doctest: +SKIP
    >>> ex.label, round(ex.probability, 2), ex.heatmap.shape          # doctest: +SKIP
    ('yes', 0.97, (224, 224))
    >>> ex.save("out", "scan")                                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.read import read_image
from ..errors import UsageError
from ..inference import Predictor
from ..models import get_spec
from .saliency import (
    DEFAULT_METHOD,
    cam_maps,
    check_method,
    fusion_layers,
    normalise_maps,
    occlusion_maps,
    tta_side,
)

ImageLike = str | Path | np.ndarray


@dataclass
class Explanation:
    """One image's explanation.

    Attributes:
        heatmap: ``float32`` ``(S, S)`` in ``[0, 1]`` at the prepared-image size; high = important.
        image: the prepared ``uint8`` image ``(S, S, 3)`` the model saw.
        label: predicted class.
        probability: probability of the predicted class.
        probabilities: class -> probability.
        target: the class the map explains (``label`` unless asked otherwise).
        method: one of :data:`~braintumor.explanation.saliency.METHODS` (``gradcam``, ``gradcam++``, ``hirescam``,
            ``layercam``, ``layercam-last``, ``occlusion``, ``seg``).
        source: the file the image came from (``None`` for arrays).
        verdict: the input check's verdict (:mod:`braintumor.ood`): the label, ``not_brain_mri``, ``unfamiliar``
            or ``uncertain`` (``None``: not checked). For a rejected input (:attr:`withheld`) the map explains
            nothing about a tumour: :meth:`figure` shows the refusal instead of the map, and ``braintumor
            explain`` writes no map for it.
        ood_reasons: the rules the input failed.

    In Jupyter it displays as its :meth:`figure` (original | heatmap | overlay).

    Example:
        >>> ex = explain("runs/demo", "scan.png")                      # doctest: +SKIP
        >>> ex                                                         # doctest: +SKIP
        Explanation(label='yes', probability=0.970, target='yes', method='layercam-tta', heatmap=(224, 224))
        >>> ex.overlay().shape                                         # doctest: +SKIP
        (224, 224, 3)
    """

    heatmap: np.ndarray
    image: np.ndarray
    label: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)
    target: str = ""
    method: str = DEFAULT_METHOD
    source: str | None = None
    verdict: str | None = None
    ood_reasons: list[str] = field(default_factory=list)

    @property
    def withheld(self) -> bool:
        """Whether the input check rejected the image (``not_brain_mri`` or ``unfamiliar``): no explanation."""
        from ..ood import NOT_BRAIN, UNFAMILIAR

        return self.verdict in (NOT_BRAIN, UNFAMILIAR)

    def __repr__(self) -> str:
        return (f"Explanation(label={self.label!r}, probability={self.probability:.3f}, target={self.target!r}, "
                f"method={self.method!r}, heatmap={self.heatmap.shape})")

    def _repr_html_(self) -> str:
        from ..display import figure_html

        return figure_html(self.figure())

    def coloured(self, cmap: str = "jet") -> np.ndarray:
        """The heatmap as an ``uint8`` RGB image."""
        import matplotlib

        rgb = matplotlib.colormaps[cmap](np.clip(self.heatmap, 0, 1))[..., :3]
        return np.round(rgb * 255).astype(np.uint8)

    def overlay(self, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
        """The heatmap blended over the prepared image: ``uint8`` ``(S, S, 3)``."""
        if not 0 <= alpha <= 1:
            raise UsageError(f"alpha must be in [0, 1], got {alpha}")
        out = (1 - alpha) * self.image.astype(np.float32) + alpha * self.coloured(cmap).astype(np.float32)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    def title(self) -> str:
        t = f"predicted {self.label} (p = {self.probability:.3f})"
        if self.target != self.label:
            t += f"; map explains {self.target} (p = {self.probabilities.get(self.target, float('nan')):.3f})"
        return t

    def figure(self, alpha: float = 0.45):
        """A 3-panel matplotlib ``Figure``: original | heatmap | overlay, titled with the prediction.

        For an input the check rejected (:attr:`withheld`): the prepared image and the reason, no map.
        """
        from matplotlib.figure import Figure

        from ..display import plot_text

        if self.withheld:
            from ..ood import VERDICT_TEXT

            fig = Figure(figsize=(5.5, 4.2), layout="constrained")
            ax = fig.subplots(1, 1)
            ax.imshow(self.image)
            ax.set_axis_off()
            why = plot_text("; ".join(self.ood_reasons) or VERDICT_TEXT[self.verdict])
            name = f"{plot_text(Path(self.source).name)}: " if self.source else ""
            fig.suptitle(f"{name}{self.verdict}: no explanation\n{why}", fontsize=10)
            return fig
        fig = Figure(figsize=(10.5, 3.9), layout="constrained")
        axes = fig.subplots(1, 3)
        names = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM",
                 "layercam": "LayerCAM (multi-layer)", "layercam-last": "LayerCAM (last layer)",
                 "layercam-tta": "LayerCAM (multi-layer, 1.5x + mirror)",
                 "occlusion": "occlusion", "seg": "tumour map"}
        axes[0].imshow(self.image)
        axes[0].set_title("prepared image")
        im = axes[1].imshow(self.heatmap, cmap="jet", vmin=0, vmax=1)
        axes[1].set_title(plot_text(f"{names.get(self.method, self.method)} ({self.target})"))
        fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02, label="importance")
        axes[2].imshow(self.overlay(alpha))
        axes[2].set_title("overlay")
        for ax in axes:
            ax.set_axis_off()
        name = f"{Path(self.source).name}: " if self.source else ""
        fig.suptitle(plot_text(name + self.title()), fontsize=11)  # any file name, shown as text
        return fig

    def save(self, out_dir: str | Path, stem: str, dpi: int = 100) -> dict[str, Path]:
        """Write ``<stem>.png`` (figure), ``<stem>_overlay.png`` and ``<stem>_heatmap.npy``; return the paths."""
        from PIL import Image

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"figure": out / f"{stem}.png", "overlay": out / f"{stem}_overlay.png",
                 "heatmap": out / f"{stem}_heatmap.npy"}
        self.figure().savefig(paths["figure"], dpi=dpi)
        Image.fromarray(self.overlay()).save(paths["overlay"])
        np.save(paths["heatmap"], self.heatmap.astype(np.float32))
        return paths


def as_predictor(model_or_run) -> Predictor:
    """A :class:`Predictor` from a Predictor, a run folder, or anything with ``.predictor()`` (a TrainResult)."""
    if getattr(model_or_run, "preprocessor", None) is not None and hasattr(model_or_run, "proba_prepared"):
        if getattr(model_or_run, "model", None) is None:
            raise UsageError("explanations need the torch model of a run folder; an .onnx model has no gradients")
        return model_or_run
    if isinstance(model_or_run, (str, Path)):
        return Predictor.from_run(model_or_run)
    if callable(getattr(model_or_run, "predictor", None)):
        return model_or_run.predictor()
    raise UsageError(f"explain needs a run folder or a Predictor, got {type(model_or_run).__name__}")


def target_layer(predictor: Predictor) -> str:
    """The registry's Grad-CAM layer of the predictor's model (``backbone`` when the model is unknown)."""
    name = predictor.metadata.get("model")
    return get_spec(name).target_layer if name else "backbone"


def feature_layers(predictor: Predictor) -> tuple[str, ...]:
    """The registry's backbone feature maps (fine to coarse, the last is :func:`target_layer`) of the model."""
    name = predictor.metadata.get("model")
    if not name:
        return ("backbone",)
    spec = get_spec(name)
    layers = tuple(getattr(spec, "feature_layers", ()) or ())
    return layers if layers and layers[-1] == spec.target_layer else (*layers, spec.target_layer)


def cam_layers(predictor: Predictor, method: str) -> list[str]:
    """The layers ``method`` reads: the fused stack (stride >= 8) for ``layercam``, else the target layer."""
    if check_method(method) == "layercam":
        return fusion_layers(predictor.model, feature_layers(predictor), predictor.preprocessor.img_size)
    return [target_layer(predictor)]


NO_DECODER = "this run has no tumour-map decoder: train it with --masks DIR to use --method seg"


def load_image(image: ImageLike) -> np.ndarray:
    """A path (read with :func:`read_image`) or an array -> ``uint8`` ``(H, W, 3)``."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise UsageError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UsageError(f"image arrays must be (H, W, 3) or (H, W), got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def resolve_targets(predictor: Predictor, proba: np.ndarray, target: str | int | None) -> list[int]:
    """Class index to explain per image: the predicted class, or ``target`` (a class name or index)."""
    if target is None:
        return [predictor.classes.index(lab) for lab in predictor.labels_from_proba(proba)]
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not 0 <= int(target) < len(predictor.classes):
            raise UsageError(f"target index {target} out of range for classes {predictor.classes}")
        return [int(target)] * len(proba)
    if str(target) not in predictor.classes:
        raise UsageError(f"unknown target class '{target}'; the model's classes are {predictor.classes}")
    return [predictor.classes.index(str(target))] * len(proba)


def heatmaps(predictor: Predictor, prepared: np.ndarray, class_idx: Sequence[int], method: str = DEFAULT_METHOD,
             batch_size: int = 16, originals: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Maps ``(N, S, S)`` for prepared ``uint8`` images and the given class indices (see :mod:`.saliency`).

    ``method="seg"`` returns the run's tumour-map decoder output (probabilities in ``[0, 1]``, the same map
    whatever the class); it raises :class:`UsageError` for a run trained without masks. ``method="layercam-tta"``
    needs ``originals``: the decoded images ``prepared`` was made from, in the same order (it prepares them again
    at a larger side); :class:`UsageError` without them.
    """
    method = check_method(method)
    prepared = np.asarray(prepared)
    if method == "seg" and not getattr(predictor, "has_tumour_map", False):
        raise UsageError(NO_DECODER)
    if method == "layercam-tta" and (originals is None or len(originals) != len(prepared)):
        raise UsageError("--method layercam-tta needs the original images (it prepares them again at a larger "
                         "side); explain files or arrays, not prepared images")
    if len(prepared) == 0:
        s = predictor.preprocessor.img_size
        return np.zeros((0, s, s), np.float32)
    if method == "seg":
        out = [np.asarray(predictor.tumour_maps_prepared(prepared[i:i + batch_size]), np.float32)
               for i in range(0, len(prepared), batch_size)]
        return np.clip(np.nan_to_num(np.concatenate(out)), 0.0, 1.0).astype(np.float32)
    if method == "occlusion":
        return occlusion_maps(predictor.proba_prepared, prepared, class_idx)
    if method == "layercam-tta":
        return _tta_maps(predictor, originals, class_idx, batch_size)
    layers = cam_layers(predictor, method)
    out = []
    for i in range(0, len(prepared), batch_size):
        out.append(_cams(predictor, prepared[i:i + batch_size], layers, list(class_idx[i:i + batch_size]), method))
    return np.concatenate(out)


def _cams(predictor: Predictor, prepared: np.ndarray, layers: list[str], class_idx: list[int], method: str
          ) -> np.ndarray:
    import torch

    x = predictor.preprocessor.normalise(prepared).to(predictor.device)
    if predictor.device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return cam_maps(predictor.model, x, layers, class_idx, method)


def _tta_maps(predictor: Predictor, originals: Sequence[np.ndarray], class_idx: Sequence[int], batch_size: int
              ) -> np.ndarray:
    """``layercam-tta``: LayerCAM of each original prepared at :func:`~.saliency.tta_side` and of its mirror image,
    summed, resized to the model's side and normalised."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    side = predictor.preprocessor.img_size
    pre = dataclasses.replace(predictor.preprocessor, img_size=tta_side(side))
    layers = cam_layers(predictor, "layercam")
    out = []
    for i in range(0, len(originals), batch_size):
        x = np.stack([pre.prepare(np.asarray(o)) for o in originals[i:i + batch_size]])
        idx = list(class_idx[i:i + batch_size])
        m = _cams(predictor, x, layers, idx, "layercam")
        m = m + _cams(predictor, np.ascontiguousarray(x[:, :, ::-1]), layers, idx, "layercam")[:, :, ::-1]
        m = F.interpolate(torch.from_numpy(np.ascontiguousarray(m))[:, None], size=(side, side), mode="bilinear",
                          align_corners=False)[:, 0].numpy()
        out.append(normalise_maps(m))
    return np.concatenate(out)


def explain_prepared(predictor: Predictor, prepared: np.ndarray, method: str = DEFAULT_METHOD,
                     target: str | int | None = None, sources: Sequence[str | None] | None = None,
                     batch_size: int = 16, stats: Sequence | None = None,
                     originals: Sequence[np.ndarray] | None = None) -> list[Explanation]:
    """Explanations for already prepared ``uint8`` images ``(N, S, S, 3)``.

    Each carries the input check's verdict (``stats``: the decoded images' :class:`~braintumor.ood.ImageStats`
    for the rules; without them only the feature distance is checked). ``originals``: the decoded images they
    were prepared from (``layercam-tta`` needs them).
    """
    method = check_method(method)
    prepared = np.asarray(prepared)
    outputs = predictor.outputs_prepared(prepared, batch_size=batch_size)
    proba = outputs.proba
    labels = predictor.labels_from_proba(proba)
    checks = predictor.assess(proba, labels, stats, outputs.scores)
    idx = resolve_targets(predictor, proba, target)
    maps = heatmaps(predictor, prepared, idx, method, batch_size, originals)
    sources = list(sources) if sources is not None else [None] * len(prepared)
    out = []
    for i in range(len(prepared)):
        probs = {c: float(v) for c, v in zip(predictor.classes, proba[i], strict=True)}
        out.append(Explanation(heatmap=maps[i], image=prepared[i], label=labels[i], probability=probs[labels[i]],
                               probabilities=probs, target=predictor.classes[idx[i]], method=method,
                               source=sources[i], verdict=checks[i].verdict,
                               ood_reasons=list(checks[i].ood_reasons)))
    return out


def explain_batch(predictor, images: Sequence[ImageLike], method: str = DEFAULT_METHOD,
                  target: str | int | None = None, batch_size: int = 16) -> list[Explanation]:
    """Explain several images (paths or arrays) in batches; raises :class:`UnreadableImageError` on a bad file.

    Example:
        >>> exs = explain_batch(Predictor.from_run("runs/demo"), ["a.png", "b.png"])   # doctest: +SKIP
    """
    predictor = as_predictor(predictor)
    raw = [load_image(im) for im in images]
    prepared = (np.stack([predictor.preprocessor.prepare(r) for r in raw]) if raw else
                np.zeros((0, predictor.preprocessor.img_size, predictor.preprocessor.img_size, 3), np.uint8))
    sources = [str(im) if isinstance(im, (str, Path)) else None for im in images]
    from ..ood import image_stats

    return explain_prepared(predictor, prepared, method, target, sources, batch_size, [image_stats(r) for r in raw],
                            originals=raw)


def explain(model_or_run, image: ImageLike, method: str = DEFAULT_METHOD, target: str | int | None = None
            ) -> Explanation:
    """Explain one image.

    Args:
        model_or_run: a run folder or a :class:`~braintumor.inference.Predictor`.
        image: a file path or an ``(H, W, 3)`` ``uint8`` array (any size; prepared like in training).
        method: :data:`~braintumor.explanation.saliency.DEFAULT_METHOD` unless given; see
            :data:`~braintumor.explanation.saliency.METHODS` and :mod:`braintumor.explanation.saliency`.
        target: class to explain (name or index); default the predicted class.

    Example:
        >>> ex = explain("runs/demo", "scan.png")            # doctest: +SKIP
        >>> ex.figure().savefig("scan_explained.png")         # doctest: +SKIP
    """
    return explain_batch(model_or_run, [image], method, target)[0]
