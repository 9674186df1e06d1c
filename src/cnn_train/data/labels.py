"""What the labels decide besides the loss: stratified k-fold validation and class-balanced sampling.

Both read each image's label set: (c,) for a single-label image, the sorted classes present for a multi-label
one (`Split.label_sets()`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import torch

from cnn_train.runtime.errors import UserError

LabelSet = tuple[int, ...]
SAMPLERS = ("shuffle", "balanced")


def check_folds(folds: int | None, fold: int) -> tuple[int, int] | None:
    """(data.folds, data.fold) as given, or None without k-fold; a bad value fails naming its key."""
    if folds is None:
        if fold != 0:
            raise UserError(f"data.fold: {fold} needs data.folds (the number of folds, e.g. data.folds=5)")
        return None
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(f"data.folds: {folds!r} must be a whole number ≥ 2, or null")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise UserError(f"data.fold: {fold!r} must lie in 0..{folds - 1} (folds count from 0)")
    return folds, fold


def stratified_folds(label_sets: Sequence[LabelSet], folds: int, seed: int) -> torch.Tensor:
    """The fold (0..folds-1) of every image, from the seed and the labels alone.

    Each stratum (the images of one class; for multi-label data, of one whole label set) is shuffled with
    `seed` and dealt round-robin, the deal running on from one stratum to the next: every fold holds the
    floor or the ceiling of (stratum size / folds) of every stratum, and fold sizes differ by at most one.
    """
    if len(label_sets) < folds:
        raise UserError(f"data.folds: {folds} folds need at least {folds} images; the training data has "
                        f"{len(label_sets)}")  # fmt: skip
    strata: dict[LabelSet, list[int]] = defaultdict(list)
    for i, key in enumerate(label_sets):
        strata[key].append(i)
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(label_sets), dtype=torch.long)
    dealt = 0
    for key in sorted(strata):
        members = torch.tensor(strata[key])
        order = members[torch.randperm(len(members), generator=generator)]
        fold[order] = (dealt + torch.arange(len(order))) % folds
        dealt += len(order)
    return fold


def sampler_weights(label_sets: Sequence[LabelSet]) -> torch.Tensor:
    """data.sampler=balanced: each image's chance, ∝ 1 / (training images of its class).

    Drawn with these weights, every class fills the same share of an epoch in expectation. A multi-label
    image counts as its rarest label, so an image that carries a rare class is drawn as often as that
    class needs; images without any label (if a dataset has them) count as one more class.
    """
    counts = Counter(c for labels in label_sets for c in labels)
    unlabelled = sum(not labels for labels in label_sets)
    weights = [1.0 / min(counts[c] for c in labels) if labels else 1.0 / unlabelled for labels in label_sets]
    return torch.tensor(weights, dtype=torch.float64)
