"""Batched training augmentations: crops and flips (the policies are in `data.policies`).

Images travel as uint8 tensors; they become normalised floats on the training device, where the
augmentations below act on whole batches (one kernel call per batch, not one PIL call per image). The eval
transform lives in `data.images` (numpy + PIL) and `data.preprocess` (torch), which import no torchvision.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from cnn_train.data.batch_augment import BatchAugment


def _flip(x: torch.Tensor) -> torch.Tensor:
    mask = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


class NoAugment(BatchAugment):
    """Train on the images as they are (random erasing, mixup and cutmix still apply when set)."""


class RandomCropFlip(BatchAugment):
    """Random crop after zero padding, and a horizontal flip: the CIFAR recipe, batched."""

    def __init__(
        self,
        padding: int = 4,
        flip: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(**common)  # random_erasing, mixup_alpha, cutmix_alpha, num_classes
        self.padding, self.flip = padding, flip

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.padding
        if p > 0:
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n, 1, 1), device=x.device)
            dx = torch.randint(0, 2 * p + 1, (n, 1, 1), device=x.device)
            rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).expand(n, h, w)
            cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).expand(n, h, w)
            batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        return _flip(x) if self.flip else x


class RandomResizedCropFlip(BatchAugment):
    """ImageNet's random-resized crop (area and aspect ranges) and a horizontal flip, batched with roi_align."""

    def __init__(
        self,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(**common)  # random_erasing, mixup_alpha, cutmix_alpha, num_classes
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device
        area = torch.empty(n, device=dev).uniform_(*self.scale) * h * w
        log_r = torch.empty(n, device=dev).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        r = torch.exp(log_r)
        cw = torch.sqrt(area * r).clamp(1, w)
        ch = torch.sqrt(area / r).clamp(1, h)
        x0 = torch.rand(n, device=dev) * (w - cw)
        y0 = torch.rand(n, device=dev) * (h - ch)
        boxes = torch.stack([torch.arange(n, device=dev, dtype=x.dtype), x0, y0, x0 + cw, y0 + ch], dim=1)
        x = roi_align(
            x, boxes.to(x.dtype), output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True
        )
        return _flip(x) if self.flip else x
