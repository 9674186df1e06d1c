"""The learning-rate range test (Smith 2017; fastai's `lr_find`, Lightning's `Tuner.lr_find`).

The run's own session trains with an lr that grows exponentially from `trainer.lr_find_range[0]` to `[1]`
over `trainer.lr_find_steps` steps (at most one epoch); the loss is smoothed exponentially and the test stops
once the smoothed loss exceeds 4× its minimum (the loss has diverged). The suggestion is the lr of the
smoothed curve's minimum divided by 10: the minimum is where the loss still falls fastest *per step taken at
that lr*, and a tenth of it leaves the margin a whole run needs (its loss surface sharpens as it trains).
The lr of the steepest descent (Lightning's choice) is recorded beside it; it is a derivative of a noisy
curve, so it moves more from seed to seed.

`find(cfg, run_dir)` is cnn-lrfind; `apply(cfg, run_dir)` is `trainer.lr_find=true` in cnn-train: the range
test on a session of its own, then the run's config with `optimizer.lr` replaced. fit builds the run afresh
from the same seed, so the finder's steps never reach the trained weights.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from cnn_train.analysis import plots
from cnn_train.runtime import distributed, files
from cnn_train.runtime.errors import UserError
from cnn_train.runtime.world import World
from cnn_train.training.engine import TrainStep, keep_frozen_batchnorm_in_eval
from cnn_train.training.session import build

log = logging.getLogger(__name__)
SMOOTHING = 0.98  # the exponential moving average's weight on the past (fastai's and Lightning's beta)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


class ExponentialRamp:
    """Stands in for the run's Schedule during the test: step i trains at start·(end/start)^(i/(steps-1))."""

    def __init__(self, optimizer: torch.optim.Optimizer, start: float, end: float, steps: int) -> None:
        self.optimizer, self.start, self.end, self.steps = optimizer, start, end, steps
        self.steps_done = 0
        self._set(start)

    def lr(self, i: int) -> float:
        return self.start * (self.end / self.start) ** (i / (self.steps - 1))

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def after_step(self) -> None:
        self.steps_done += 1
        self._set(self.lr(min(self.steps_done, self.steps - 1)))


@dataclass
class Curve:
    """What the range test saw: the lr of each step, its loss, the smoothed loss; whether it diverged."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    diverged: bool


def range_test(
    step: TrainStep, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], ramp: ExponentialRamp
) -> Curve:
    """Train `ramp.steps` optimizer steps at the ramp's lrs (not the run's schedule); stop at divergence.

    Each step takes `step.accumulate` batches, as the run's steps do: the lr is found for the effective batch
    the run will train with. A step's loss is the mean of its batches' losses.
    """
    step.schedule = ramp  # the step calls after_step(): now the ramp, not the run's schedule, moves the lr
    step.model.train()
    keep_frozen_batchnorm_in_eval(step.model)
    curve = Curve([], [], [], diverged=False)
    average, lowest = 0.0, math.inf
    groups = zip(*[iter(batches)] * step.accumulate, strict=False)  # whole groups only
    for i, group in zip(range(ramp.steps), groups, strict=False):
        value = 0.0
        for x, y in group:  # the gradients add up; the step waits for the divergence check
            loss = step.forward(x, y)[0]
            step.backward(loss, 1 / len(group))
            value += loss.item() / len(group)
        if not math.isfinite(value):
            curve.diverged = True
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (i + 1))  # bias-corrected: the average starts at 0
        curve.lrs.append(ramp.lr(i))
        curve.losses.append(value)
        curve.smoothed.append(smoothed)
        if smoothed > DIVERGED * lowest:
            curve.diverged = True
            break
        lowest = min(lowest, smoothed)
        step.update()
    return curve


def suggest(curve: Curve) -> dict[str, Any]:
    """The suggested lr (min-loss lr / 10, not below the first lr tried) and the alternatives it came from."""
    if len(curve.smoothed) < 2:
        raise UserError(
            f"trainer.lr_find_range: the loss diverged after {len(curve.smoothed)} step(s); start the range lower"
        )
    smoothed = np.asarray(curve.smoothed)
    best = int(smoothed.argmin())
    # Steepest descent before the minimum, past the first tenth where the bias-corrected average still settles.
    first = len(smoothed) // 10
    slope = np.gradient(smoothed)[first : best + 1]
    steepest = curve.lrs[first + int(slope.argmin())] if len(slope) else curve.lrs[best]
    return {
        "suggested_lr": max(curve.lrs[best] / 10, curve.lrs[0]),
        "method": "min_loss_lr / 10",
        "min_loss_lr": curve.lrs[best],
        "min_smoothed_loss": float(smoothed[best]),
        "steepest_lr": steepest,
    }


def check(cfg: DictConfig) -> tuple[float, float, int]:
    """trainer.lr_find_range and lr_find_steps, validated: (start, end, steps)."""
    tr = cfg.trainer
    bounds, steps = list(tr.lr_find_range), int(tr.lr_find_steps)
    if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
        raise UserError(f"trainer.lr_find_range: {bounds} must be [start, end] with 0 < start < end")
    if steps < 2:
        raise UserError(f"trainer.lr_find_steps: {steps} must be ≥ 2")
    return float(bounds[0]), float(bounds[1]), steps


def find(cfg: DictConfig, run_dir: str | Path, device: torch.device | None = None) -> dict[str, Any]:
    """The range test on a freshly built session of `cfg`; writes lr_find.json and lr_find.png to `run_dir`."""
    start, end, steps = check(cfg)
    random.seed(cfg.trainer.seed)  # seeded as fit seeds before its build: the run's initial weights
    torch.manual_seed(cfg.trainer.seed)
    s = build(cfg, World(), device)  # one process: under torchrun the main one tests the global batch
    steps = min(steps, len(s.train_batches) // s.step.accumulate)
    if steps < 2:
        raise UserError(
            f"trainer.lr_find_steps: an epoch has {steps} optimizer step(s) of {s.step.accumulate} batch(es); "
            "the range test needs ≥ 2"
        )
    curve = range_test(s.step, s.train_batches.epoch(), ExponentialRamp(s.optimizer, start, end, steps))
    record = {**suggest(curve), "start_lr": start, "end_lr": end, "steps": steps, **asdict(curve)}
    record["stopped_at_lr"] = curve.lrs[-1]
    path = Path(run_dir)
    files.write_json(path / "lr_find.json", record)
    plots.plot_lr_find(record, path / "lr_find.png")
    log.info(
        "lr range test (%d of %d steps, %s): suggested lr %.3g (min-loss lr %.3g / 10; steepest descent at %.3g)",
        len(curve.lrs), steps, "diverged" if curve.diverged else "did not diverge", record["suggested_lr"],
        record["min_loss_lr"], record["steepest_lr"],
    )  # fmt: skip
    return record


def apply(cfg: DictConfig, run_dir: str | Path, world: World | None = None, device: torch.device | None = None,
          last: dict[str, Any] | None = None) -> DictConfig:  # fmt: skip
    """`cfg` itself, or with trainer.lr_find: a copy at the suggested `optimizer.lr` (the main process's).

    A resumed run (`last`: its last.pt) keeps the lr its range test found, from last.pt's config: no new test.
    """
    if not cfg.trainer.lr_find:
        return cfg
    found = None
    if (world is None or world.is_main) and last:
        found = float(last["config"]["optimizer"]["lr"])
        log.info("trainer.lr_find: the resumed run keeps the lr its range test suggested, %.3g", found)
    elif world is None or world.is_main:
        found = find(cfg, run_dir, device)["suggested_lr"]
    tuned = copy.deepcopy(cfg)
    tuned.optimizer.lr = float(distributed.broadcast(found))
    return tuned
