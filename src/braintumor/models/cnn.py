"""``cnn``: a small CNN trained from scratch (stride-2 stem, conv blocks with max-pooling and dropout).

Its Grad-CAM layer (the backbone output) keeps a quarter of the input side: 24x24 at 96 px, 56x56 at 224 px, one
map cell per 4 input pixels, and each cell sees a 47-px neighbourhood. Explanations need both: a Grad-CAM map is
that grid bilinearly upsampled, so its peak can only fall on a cell centre, and a cell whose receptive field covers
the whole image lights up wherever the tumour is. The earlier layout (four pooling blocks, 1/16 of the side, 135-px
receptive field) gave 4x4 maps at 64 px whose peak fell inside the lesion for 26% of tumour phantoms; one pooling
block less (1/8, 67 px) gave 77-89% at 96 px; this layout 94% (``benchmarks/explain_quality.py``).
"""

from __future__ import annotations

from torch import nn

from .base import SYMMETRIC_MEAN, SYMMETRIC_STD, Classifier, ModelSpec, register


def _block(cin: int, cout: int, dropout: float, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    ]
    if pool:
        layers += [nn.MaxPool2d(2), nn.Dropout2d(dropout)]
    return nn.Sequential(*layers)


WIDTHS = (32, 64, 96)
POOL = (True, False, False)


def small_cnn_backbone(widths=WIDTHS, pool=POOL, dropout: float = 0.1) -> nn.Sequential:
    """Stride-2 5x5 stem, then blocks of two 3x3 conv/BN/ReLU; ``pool[i]``: block ``i`` ends with max-pooling.

    Output: ``widths[-1]`` channels at ``1 / 2 ** (1 + sum(pool))`` of the input side (1/4 with the defaults).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
    ]
    cin = widths[0]
    for w, p in zip(widths, pool, strict=True):
        layers.append(_block(cin, w, dropout, p))
        cin = w
    return nn.Sequential(*layers)


def build_cnn(num_classes: int, pretrained: bool = False, img_size: int = 224) -> Classifier:
    if pretrained:
        from ..errors import UsageError

        raise UsageError("model 'cnn' is trained from scratch: it has no pretrained weights")
    return Classifier(small_cnn_backbone(), WIDTHS[-1], num_classes)


register(ModelSpec(
    name="cnn", build=build_cnn, mean=SYMMETRIC_MEAN, std=SYMMETRIC_STD, target_layer="backbone",
    feature_layers=("backbone.3", "backbone"), pretrained_source=None, pretrained_default=False,
    description="small CNN from scratch (stride-2 stem, 3 conv blocks, 1/4-resolution Grad-CAM maps, GAP, "
                "Dense 256, Dropout 0.5)",
))
