"""What every model is: :class:`Classifier` (backbone, pooling, head), :class:`ModelSpec` and :func:`register`.

The model files (:mod:`~braintumor.models.cnn`, :mod:`~braintumor.models.efficientnet_lite`,
:mod:`~braintumor.models.monai_nets`) import this module and register themselves; :mod:`braintumor.models.registry`
looks models up and builds them. Nothing here imports a model file, so the two never import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYMMETRIC_MEAN = (0.5, 0.5, 0.5)  # maps [0, 1] to [-1, 1]
SYMMETRIC_STD = (0.5, 0.5, 0.5)


class Classifier(nn.Module):
    """``backbone`` -> global average pooling -> dense head. ``forward`` returns logits ``(N, n_classes)``.

    With ``frozen_backbone = True`` (the first fine-tuning phase) the backbone runs without building a graph,
    which roughly halves the cost of a training step; gradients then reach the head only.
    """

    frozen_backbone: bool = False

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, hidden: int = 256,
                 dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(1), nn.Linear(num_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.__dict__.get("emit_map", False):  # training with masks: (logits, tumour-map logits), see below
            return _MAP_FORWARD[0](self, x)
        return self.logits_of(x)

    def logits_of(self, x: torch.Tensor) -> torch.Tensor:
        """The classification path: backbone, pooling, head -> logits (what ``forward`` returns by default)."""
        if self.frozen_backbone and self.training:
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        return self.head(self.pool(feats))

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, tumour-map logits (N, 1, S, S))`` when a decoder is attached
        (:func:`~braintumor.models.segmentation.attach_decoder`). Setting ``model.emit_map = True`` makes
        ``forward`` return the same pair (so a DistributedDataParallel wrapper sees both outputs)."""
        if getattr(self, "decoder", None) is None:
            raise UsageError("this model has no tumour-map decoder (train it with masks)")
        return _MAP_FORWARD[0](self, x)


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the package needs to know about a model.

    Attributes:
        name: registry name (``--model``).
        build: ``build(num_classes, pretrained, img_size) -> Classifier``.
        mean, std: input normalisation on ``[0, 1]`` pixels the backbone expects.
        target_layer: dotted module name for Grad-CAM (the backbone output, the coarsest feature map).
        feature_layers: dotted module names of the backbone's feature maps from fine to coarse (strides 4, 8, 16
            and 32 of the input where the network has them; the last is ``target_layer``): the layer stack that
            multi-layer CAMs fuse and that a tumour-map decoder (:mod:`braintumor.models.segmentation`) taps.
        pretrained_source: where pretrained weights come from (``"bundled"``, a URL, or ``None``).
        pretrained_default: use pretrained weights unless told otherwise.
        description: one line for ``braintumor models``.
    """

    name: str
    build: Callable[[int, bool, int], Classifier]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    target_layer: str = "backbone"
    feature_layers: tuple[str, ...] = ("backbone",)
    pretrained_source: str | None = None
    pretrained_default: bool = False
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (third-party code may register its own)."""
    _REGISTRY[spec.name] = spec
    return spec


#: ``forward_with_map(model, x)`` of :mod:`braintumor.models.segmentation`, set when that module is imported
#: (attaching a decoder imports it, so a model with a decoder always finds it here).
_MAP_FORWARD: list[Callable] = [None]


def use_map_forward(fn: Callable) -> None:
    """Register the function that runs a model with its tumour-map decoder (called by the segmentation module)."""
    _MAP_FORWARD[0] = fn
