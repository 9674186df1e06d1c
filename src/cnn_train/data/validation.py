"""Which images validate: a seeded hold-out of the training split, its own val split, or one of k folds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import torch

from cnn_train.data.labels import LabelSet, stratified_folds
from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)


class Pool(Protocol):
    """What a split offers here (datasets.TensorSplit and FileSplit)."""

    def __len__(self) -> int: ...
    def joined(self, other: Any) -> Any: ...
    def label_sets(self) -> list[LabelSet]: ...


def validation_pool(splits: Mapping[str, Any], folds: tuple[int, int] | None) -> Any | None:
    """The images validation is drawn from; None when the data's own val split validates as it is.

    k-fold pools an explicit val split with train: cross-validation is meant to let every image validate
    once, and the test split stays aside.
    """
    if folds is None:
        return None if "val" in splits else splits["train"]
    if "val" not in splits:
        return splits["train"]
    log.info("data.folds: the train and val splits are pooled (%d + %d images) and split into %d folds",
             len(splits["train"]), len(splits["val"]), folds[0])  # fmt: skip
    return splits["train"].joined(splits["val"])


def validation_index(
    pool: Pool, val_split: float, seed: int, folds: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) positions in `pool`: fold `folds[1]` of a stratified k-fold split, else a
    random `val_split` share; both fixed by `seed` and the data alone."""
    if folds is not None:
        k, i = folds
        assigned = stratified_folds(pool.label_sets(), k, seed)
        return (assigned != i).nonzero().flatten(), (assigned == i).nonzero().flatten()
    if not 0.0 < val_split < 1.0:
        raise UserError(f"data.val_split: {val_split} must lie strictly between 0 and 1")
    n = len(pool)
    n_val = max(1, round(n * val_split))
    if n_val >= n:
        raise UserError(f"data.val_split: {val_split} leaves no training images out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]
