"""ResNet-9: the residual net of the DAWNBench speed records (Page, 2018), sized by one width knob."""

from __future__ import annotations

import torch
from torch import nn

from cnn_train.models.registry import register_model


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(channels, channels), *_conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Sequential):
    """prep → (conv, pool, residual) → (conv, pool) → (conv, pool, residual) → global max-pool → linear.

    Eight 3×3 convolutions and a classifier; pooling early keeps most of the compute at small maps, which
    is what makes it the fastest net here to a given Fashion-MNIST accuracy on a CPU. Logits are scaled
    down (×0.125) as in the original, which lets one-cycle SGD use a large peak learning rate.
    """

    def __init__(
        self, num_classes: int, in_channels: int, width: int = 64, logit_scale: float = 0.125
    ) -> None:
        w = width
        super().__init__(
            *_conv_bn(in_channels, w),
            *_conv_bn(w, 2 * w),
            nn.MaxPool2d(2),
            _Residual(2 * w),
            *_conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),
            *_conv_bn(4 * w, 8 * w),
            nn.MaxPool2d(2),
            _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(8 * w, num_classes),
        )
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.logit_scale


@register_model("resnet9")
def resnet9(num_classes: int, in_channels: int, image_size: int, width: int = 64) -> nn.Module:
    """ResNet-9 at any input of 8 px or more (three 2× pools, then a global pool); `width` = first layer's channels."""
    return ResNet9(num_classes, in_channels, width)
