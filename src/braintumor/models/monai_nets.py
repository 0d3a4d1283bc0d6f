"""MONAI backbones: ``efficientnet-b0``, ``resnet18``, ``densenet121``.

Random initialisation by default (works offline). ``pretrained=True`` downloads ImageNet weights where there
is network, and raises :class:`PretrainedUnavailableError` with a one-line reason where there is not.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PretrainedUnavailableError
from .base import IMAGENET_MEAN, IMAGENET_STD, Classifier, ModelSpec, register

URLS = {
    "efficientnet-b0":
        "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b0-355c32eb.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
}


def download_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``name`` from its public URL (cached by torch.hub), or a clear one-line error."""
    url = URLS[name]
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, socket errors, corrupt downloads
        reason = getattr(exc, "reason", None) or exc
        raise PretrainedUnavailableError(
            f"cannot download ImageNet weights for '{name}' from {url} ({reason}); "
            f"train it without --pretrained, or use efficientnet-lite0 whose weights are bundled"
        ) from None


class _EfficientNetFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n._swish(n._bn0(n._conv_stem(n._conv_stem_padding(x))))
        x = n._blocks(x)
        return n._swish(n._bn1(n._conv_head(n._conv_head_padding(x))))


def build_efficientnet_b0(num_classes: int, pretrained: bool = False, img_size: int = 224) -> Classifier:
    from monai.networks.nets import EfficientNetBN

    net = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=1000)
    if pretrained:
        net.load_state_dict(download_state_dict("efficientnet-b0"), strict=False)
    net.set_swish(memory_efficient=False)  # exportable, and hooks see plain tensors
    net._fc = nn.Identity()
    return Classifier(_EfficientNetFeatures(net), 1280, num_classes)


def build_resnet18(num_classes: int, pretrained: bool = False, img_size: int = 224) -> Classifier:
    from monai.networks.nets import resnet18

    net = resnet18(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, num_classes=1000)
    if pretrained:
        state = download_state_dict("resnet18")
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
    backbone = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool, net.layer1, net.layer2, net.layer3,
                             net.layer4)
    return Classifier(backbone, 512, num_classes)


def build_densenet121(num_classes: int, pretrained: bool = False, img_size: int = 224) -> Classifier:
    from monai.networks.nets import DenseNet121
    from monai.networks.nets import densenet as _dn

    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=num_classes, pretrained=False)
    if pretrained:
        state = download_state_dict("densenet121")
        # Reuse MONAI's own key remapping by handing it the downloaded dict.
        orig = _dn.load_state_dict_from_url
        try:
            _dn.load_state_dict_from_url = lambda *a, **k: state
            _dn._load_state_dict(net, "densenet121", progress=False)
        finally:
            _dn.load_state_dict_from_url = orig
    backbone = nn.Sequential(net.features, nn.ReLU())
    return Classifier(backbone, 1024, num_classes)


_STACKS = {  # strides 4, 8, 16, 32 (checked by a test)
    "efficientnet-b0": ("backbone.net._blocks.1", "backbone.net._blocks.2", "backbone.net._blocks.4", "backbone"),
    "resnet18": ("backbone.4", "backbone.5", "backbone.6", "backbone"),
    "densenet121": ("backbone.0.denseblock1", "backbone.0.denseblock2", "backbone.0.denseblock3", "backbone"),
}
for _name, _build, _desc in (
    ("efficientnet-b0", build_efficientnet_b0, "MONAI EfficientNet-B0 (random init; --pretrained downloads)"),
    ("resnet18", build_resnet18, "MONAI ResNet-18 (random init; --pretrained downloads)"),
    ("densenet121", build_densenet121, "MONAI DenseNet-121 (random init; --pretrained downloads)"),
):
    register(ModelSpec(name=_name, build=_build, mean=IMAGENET_MEAN, std=IMAGENET_STD, target_layer="backbone",
                       feature_layers=_STACKS[_name],
                       pretrained_source=URLS[_name], pretrained_default=False, description=_desc))
