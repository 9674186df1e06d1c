"""The training loss: cross-entropy over the classes, or binary cross-entropy per class for label sets.

A multi-label run trains one sigmoid per class: `binary_cross_entropy_with_logits` on the logits, averaged
over images and classes, as `nn.BCEWithLogitsLoss` computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cnn_train.data.datasets import Dataset, Split, TensorSplit, label_rows


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy with logits per image and class.

    `smoothing` ε moves every target towards 1/2, y(1 − ε) + ε/2: cross-entropy's label smoothing for two
    classes, one per label. `pos_weight` multiplies each class's positive term (BCEWithLogitsLoss's).
    """

    def __init__(self, pos_weight: torch.Tensor | None = None, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = float(smoothing)
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.smoothing:
            target = target * (1 - self.smoothing) + self.smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)


def build_loss(tr: DictConfig, data: Dataset, device: torch.device) -> nn.Module:
    """The loss for the data: BCE per class for multi-label data (with `trainer.pos_weight`), else
    cross-entropy (with `trainer.class_weights`); both take `trainer.label_smoothing`."""
    k = len(data.classes)
    if data.multi_label:
        pos_weight = positive_weights(data.train, k).to(device) if tr.pos_weight else None
        return MultiLabelLoss(pos_weight, tr.label_smoothing)
    weight = balanced_weights(data.train, k).to(device) if tr.class_weights else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=tr.label_smoothing)


def balanced_weights(split: Split, n_classes: int) -> torch.Tensor:
    """`trainer.class_weights=balanced`: n / (classes × n_c) for each class c, as scikit-learn computes them.

    A class with no training images gets weight 0 (it never appears in the loss anyway).
    """
    labels = split.labels if isinstance(split, TensorSplit) else torch.tensor([y for _, y in split.samples])
    counts = torch.bincount(labels, minlength=n_classes).double()
    weights = len(labels) / (n_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, 0.0).float()


def positive_weights(split: Split, n_classes: int) -> torch.Tensor:
    """`trainer.pos_weight=balanced`: negatives / positives of each class in the training split (the weight
    BCEWithLogitsLoss's documentation suggests), so each class's positives weigh as much as its negatives.

    A class that is never or always present gets 1 (a weight of 0 or ∞ would drop one side of it).
    """
    rows = label_rows(split, n_classes)
    positives = rows.sum(0).double()
    negatives = len(rows) - positives
    ratio = negatives / positives.clamp(min=1)
    return torch.where((positives > 0) & (negatives > 0), ratio, 1.0).float()
