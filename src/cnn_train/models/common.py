"""Helpers that adapt torchvision's ImageNet networks to other channels and small inputs."""

from __future__ import annotations

from torch import nn

# Below this side an ImageNet stem (stride-2 conv + stride-2 pool) leaves too little of the image for the
# later stages, so the families swap in a small-image stem, as CIFAR ResNets do.
SMALL_INPUT = 64


def conv_like(
    conv: nn.Conv2d,
    in_channels: int,
    *,
    kernel_size: int | None = None,
    stride: int | None = None,
    padding: int | None = None,
) -> nn.Conv2d:
    """A fresh conv with `conv`'s output width, for another input channel count or a gentler stem."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size if kernel_size is not None else conv.kernel_size,  # type: ignore[arg-type]
        stride=stride if stride is not None else conv.stride,  # type: ignore[arg-type]
        padding=padding if padding is not None else conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new
