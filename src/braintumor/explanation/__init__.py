"""Explanations users can trust: gradient CAMs (Grad-CAM, Grad-CAM++, HiResCAM, multi-layer LayerCAM), occlusion
and a trained tumour-map decoder, measured for localisation and faithfulness.

* :func:`explain` / :func:`explain_batch` -> :class:`Explanation` (``.heatmap``, ``.overlay()``, ``.figure()``,
  ``.save()``), through the run's own preprocessing, at the registry's layers (:data:`METHODS`,
  :data:`DEFAULT_METHOD`).
* Metrics: :func:`pointing_game` (strict or with a tolerance), :func:`heatmap_iou`, :func:`best_dice`,
  :func:`peak_outside_brain`, :func:`deletion_insertion`, :func:`randomisation_check`, and
  :func:`evaluate_explanations` over files with lesion masks (overall and per class).

Example:
    >>> from braintumor.explanation import explain
    >>> ex = explain("runs/demo", "scan.png", method="layercam")     # doctest: +SKIP
    >>> ex.figure().savefig("scan_layercam.png")                      # doctest: +SKIP
"""

from .core import (
    Explanation,
    as_predictor,
    cam_layers,
    explain,
    explain_batch,
    explain_prepared,
    feature_layers,
    heatmaps,
    target_layer,
)
from .metrics import (
    ExplanationReport,
    best_dice,
    deletion_insertion,
    dice_curve,
    evaluate_explanations,
    find_mask,
    head_masks,
    heatmap_dice,
    heatmap_iou,
    load_mask,
    peak_outside_brain,
    pointing_game,
    prepare_mask,
    random_maps,
    randomisation_check,
    randomised_predictor,
    spearman,
    standard_tolerance,
)
from .saliency import (
    DEFAULT_METHOD,
    METHODS,
    blur_baseline,
    cam_maps,
    check_method,
    fuse_maps,
    layer_maps,
    normalise_maps,
    occlusion_maps,
)

__all__ = [
    "DEFAULT_METHOD", "METHODS", "Explanation", "ExplanationReport", "as_predictor", "best_dice", "blur_baseline",
    "cam_layers", "cam_maps", "check_method", "deletion_insertion", "dice_curve", "evaluate_explanations",
    "explain", "explain_batch", "explain_prepared", "feature_layers", "find_mask", "fuse_maps", "head_masks",
    "heatmap_dice", "heatmap_iou", "heatmaps", "layer_maps", "load_mask", "normalise_maps", "occlusion_maps",
    "peak_outside_brain", "pointing_game", "prepare_mask", "random_maps", "randomisation_check",
    "randomised_predictor", "spearman", "standard_tolerance", "target_layer",
]
