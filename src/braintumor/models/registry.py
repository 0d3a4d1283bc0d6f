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

from ..errors import UsageError
from .base import (  # noqa: F401  (re-exported: the names every model file used to import from here)
    _REGISTRY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SYMMETRIC_MEAN,
    SYMMETRIC_STD,
    Classifier,
    ModelSpec,
    register,
)


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
