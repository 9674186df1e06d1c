"""The operations of RandAugment, TrivialAugment and AutoAugment, batched with one magnitude per image.

torchvision's functional ops take one magnitude per call, so a policy that draws per image would need one call
per image. These take a float [0, 1] batch N×C×H×W and a magnitude tensor of N values, and follow
torchvision's definitions (`transforms.v2._auto_augment`): nearest-neighbour affine warps filled with 0,
blends clamped to [0, 1]. Grey (1-channel) batches work: colour saturation leaves them unchanged, as
torchvision's `adjust_saturation` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

Op = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GREY = torch.tensor([0.2989, 0.587, 0.114])  # torchvision's rgb_to_grayscale weights


def _per_image(m: torch.Tensor) -> torch.Tensor:
    return m.view(-1, 1, 1, 1)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sample x at theta @ (output coordinates), normalised to [-1, 1]; outside the image is 0."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _eye(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(x.shape[0], 1, 1)


def shear_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x' = x + m·y about the top-left corner (torchvision's center=[0, 0])."""
    h, w = x.shape[-2:]
    theta = _eye(x)
    theta[:, 0, 1] = -m * h / w
    theta[:, 0, 2] = -m * h / w  # the row index counts from the top, not from the centre
    return _warp(x, theta)


def shear_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    theta = _eye(x)
    theta[:, 1, 0] = -m * w / h
    theta[:, 1, 2] = -m * w / h
    return _warp(x, theta)


def translate_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Shift right by m pixels (whole pixels, as torchvision's int(magnitude))."""
    theta = _eye(x)
    theta[:, 0, 2] = -2 * m.trunc() / x.shape[-1]
    return _warp(x, theta)


def translate_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    theta = _eye(x)
    theta[:, 1, 2] = -2 * m.trunc() / x.shape[-2]
    return _warp(x, theta)


def rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Rotate counter-clockwise by m degrees about the centre."""
    h, w = x.shape[-2:]
    a = m * (math.pi / 180)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = _eye(x)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    return _warp(x, theta)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (x * GREY.to(x.device, x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)


def brightness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), 1 + m)


def color(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 1 else _blend(x, _grey(x), 1 + m)


def contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grey(x).mean((1, 2, 3), keepdim=True), 1 + m)


def sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's smoothing filter; the border pixels stay as they are (as in torchvision)."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(x, smooth, 1 + m)


def posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Keep m bits per channel."""
    levels = _per_image(torch.pow(2.0, m.round()))
    return (x * levels).floor_().clamp_(max=levels - 1).div_(levels)


def solarize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above the threshold m (a fraction of white)."""
    return torch.where(x >= _per_image(m), 1 - x, x)


def autocontrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return TF.autocontrast(x)


def equalize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return TF.equalize(x)


def invert(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return 1 - x


def identity(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x


OPS: dict[str, Op] = {
    "Identity": identity, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x,
    "TranslateY": translate_y, "Rotate": rotate, "Brightness": brightness, "Color": color,
    "Contrast": contrast, "Sharpness": sharpness, "Posterize": posterize, "Solarize": solarize,
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert,
}  # fmt: skip


def apply_per_image(
    x: torch.Tensor, names: list[str], op: torch.Tensor, magnitude: torch.Tensor, applied: torch.Tensor
) -> torch.Tensor:
    """Image i gets OPS[names[op[i]]] at magnitude[i] where applied[i]: one batched call per operation drawn."""
    for k, name in enumerate(names):
        rows = ((op == k) & applied).nonzero().squeeze(1)
        if rows.numel():
            x = x.index_copy(0, rows, OPS[name](x[rows], magnitude[rows]))
    return x
