"""What every `augmentation=` choice offers on top of its own transform: random erasing, mixup and cutmix.

The choice's transform and random erasing act on the float [0, 1] batch in `Preprocess.unit` (so samples.png
shows them); mixup and cutmix also change the labels, so the training step calls `mix` on the normalised
batch (a convex combination or a pasted box commutes with the per-channel normalisation).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.transforms import v2

from cnn_train.runtime.errors import UserError

ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing's defaults: area fraction of the erased box
ERASE_RATIO = (0.3, 3.3)  # and its aspect ratio range


def _check(name: str, value: float, upper: float | None) -> float:
    if value < 0 or (upper is not None and value > upper):
        bound = f"between 0 and {upper}" if upper is not None else "at least 0"
        raise UserError(f"augmentation.{name}: {value} must be {bound}")
    return float(value)


def random_erase(x: torch.Tensor, p: float) -> torch.Tensor:
    """Each image, with probability p, gets one box set to 0 (black), drawn as torchvision's RandomErasing.

    Batched: every image draws its own box; a side that would not fit is clamped to the image instead of
    redrawn.
    """
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(*ERASE_SCALE) * h * w
    ratio = torch.exp(torch.empty(n, device=dev).uniform_(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])))
    bh = torch.sqrt(area * ratio).round().clamp(1, h)
    bw = torch.sqrt(area / ratio).round().clamp(1, w)
    top = (torch.rand(n, device=dev) * (h - bh + 1)).floor()
    left = (torch.rand(n, device=dev) * (w - bw + 1)).floor()
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + bh).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + bw).view(-1, 1, 1))
    )
    erase = inside & (torch.rand(n, device=dev) < p).view(-1, 1, 1)
    return x.masked_fill(erase.unsqueeze(1), 0.0)


class BatchAugment(nn.Module):
    """Base of every augmentation choice: its `transform`, then random erasing; `mix` for mixup/cutmix.

    Args:
        random_erasing: probability that an image gets a random box erased.
        mixup_alpha: Beta(α, α) of mixup's weight; 0 = off.
        cutmix_alpha: Beta(α, α) of cutmix's area; 0 = off. With both on, each batch uses one of the two.
        num_classes: the data's class count, set by the run (soft labels are one weight per class).
    """

    def __init__(
        self,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.random_erasing = _check("random_erasing", random_erasing, 1.0)
        self.mixup_alpha = _check("mixup_alpha", mixup_alpha, None)
        self.cutmix_alpha = _check("cutmix_alpha", cutmix_alpha, None)
        self.num_classes = num_classes
        mixers = []
        if self.mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=self.mixup_alpha, num_classes=num_classes))
        if self.cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=self.cutmix_alpha, num_classes=num_classes))
        self.mixer = None if not mixers else mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The choice's own augmentation of a float [0, 1] batch; none here."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transform(x)
        return random_erase(x, self.random_erasing) if self.random_erasing > 0 else x

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch mixed with itself rolled by one, and soft targets (rows summing to 1); as is when off.

        Label sets (N×K 0/1 rows, multi-label) mix with the same weights as the images: the mixer labels each
        image by its own position in the batch, and its soft target rows are then each image's share of every
        source image (mixup's λ, cutmix's pasted area), which weigh the source images' label sets.
        """
        if self.mixer is None:
            return x, y
        if y.ndim == 2:
            mixed, shares = self._by_position(x)
            target = shares @ y
        elif self.num_classes is None:
            raise ValueError("mixup/cutmix need num_classes (the run sets it from the data)")
        else:
            mixed, target = self.mixer(x, y)
        # keep the layout Preprocess chose (channels_last, when the model was converted to it)
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return mixed.contiguous(
            memory_format=torch.channels_last if nhwc else torch.contiguous_format
        ), target

    def _by_position(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed batch and an N×N matrix: row i holds each source image's share of mixed image i."""
        mixers = getattr(self.mixer, "transforms", [self.mixer])  # RandomChoice holds mixup and cutmix
        n = len(x)
        for m in mixers:
            m.num_classes = n  # one "class" per position: the one-hot rows are the batch's identity
        try:
            return self.mixer(x, torch.arange(n, device=x.device))
        finally:
            for m in mixers:
                m.num_classes = self.num_classes
