"""A tumour-map decoder on a classifier's backbone: class probabilities and a tumour probability map in one pass.

Trained with lesion masks (``braintumor train --masks DIR``), the decoder taps the backbone's feature maps listed in
the registry (:attr:`~braintumor.models.registry.ModelSpec.feature_layers`, strides 4 to 32) and fuses them top-down,
FPN-style: each tap goes through a 1x1 convolution to ``width`` channels, the coarser sum is upsampled and added to
the next finer tap, two 3x3 conv/BN/ReLU layers refine the finest level (stride 4 on EfficientNet-Lite) and a 1x1
convolution gives one tumour logit per cell, upsampled bilinearly to the input. About 65 k parameters on
EfficientNet-Lite0 at ``width=32`` (+10% of its CPU time at 224 px); the classifier's own path (backbone,
pooling, head) is unchanged, so ``model(x)`` still returns logits and every classification tool works as before.

The loss (:func:`mask_loss`): binary cross-entropy over every pixel of each image that has a mask, plus a soft
Dice term over the images whose mask is not empty (an empty mask, e.g. a no-tumour image, only gets the
cross-entropy).

Example:
    >>> import torch
    >>> from braintumor.models import build_model
    >>> from braintumor.models.segmentation import attach_decoder
    >>> model = attach_decoder(build_model("cnn", 2), "cnn", img_size=64).eval()
    >>> logits, maps = model.forward_with_map(torch.zeros(2, 3, 64, 64))
    >>> tuple(logits.shape), tuple(maps.shape)
    ((2, 2), (2, 1, 64, 64))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..errors import UsageError
from .base import Classifier, use_map_forward
from .registry import get_spec


class TumourMapDecoder(nn.Module):
    """Top-down fusion of feature maps (fine -> coarse order) into one tumour logit map at the finest stride."""

    def __init__(self, in_channels: Sequence[int], width: int = 32):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.refine = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.constant_(self.out.bias, -4.0)  # start near "no tumour anywhere" (lesions are ~1% of a slice)

    def forward(self, feats: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        p = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            p = F.interpolate(p, size=f.shape[-2:], mode="bilinear", align_corners=False) + lat(f)
        logits = self.out(self.refine(p))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def _tap_hook(module: nn.Module, _inputs, output) -> None:
    """Keep a tapped layer's output while :func:`forward_with_map` runs (no closure: models stay deep-copyable)."""
    if getattr(module, "_tap_on", False):
        module._tap_out = output


def _taps(model: nn.Module) -> list[nn.Module]:
    return [model.get_submodule(n) for n in model.map_layers]


def _tapped_forward(model: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    mods = _taps(model)
    for m in mods:
        m._tap_on = True
    try:
        logits = model.logits_of(x)
        feats = [m._tap_out for m in mods]
    finally:
        for m in mods:
            m._tap_on = False
            m.__dict__.pop("_tap_out", None)
    return logits, feats


def attach_decoder(model: Classifier, model_name: str, img_size: int = 224, width: int = 32,
                   layers: Sequence[str] | None = None) -> Classifier:
    """Give ``model`` a :class:`TumourMapDecoder` on its registry feature layers; returns the same model.

    Adds ``model.decoder`` (a submodule: its weights are in the state dict), ``model.map_layers`` and
    ``model.decoder_config``; ``model.forward_with_map(x)`` then gives ``(logits, map_logits)`` and ``model(x)``
    is unchanged. The decoder's input widths are found with one forward pass at ``img_size``.
    """
    layers = tuple(layers or get_spec(model_name).feature_layers)
    for n in layers:
        try:
            model.get_submodule(n).register_forward_hook(_tap_hook)
        except AttributeError:
            raise UsageError(f"layer '{n}' not found in {type(model).__name__}") from None
    model.map_layers = layers
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            _logits, feats = _tapped_forward(model, torch.zeros(1, 3, img_size, img_size, device=p.device))
        channels = [int(f.shape[1]) for f in feats]
    finally:
        model.train(was_training)
    model.decoder = TumourMapDecoder(channels, width).to(p.device)
    model.decoder_config = {"layers": list(layers), "width": width, "channels": channels}
    return model


def has_decoder(model: nn.Module) -> bool:
    """Whether ``model`` (or the module it wraps) carries a tumour-map decoder."""
    return getattr(getattr(model, "module", model), "decoder", None) is not None


def forward_with_map(model: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, K), tumour logits (N, 1, S, S))`` of a model with a decoder, in one backbone pass."""
    logits, feats = _tapped_forward(model, x)
    return logits, model.decoder(feats, x.shape[-2:])


use_map_forward(forward_with_map)  # Classifier.forward finds it there (models.base imports nothing of this)


class ProbabilitiesAndMap(nn.Module):
    """Export wrapper: ``x -> (class probabilities (N, K), tumour probability map (N, S, S))``.

    ``temperature`` divides the logits first (the run's calibration), as :class:`~braintumor.inference.Predictor`
    does.
    """

    def __init__(self, model: Classifier, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, maps = forward_with_map(self.model, x)
        return torch.softmax(logits / self.temperature, dim=1), torch.sigmoid(maps[:, 0])


def mask_loss(map_logits: torch.Tensor, masks: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice of tumour logits ``(N, 1, S, S)`` against ``masks`` ``(N, S, S)`` in {0, 1}.

    Only images with ``has_mask`` count; the Dice term only over those whose mask is not empty. 0 (with a
    gradient path) when no image of the batch has a mask.
    """
    sel = has_mask.bool()
    if not bool(sel.any()):
        return map_logits.sum() * 0.0
    logit = map_logits[sel, 0].float()
    target = masks[sel].float()
    bce = F.binary_cross_entropy_with_logits(logit, target)
    pos = target.flatten(1).sum(1) > 0
    if not bool(pos.any()):
        return bce
    prob = torch.sigmoid(logit[pos]).flatten(1)
    t = target[pos].flatten(1)
    dice = (2 * (prob * t).sum(1) + 1.0) / (prob.sum(1) + t.sum(1) + 1.0)
    return bce + (1.0 - dice).mean()


def dice_scores(prob: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard Dice per image of ``prob >= threshold`` against ``masks`` (both ``(N, S, S)``); 1 where both are empty."""
    pred = prob >= threshold
    t = masks.bool()
    inter = (pred & t).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + t.flatten(1).sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
