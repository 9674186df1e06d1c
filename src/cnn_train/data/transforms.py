"""One eval transform for validation, evaluation and prediction, and batched training augmentations.

Images travel as uint8 tensors; they become normalised floats on the training device, where the
augmentations below act on whole batches (one kernel call per batch, not one PIL call per image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from cnn_train.data.batch_augment import BatchAugment
from cnn_train.data.permute import mirror_permuted, permute_pixels, pixel_permutation
from cnn_train.runtime.errors import UserError

LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601, what PIL's convert("L") uses


@dataclass(frozen=True)
class EvalTransform:
    """How an image becomes model input; stored in every checkpoint so predict needs no config."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    permute_seed: int | None = None  # data.permute_pixels: shuffle pixel positions with this seed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalTransform:
        seed = d.get("permute_seed")  # absent in checkpoints written before the permutation experiment
        return cls(
            int(d["image_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]),
            None if seed is None else int(seed),
        )  # fmt: skip


def load_image(path: str | Path, channels: int) -> Image.Image:
    """Open any PIL-readable image as 'L' or 'RGB'; transparency is composited onto black.

    Black, because the built-in datasets have black backgrounds; 16-bit images are scaled, not clipped.
    Files come from the wild, so any failure to decode one is reported as this file's UserError.
    """
    try:
        with Image.open(path) as im:
            im.load()
            img = ImageOps.exif_transpose(im) or im
            return _convert(img, channels)
    except Exception as e:  # PIL raises many types (SyntaxError, struct.error, ...) for hostile bytes
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def _convert(img: Image.Image, channels: int) -> Image.Image:
    if img.width < 1 or img.height < 1:
        raise ValueError(f"empty image {img.size}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L" if channels == 1 else "RGB")


def image_to_tensor(img: Image.Image, image_size: int) -> torch.Tensor:
    """Resize the short side to `image_size`, centre-crop a square: uint8 C×H×W."""
    img = TF.resize(img, [image_size], antialias=True)
    img = TF.center_crop(img, [image_size, image_size])
    return TF.pil_to_tensor(img)


def read_image_tensor(path: str | Path, spec: EvalTransform) -> torch.Tensor:
    """A file on disk as the uint8 tensor the eval transform expects."""
    return image_to_tensor(load_image(path, spec.channels), spec.image_size)


class Preprocess(nn.Module):
    """uint8 batch → float, resized to the training side, augmented (train only), normalised.

    With `channels_last` the batch comes out NHWC in memory, the layout the model was converted to.
    """

    def __init__(self, spec: EvalTransform, channels_last: bool = False) -> None:
        super().__init__()
        self.image_size, self.channels = spec.image_size, spec.channels
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("luma", LUMA.view(1, 3, 1, 1), persistent=False)
        order = None if spec.permute_seed is None else pixel_permutation(spec.permute_seed, spec.image_size)
        self.register_buffer("order", order, persistent=False)

    def unit(self, x: torch.Tensor, augment: nn.Module | None = None) -> torch.Tensor:
        """The batch as the network sees it, before normalisation: floats in [0, 1] (what samples.png shows)."""
        x = x.float().div_(255)
        if x.shape[1] != self.channels:  # colour data for a grey model, or grey data for a colour one
            x = (
                (x * LUMA.to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
                if self.channels == 1
                else x.expand(-1, 3, -1, -1)
            )
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return augment(x) if augment is not None else x

    def forward(self, x: torch.Tensor, augment: nn.Module | None = None) -> torch.Tensor:
        x = (self.unit(x, augment) - self.mean) / self.std
        if self.order is not None:  # after augmentation: augmentations act on the real image
            x = permute_pixels(x, self.order)
        return x.contiguous(memory_format=self.memory_format)

    def on_real_image(self, mix: Callable[..., tuple[torch.Tensor, Any]], x: torch.Tensor, y: torch.Tensor
                      ) -> tuple[torch.Tensor, Any]:  # fmt: skip
        """`mix` (cutmix's boxes) applied to the model input `x` as if to the real, unpermuted images."""
        if self.order is None:
            return mix(x, y)
        mixed, target = mix(permute_pixels(x, torch.argsort(self.order)), y)
        return permute_pixels(mixed, self.order), target

    def mirror(self, x: torch.Tensor) -> torch.Tensor:
        """The model input of the mirrored image, from the model input `x` (flip test-time augmentation)."""
        return x.flip(-1) if self.order is None else mirror_permuted(x, self.order)


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
