"""The eval transform on a uint8 batch in torch: what validation, the test pass, cnn-eval and training feed.

It computes the same floats as `data.images.normalise` (numpy), which predicts with an ONNX export without
torch; neither imports torchvision, so predicting with a checkpoint does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnn_train.data.images import EvalTransform, read_image_array
from cnn_train.data.permute import mirror_permuted, permute_pixels, pixel_permutation

LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601, what PIL's convert("L") uses


def read_image_tensor(path: str | Path, spec: EvalTransform) -> torch.Tensor:
    """A file on disk as the uint8 C×H×W tensor the eval transform takes (`data.images.read_image_array`)."""
    return torch.from_numpy(read_image_array(path, spec))


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
