"""Explanations users can trust: Grad-CAM, Grad-CAM++ and occlusion heatmaps, measured for localisation and
faithfulness.

* :func:`explain` / :func:`explain_batch` -> :class:`Explanation` (``.heatmap``, ``.overlay()``, ``.figure()``,
  ``.save()``), through the run's own preprocessing, at the registry's Grad-CAM layer.
* Metrics: :func:`pointing_game`, :func:`heatmap_iou`, :func:`deletion_insertion`, :func:`randomisation_check`,
  and :func:`evaluate_explanations` over files with lesion masks.

Example:
    >>> from braintumor.explain import explain
    >>> ex = explain("runs/demo", "scan.png", method="gradcam++")    # doctest: +SKIP
    >>> ex.figure().savefig("scan_gradcampp.png")                     # doctest: +SKIP
"""

from .core import Explanation, as_predictor, explain, explain_batch, explain_prepared, heatmaps, target_layer
from .metrics import (
    ExplanationReport,
    deletion_insertion,
    evaluate_explanations,
    find_mask,
    heatmap_iou,
    load_mask,
    pointing_game,
    prepare_mask,
    random_maps,
    randomisation_check,
    randomised_predictor,
    spearman,
)
from .saliency import METHODS, blur_baseline, cam_maps, normalise_maps, occlusion_maps

__all__ = [
    "METHODS", "Explanation", "ExplanationReport", "as_predictor", "blur_baseline", "cam_maps",
    "deletion_insertion", "evaluate_explanations", "explain", "explain_batch", "explain_prepared", "find_mask",
    "heatmap_iou", "heatmaps", "load_mask", "normalise_maps", "occlusion_maps", "pointing_game", "prepare_mask",
    "random_maps", "randomisation_check", "randomised_predictor", "spearman", "target_layer",
]
