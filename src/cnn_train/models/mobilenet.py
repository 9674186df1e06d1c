"""MobileNet v2 and MobileNet v3 (small)."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from cnn_train.models.common import SMALL_INPUT, conv_like
from cnn_train.models.registry import register_model


def _fit_stem(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    stem: nn.Conv2d = model.features[0][0]
    stride = 1 if image_size < SMALL_INPUT else None  # keep 2×2 maps at the end of a 28 px image
    model.features[0][0] = conv_like(stem, in_channels, stride=stride)
    return model


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.2) -> nn.Module:
    """MobileNet v2 (inverted residuals, linear bottlenecks)."""
    return _fit_stem(tvm.mobilenet_v2(num_classes=num_classes, dropout=dropout), in_channels, image_size)


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(
    num_classes: int, in_channels: int, image_size: int, dropout: float = 0.2
) -> nn.Module:
    """MobileNet v3 small (squeeze-excitation, hard-swish)."""
    return _fit_stem(
        tvm.mobilenet_v3_small(num_classes=num_classes, dropout=dropout), in_channels, image_size
    )
