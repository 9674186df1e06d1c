"""The textbook's pixel-permutation experiment: one fixed shuffle of the H×W positions of every input.

A fully connected network has no notion of neighbouring pixels, so it learns the shuffled images as well as
the real ones; a convolutional network's locality prior no longer holds and it loses its edge. The shuffle
is drawn once from `data.permute_seed`, is the same for every channel and every image, and is part of the
eval transform, so training, validation, test, cnn-eval, cnn-predict and exports all see the same inputs.
"""

from __future__ import annotations

import torch


def pixel_permutation(seed: int, side: int) -> torch.Tensor:
    """The flat positions (0 … side²-1) in their shuffled order; the same seed and side give the same one."""
    return torch.randperm(side * side, generator=torch.Generator().manual_seed(seed))


def permute_pixels(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Output position k of every N×C×H×W image takes the pixel at flat input position order[k]."""
    return x.flatten(2)[:, :, order].view(x.shape)


def mirror_permuted(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The permuted mirror image of the image `x` is the permutation of: flip-TTA acts on the real image."""
    inverse = torch.argsort(order)
    return permute_pixels(permute_pixels(x, inverse).flip(-1), order)
