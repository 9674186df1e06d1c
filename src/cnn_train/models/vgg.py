"""VGG-11 and VGG-16, with or without batch normalisation."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

from cnn_train.models.common import SMALL_INPUT, conv_like
from cnn_train.models.registry import register_model


def _vgg(
    plain: Callable[..., tvm.VGG],
    with_bn: Callable[..., tvm.VGG],
    num_classes: int,
    in_channels: int,
    image_size: int,
    batch_norm: bool,
    dropout: float,
) -> nn.Module:
    small = image_size < SMALL_INPUT
    # Built without memory or values: a small input replaces torchvision's 25088×4096 first FC layer, whose
    # default initialisation alone took seconds; everything is initialised once, below, as torchvision does.
    with torch.device("meta"):
        model = (with_bn if batch_norm else plain)(num_classes=num_classes, dropout=dropout)
        model.features[0] = conv_like(model.features[0], in_channels)
        if small:
            # Five 2× pools would shrink a 28 px image below one pixel: drop the last ones instead.
            keep = int(math.log2(image_size))
            pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
            for i in pools[keep:]:
                model.features[i] = nn.Identity()
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            model.classifier[0] = nn.Linear(512, model.classifier[0].out_features)
    model.to_empty(device="cpu")
    for m in model.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    if small:
        model.classifier[0].reset_parameters()  # the replacement layer keeps torch's default initialisation
    return model


@register_model("vgg11")
def vgg11(
    num_classes: int, in_channels: int, image_size: int, batch_norm: bool = True, dropout: float = 0.5
) -> nn.Module:
    """VGG-11 (configuration A)."""
    return _vgg(tvm.vgg11, tvm.vgg11_bn, num_classes, in_channels, image_size, batch_norm, dropout)


@register_model("vgg16")
def vgg16(
    num_classes: int, in_channels: int, image_size: int, batch_norm: bool = True, dropout: float = 0.5
) -> nn.Module:
    """VGG-16 (configuration D)."""
    return _vgg(tvm.vgg16, tvm.vgg16_bn, num_classes, in_channels, image_size, batch_norm, dropout)
