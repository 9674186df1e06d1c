"""An exponential moving average of the weights (`trainer.ema_decay`), on PyTorch's AveragedModel.

The average, not the raw weights, is what validation measures, best.pt holds and the test pass scores; last.pt
keeps both, so a resumed run continues the same average. BatchNorm's running statistics are averaged with the
weights (`use_buffers=True`, as torchvision's reference recipe does), so the averaged network carries
statistics that match its averaged weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmed_up_ema(decay: float) -> Any:
    """AveragedModel's `multi_avg_fn`: EMA whose decay ramps as min(decay, (1 + n) / (10 + n)).

    Early in a short run a plain 0.999 average is mostly the random initialisation; the ramp (timm's and
    TensorFlow's `num_updates` rule) lets the average follow the weights until it has seen enough steps.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # integer buffers (BatchNorm's batch counter): the latest
            torch._foreach_copy_(averaged, current)
            return
        n = n_averaged.to(averaged[0].dtype)
        keep = torch.clamp((1 + n) / (10 + n), max=decay)
        torch._foreach_mul_(averaged, keep)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1 - keep))

    return update


class EMA:
    """The average of `model`'s weights, updated after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model, self.decay = model, decay
        self.averaged = AveragedModel(model, multi_avg_fn=warmed_up_ema(decay), use_buffers=True)

    def update(self) -> None:
        self.averaged.update_parameters(self.model)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged network's state dict, with the keys of the model's own."""
        return self.averaged.module.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
