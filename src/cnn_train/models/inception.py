"""GoogLeNet (Inception v1) and Inception v3, without the auxiliary classifiers."""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from cnn_train.models.common import SMALL_INPUT, conv_like
from cnn_train.models.registry import register_model


@register_model("googlenet")
def googlenet(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.2) -> nn.Module:
    """GoogLeNet; below 64 px a 3×3 stride-1 stem and one pool fewer keep inception 3 at 14×14 for 28 px."""
    model = tvm.googlenet(
        num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True, dropout=dropout
    )
    if image_size < SMALL_INPUT:
        model.conv1.conv = conv_like(model.conv1.conv, in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool2 = nn.Identity()
    else:
        model.conv1.conv = conv_like(model.conv1.conv, in_channels)
    return model


@register_model("inception_v3")
def inception_v3(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.5) -> nn.Module:
    """Inception v3; its unpadded stem needs 75 px, so small images are resized up to that (model config)."""
    model = tvm.inception_v3(
        num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True, dropout=dropout
    )
    model.Conv2d_1a_3x3.conv = conv_like(model.Conv2d_1a_3x3.conv, in_channels)
    return model
