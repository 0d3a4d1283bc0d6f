"""One registry: model name -> builder, input normalisation, Grad-CAM target layer, pretrained source.

Every model is a :class:`Classifier`: ``backbone`` (image -> feature map), global average pooling, and the
notebook's head ``Linear(F, 256) -> ReLU -> Dropout(0.5) -> Linear(256, n_classes)``. One softmax head serves
every class count (two logits for binary problems). The Grad-CAM target layer of every registered model is the
module named in :attr:`ModelSpec.target_layer` (the backbone's last activation).

Example:
    >>> from braintumor.models import build_model, get_spec
    >>> model = build_model("cnn", num_classes=2)
    >>> get_spec("cnn").target_layer
    'backbone'
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
            from .segmentation import forward_with_map

            return forward_with_map(self, x)
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
        from .segmentation import forward_with_map

        if getattr(self, "decoder", None) is None:
            raise UsageError("this model has no tumour-map decoder (train it with masks)")
        return forward_with_map(self, x)


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


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; :class:`UsageError` naming the choices when unknown."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown model '{name}'; choose one of: {', '.join(available_models())}") from None


def available_models() -> list[str]:
    """Names of the registered models (the choices of ``--model``).

    Example:
        >>> from braintumor import available_models
        >>> available_models()  # doctest: +NORMALIZE_WHITESPACE
        ['cnn', 'efficientnet-lite0', 'efficientnet-lite1', 'efficientnet-lite2', 'efficientnet-b0', 'resnet18',
         'densenet121']
    """
    _ensure_loaded()
    return list(_REGISTRY)


def build_model(name: str, num_classes: int, pretrained: bool | None = None, img_size: int = 224) -> Classifier:
    """Build a registered model. ``pretrained=None`` uses the model's default.

    Example:
        >>> import torch
        >>> from braintumor import build_model
        >>> model = build_model("cnn", num_classes=2, img_size=64)
        >>> model(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 2])
    """
    spec = get_spec(name)
    if pretrained is None:
        pretrained = spec.pretrained_default
    return spec.build(num_classes, bool(pretrained), img_size)


def _ensure_loaded() -> None:
    if not _REGISTRY:
        from . import cnn, efficientnet_lite, monai_nets  # noqa: F401  (they register themselves)
