"""ResNet-18/34/50/101 and ResNeXt-50 (32×4d)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models as tvm

from cnn_train.models.common import SMALL_INPUT, conv_like
from cnn_train.models.registry import register_model


def _resnet(
    ctor: Callable[..., tvm.ResNet], num_classes: int, in_channels: int, image_size: int
) -> nn.Module:
    model = ctor(num_classes=num_classes)
    if image_size < SMALL_INPUT:
        # CIFAR-style stem (He et al. 2016, section 4.2): 3×3 stride 1 and no max-pool.
        model.conv1 = conv_like(model.conv1, in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = conv_like(model.conv1, in_channels)
    return model


def _register(name: str, ctor: Callable[..., tvm.ResNet]) -> None:
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return _resnet(ctor, num_classes, in_channels, image_size)

    build.__doc__ = f"torchvision's {name} with a stem fitted to the input."
    register_model(name)(build)


for _name, _ctor in {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
    "resnext50_32x4d": tvm.resnext50_32x4d,
}.items():
    _register(_name, _ctor)
