"""Learning-rate schedules built from torch.optim.lr_scheduler, and the `Schedule` the training loop steps.

Each factory takes `(optimizer, total_steps, steps_per_epoch, **options)`; configs/scheduler/*.yaml name one
with `_target_` and `_partial_: true`, and `Schedule` supplies the step counts. All but `plateau` move once
per batch, so short and long runs share one code path; `plateau` watches a validation metric, so it moves
once per epoch.

`Schedule` exists for changing a run's length: a run resumed with a larger `trainer.max_epochs` must not load
the old schedule (OneCycleLR's state holds its length, cosine's shape depends on it), and `trainer.budget`
re-plans the epochs mid-run; both lay the schedule over the new length and fast-forward it to the step reached
(`relength`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from cnn_train.runtime.errors import UserError

MODES = {"val_loss": "min", "val_acc": "max"}  # the metrics `plateau` can watch, and which way is better


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """No schedule: the optimizer's lr throughout."""
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def step(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int, step_epochs: int = 30, gamma: float = 0.1
) -> LRScheduler:
    """Multiply the lr by `gamma` every `step_epochs` epochs (the ResNet paper's schedule)."""
    return StepLR(optimizer, step_size=max(1, step_epochs * steps_per_epoch), gamma=gamma)


def cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> LRScheduler:
    """Linear warm-up over w steps (lr × (s+1)/w at step s), then cosine decay to `min_lr_ratio` × lr.

    The warm-up takes at most a quarter of the run; the decay reaches its floor at the last step. The floor
    is computed from the first param group's lr (cnn-train's groups share one lr).
    """
    warmup = min(int(warmup_epochs * steps_per_epoch), total_steps // 4)
    floor = min_lr_ratio * float(optimizer.param_groups[0]["lr"])
    decay_steps = max(1, total_steps - 1 - warmup)
    if warmup == 0:
        return CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=floor)
    ramp = LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
    decay = CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=floor)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


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


class Plateau(ReduceLROnPlateau):
    """`ReduceLROnPlateau` that names the validation metric it watches, so `Schedule` can feed it."""

    def __init__(self, optimizer: Optimizer, monitor: str, **options: Any) -> None:
        super().__init__(optimizer, mode=MODES[monitor], **options)
        self.monitor = monitor


def plateau(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    monitor: str = "val_loss",
    factor: float = 0.1,
    patience: int = 2,
    threshold: float = 1e-4,
    min_lr: float = 0.0,
) -> LRScheduler:
    """Multiply the lr by `factor` once `monitor` has not improved for more than `patience` epochs."""
    if monitor not in MODES:
        raise UserError(f"scheduler.monitor: {monitor!r} is not one of {', '.join(MODES)}")
    return Plateau(optimizer, monitor, factor=factor, patience=patience, threshold=threshold, min_lr=min_lr)


class Schedule:
    """The training loop's one handle on the lr: a torch scheduler and the number of steps it has run.

    Args:
        factory: `instantiate(cfg.scheduler)`, one of the factories above with its options bound.
        optimizer: The optimizer whose param groups the schedule drives.
        total_steps: Optimizer steps in the whole run.
        steps_per_epoch: Optimizer steps per epoch.
    """

    def __init__(
        self,
        factory: Callable[..., LRScheduler],
        optimizer: Optimizer,
        total_steps: int,
        steps_per_epoch: int,
    ) -> None:
        self.factory, self.optimizer = factory, optimizer
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.steps_done = 0
        self.last_lr: float | None = None  # the lr the latest optimizer step used (first param group)
        # The hyperparameters before any scheduler touched them: a resumed longer run restarts from here.
        self._start = [
            {k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups
        ]
        self.scheduler = self._build()

    def _build(self) -> LRScheduler:
        return self.factory(
            self.optimizer, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch
        )

    def after_step(self) -> None:
        """Call once after every optimizer step."""
        self.steps_done += 1
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])
        if not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        """Call once after every validation with `{"val_loss": ..., "val_acc": ...}`."""
        if isinstance(self.scheduler, Plateau):
            self.scheduler.step(metrics[self.scheduler.monitor])

    def state_dict(self) -> dict[str, Any]:
        """A snapshot in plain containers, readable by `torch.load(..., weights_only=True)`."""
        return {
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "total_steps": self.total_steps,
            "steps_done": self.steps_done,
            "last_lr": self.last_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved schedule; call after `optimizer.load_state_dict`.

        A run of the saved length continues exactly where it stopped. A run of another length (a larger
        `trainer.max_epochs`) gets this length's schedule at the saved step: the saved one would end too
        early, and OneCycleLR refuses to step past its end. `plateau` has no length and always continues.
        """
        self.steps_done, self.last_lr = state["steps_done"], state.get("last_lr")
        if state["total_steps"] == self.total_steps or isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
            return
        self.relength(self.total_steps)

    def relength(self, total_steps: int) -> None:
        """Lay the schedule over `total_steps` from here on: rebuilt for that length and fast-forwarded to the
        step reached, so the lr continues on the new length's curve. Resets the optimizer's hyperparameters
        to their starting values first (load the optimizer's state after, not before). `plateau` has no
        length and keeps its state.
        """
        self.total_steps = total_steps
        if isinstance(self.scheduler, ReduceLROnPlateau):
            return
        for group, start in zip(self.optimizer.param_groups, self._start, strict=True):
            params = group["params"]
            group.clear()
            group.update(params=params, **copy.deepcopy(start))
        self.scheduler = self._build()
        with warnings.catch_warnings():  # no optimizer steps while fast-forwarding, and none are owed
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for _ in range(min(self.steps_done, self.total_steps)):  # past the end only if the run shrank
                self.scheduler.step()
