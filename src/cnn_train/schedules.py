"""Learning-rate schedules, all stepped once per batch so short and long runs share one code path.

Each factory takes `(optimizer, total_steps, steps_per_epoch, **options)`; configs/scheduler/*.yaml
name one with `_target_` and `_partial_: true`, and the trainer supplies the step counts.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """No schedule: the optimizer's lr throughout."""
    return LambdaLR(optimizer, lambda step: 1.0)


def step(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int = 30, gamma: float = 0.1
) -> LRScheduler:
    """Multiply the lr by `gamma` every `step_epochs` epochs (the ResNet paper's schedule)."""
    every = max(1, step_epochs * steps_per_epoch)
    return LambdaLR(optimizer, lambda s: gamma ** (s // every))


def cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> LRScheduler:
    """Linear warm-up, then cosine decay to `min_lr_ratio` × lr; warm-up takes at most a quarter of the run."""
    warmup = min(int(warmup_epochs * steps_per_epoch), total_steps // 4)

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def onecycle(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> LRScheduler:
    """Smith's one-cycle policy peaking at the optimizer's lr; momentum cycles where the optimizer has one."""
    defaults = optimizer.defaults
    cycle = bool(defaults.get("momentum")) or "betas" in defaults
    return OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=max(total_steps, 2),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=cycle,
    )
