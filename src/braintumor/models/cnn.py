"""``cnn``: a small CNN trained from scratch (stride-2 stem, conv blocks with max-pooling and dropout)."""

from __future__ import annotations

from torch import nn

from .registry import SYMMETRIC_MEAN, SYMMETRIC_STD, Classifier, ModelSpec, register


def _block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Dropout2d(dropout),
    )


def small_cnn_backbone(widths=(32, 64, 128, 256), dropout: float = 0.1) -> nn.Sequential:
    """Stride-2 5x5 stem, then conv blocks that each halve the resolution. Output: ``widths[-1]`` channels."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
    ]
    cin = widths[0]
    for i, w in enumerate(widths):
        # The last block keeps its resolution so Grad-CAM maps stay reasonably fine.
        blk = _block(cin, w, dropout)
        if i == len(widths) - 1:
            blk = nn.Sequential(*[m for m in blk if not isinstance(m, (nn.MaxPool2d, nn.Dropout2d))])
        layers.append(blk)
        cin = w
    return nn.Sequential(*layers)


def build_cnn(num_classes: int, pretrained: bool = False, img_size: int = 224) -> Classifier:
    if pretrained:
        from ..errors import UsageError

        raise UsageError("model 'cnn' is trained from scratch: it has no pretrained weights")
    return Classifier(small_cnn_backbone(), 256, num_classes)


register(ModelSpec(
    name="cnn", build=build_cnn, mean=SYMMETRIC_MEAN, std=SYMMETRIC_STD, target_layer="backbone",
    pretrained_source=None, pretrained_default=False,
    description="small CNN from scratch (stride-2 stem, 4 conv blocks, GAP, Dense 256, Dropout 0.5)",
))
