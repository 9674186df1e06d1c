"""RandAugment, TrivialAugment and AutoAugment with an independent draw per image, on whole batches.

torchvision.transforms.v2 draws one operation per call (per batch, when called on a batch) and Kornia's
policies choose one operation per batch too (only magnitudes vary per image); looping torchvision over the
images is per image but costs one call per image. Here every image draws its own operation, magnitude and
sign from torchvision's own tables, and each operation then runs once on the images that drew it
(`image_ops.apply_per_image`): about 14 batched calls per batch instead of 256 single-image ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from cnn_train.data.batch_augment import BatchAugment
from cnn_train.data.image_ops import apply_per_image
from cnn_train.runtime.errors import UserError

# torchvision's search spaces: name -> (magnitudes(num_bins, height, width) or None, signed); private names,
# read once here, so a torchvision that renames them fails at import rather than training differently.
RAND_SPACE = v2.RandAugment._AUGMENTATION_SPACE
TRIVIAL_SPACE = v2.TrivialAugmentWide._AUGMENTATION_SPACE
AUTO_SPACE = v2.AutoAugment._AUGMENTATION_SPACE


def magnitude_table(space: dict, num_bins: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """ops × bins: each operation's magnitude at each bin (0 for operations without one)."""
    rows = []
    for magnitudes, _ in space.values():
        m = magnitudes(num_bins, h, w)
        rows.append(torch.zeros(num_bins) if m is None else m.float())
    return torch.stack(rows).to(device)


def signs(space: dict, op: torch.Tensor) -> torch.Tensor:
    """+1 or -1 per image, random for operations whose magnitude is signed (shear, rotate, brightness, ...)."""
    signed = torch.tensor([s for _, s in space.values()], device=op.device)[op]
    flip = signed & (torch.rand(op.shape, device=op.device) < 0.5)
    return 1.0 - 2.0 * flip.float()


class RandAugment(BatchAugment):
    """RandAugment: each image applies `num_ops` operations, each drawn uniformly, at one fixed magnitude."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_bins: int = 31,
        **common: Any,
    ) -> None:
        super().__init__(**common)  # random_erasing, mixup_alpha, cutmix_alpha, num_classes
        if not 0 <= magnitude < num_bins:
            raise UserError(f"augmentation.magnitude: {magnitude} must be in [0, num_bins={num_bins})")
        self.num_ops, self.magnitude, self.num_bins = num_ops, magnitude, num_bins

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        table = magnitude_table(RAND_SPACE, self.num_bins, *x.shape[-2:], dev)[:, self.magnitude]
        for _ in range(self.num_ops):
            op = torch.randint(len(RAND_SPACE), (n,), device=dev)
            mag = table[op] * signs(RAND_SPACE, op)
            x = apply_per_image(x, list(RAND_SPACE), op, mag, torch.ones(n, dtype=torch.bool, device=dev))
        return x


class TrivialAugment(BatchAugment):
    """TrivialAugment (wide space): each image applies one operation at a uniformly drawn magnitude bin."""

    def __init__(
        self,
        num_bins: int = 31,
        **common: Any,
    ) -> None:
        super().__init__(**common)  # random_erasing, mixup_alpha, cutmix_alpha, num_classes
        self.num_bins = num_bins

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        table = magnitude_table(TRIVIAL_SPACE, self.num_bins, *x.shape[-2:], dev)
        op = torch.randint(len(TRIVIAL_SPACE), (n,), device=dev)
        mag = table[op, torch.randint(self.num_bins, (n,), device=dev)] * signs(TRIVIAL_SPACE, op)
        return apply_per_image(x, list(TRIVIAL_SPACE), op, mag, torch.ones(n, dtype=torch.bool, device=dev))


class AutoAugment(BatchAugment):
    """AutoAugment: each image draws one of the policy's sub-policies; each of its two steps has a probability."""

    def __init__(
        self,
        policy: str = "imagenet",
        **common: Any,
    ) -> None:
        super().__init__(**common)  # random_erasing, mixup_alpha, cutmix_alpha, num_classes
        names = {p.value: p for p in v2.AutoAugmentPolicy}
        if policy not in names:
            raise UserError(f"augmentation.policy: '{policy}' is not one of {', '.join(names)}")
        self.policy = policy
        subpolicies = v2.AutoAugment(names[policy])._policies
        ops = list(AUTO_SPACE)
        # sub-policies × 2 steps: operation index, probability, magnitude bin (0 where it has none)
        self.op = torch.tensor([[ops.index(s[0]) for s in sub] for sub in subpolicies])
        self.prob = torch.tensor([[s[1] for s in sub] for sub in subpolicies])
        self.bin = torch.tensor([[s[2] or 0 for s in sub] for sub in subpolicies])

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        table = magnitude_table(AUTO_SPACE, 10, *x.shape[-2:], dev)  # AutoAugment's 10 magnitude bins
        sub = torch.randint(len(self.op), (n,), device=dev)
        steps = self.op.to(dev)[sub], self.prob.to(dev)[sub], self.bin.to(dev)[sub]
        for step in range(2):
            op, prob, bins = (t[:, step] for t in steps)
            applied = torch.rand(n, device=dev) < prob
            mag = table[op, bins] * signs(AUTO_SPACE, op)
            x = apply_per_image(x, list(AUTO_SPACE), op, mag, applied)
        return x
