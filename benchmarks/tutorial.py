"""The data pipeline the tutorials teach, shared by the seed-style loop and the Lightning-style loop."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training-set statistics


def tutorial_loader(bs: int, side: int, device: torch.device, root: Path) -> DataLoader:
    """torchvision's FashionMNIST with per-image PIL transforms (Resize, ToTensor, Normalize), shuffled."""
    tf = [transforms.Resize(side)] if side != 28 else []
    tf += [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
    train = datasets.FashionMNIST(str(root), train=True, download=False, transform=transforms.Compose(tf))
    workers = 4 if device.type == "cuda" else 0  # on 2 CPU cores, workers would take the model's cores
    return DataLoader(train, batch_size=bs, shuffle=True, num_workers=workers, drop_last=True)
