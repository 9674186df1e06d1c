"""The loops: one training step, one training epoch, and evaluation (through `inference.infer`).

Training runs in the precision and memory format `trainer.precision` / `trainer.channels_last` chose for the
machine; validation and the test pass run `inference.infer.infer`, the numerics every caller shares.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cnn_train.analysis.multilabel import multilabel_metrics, tune_thresholds
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference.infer import infer
from cnn_train.runtime import distributed
from cnn_train.runtime.errors import UserError
from cnn_train.runtime.hardware import compute_dtype
from cnn_train.training.distill import Teacher
from cnn_train.training.ema import EMA

CHECK_EVERY = 50  # on accelerators, steps between looks at the loss (each look waits for the device)


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run stops before the bad step touches the weights."""


class Schedule(Protocol):
    def after_step(self) -> None: ...


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for `bf16` and `16-mixed`; plain fp32 for `32`."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=compute_dtype(precision))


def show_bars(main: bool) -> bool:
    """Live bars only on a terminal and only from the main process; logs and CI get one line per epoch."""
    return main and sys.stderr.isatty()


@dataclass
class EpochProgress:
    """Where a training epoch stands; saved mid-epoch so that a resumed run finishes it exactly."""

    epoch: int
    lr: float = 0.0  # the lr when the epoch began, reported for the whole epoch
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        seen = max(self.seen, 1)
        return {
            "loss": self.loss_sum / seen,
            "acc": self.correct / seen,
            "seconds": self.seconds,
            "images": seen,
        }


class FiniteGuard:
    """Stops the run at a NaN/inf loss, naming the first bad step, before any checkpoint takes its weights.

    On the CPU each loss is looked at before its step; on an accelerator (where looking stalls the queue) the
    first bad step is recorded on the device and checked every CHECK_EVERY steps and at every snapshot.
    """

    def __init__(self, epoch: int, device: torch.device) -> None:
        self.epoch, self.eager = epoch, device.type == "cpu"
        self.first_bad = torch.zeros((), device=device, dtype=torch.long)

    def error(self, value: str, step: int) -> NonFiniteLoss:
        return NonFiniteLoss(
            f"loss became {value} at epoch {self.epoch}, step {step}; stopped before a checkpoint took those "
            "weights, best.pt and last.pt keep the last good ones (try a lower optimizer.lr)"
        )

    def check(self, loss: torch.Tensor, step: int) -> None:
        if self.eager:
            if not torch.isfinite(loss):
                raise self.error(str(loss.item()), step)
            return
        bad = (self.first_bad == 0) & ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad, step, self.first_bad)
        if step % CHECK_EVERY == 0:
            self.raise_recorded()

    def raise_recorded(self) -> None:
        if not self.eager and (bad := int(self.first_bad.item())):
            raise self.error("non-finite", bad)


class Meter:
    """Running loss and accuracy sums, kept on the device until a snapshot reads them.

    Multi-label accuracy is the exact-match ratio at probability 0.5 (the tuned thresholds come from
    validation): an image counts when every class's logit is on the side of 0 its target is.
    """

    def __init__(self, progress: EpochProgress, device: torch.device, multi_label: bool = False) -> None:
        self.epoch, self.lr, self.step, self.seen = progress.epoch, progress.lr, progress.step, progress.seen
        self.loss_sum = torch.tensor(progress.loss_sum, device=device)
        self.correct = torch.tensor(progress.correct, device=device, dtype=torch.long)
        self.start = time.perf_counter() - progress.seconds
        self.multi_label = multi_label

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """`y`: class indices, or soft targets (mixup/cutmix), whose argmax is the class that counts as right;
        multi-label: 0/1 (or mixed) targets per class."""
        self.step += 1
        self.loss_sum += loss.detach() * len(y)
        if self.multi_label:
            self.correct += ((logits.detach() > 0) == (y > 0.5)).all(1).sum()
        else:
            self.correct += (logits.detach().argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum()
        self.seen += len(y)

    def snapshot(self) -> EpochProgress:
        elapsed = time.perf_counter() - self.start
        return EpochProgress(
            self.epoch, self.lr, self.step, self.loss_sum.item(), int(self.correct.item()), self.seen, elapsed
        )


class TrainStep:
    """One batch: preprocess and augment, forward in the training precision, loss, backward; and the update.

    With `accumulate` > 1 the gradients of that many batches add up before one `update` (each batch's loss
    weighted by 1/group size, so the step equals one over the whole group); `syncing` skips DDP's gradient
    all-reduce on the batches that only accumulate. `update` clips, steps, averages (EMA) and moves the lr.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess,
        augment: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        loss_fn: nn.Module,
        precision: str,
        scaler: torch.amp.GradScaler | None = None,
        clip_norm: float | None = None,
        accumulate: int = 1,
        ema: EMA | None = None,
        teacher: Teacher | None = None,
        multi_label: bool = False,
    ) -> None:
        self.model, self.preprocess, self.augment, self.loss_fn = model, preprocess, augment, loss_fn
        self.optimizer, self.schedule, self.precision, self.scaler = optimizer, schedule, precision, scaler
        self.clip_norm, self.accumulate, self.ema, self.teacher = clip_norm, accumulate, ema, teacher
        self.multi_label = multi_label
        self.device = next(model.parameters()).device

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits and the targets the loss was computed against (soft under mixup/cutmix)."""
        inputs = self.preprocess(x, self.augment)
        mix = getattr(self.augment, "mix", None)  # BatchAugment: mixup/cutmix mixes images and labels
        inputs, target = self.preprocess.on_real_image(mix, inputs, y) if mix is not None else (inputs, y)
        with autocast(self.device, self.precision):
            logits = self.model(inputs)
        loss = self.loss_fn(logits.float(), target)
        if self.teacher is not None:  # outside autocast: the teacher answers in fp32, on the same inputs
            loss = self.teacher.loss(logits.float(), inputs, loss)
        return loss, logits, target

    def syncing(self, sync: bool) -> contextlib.AbstractContextManager:
        """Under DDP, no gradient all-reduce for a batch that only accumulates (`sync` False)."""
        if sync or not isinstance(self.model, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def backward(self, loss: torch.Tensor, weight: float = 1.0) -> None:
        loss = loss * weight if weight != 1.0 else loss
        # fp16: scale the loss so small gradients survive (the scaler skips steps that overflow)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def update(self) -> None:
        if self.clip_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.clip_norm, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.schedule.after_step()


def accumulation_group(done: int, accumulate: int, total: int | None) -> tuple[int, bool]:
    """For the batch after `done` batches of an epoch: its group's size, and whether it ends the group.

    The epoch's last group may be shorter; it still ends with a step (Lightning's rule).
    """
    start = done // accumulate * accumulate
    end = start + accumulate if total is None else min(start + accumulate, total)
    return end - start, done + 1 >= end


def keep_frozen_batchnorm_in_eval(model: nn.Module) -> None:
    """Frozen BatchNorm keeps its running statistics (fine-tuning a backbone)."""
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if (
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and params
            and not any(p.requires_grad for p in params)
        ):
            m.eval()


def train_one_epoch(
    step_fn: TrainStep,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    progress: EpochProgress,
    after_step: Callable[[int, Callable[[], EpochProgress]], bool] | None = None,
    total_steps: int | None = None,
    bars: bool = False,
) -> EpochProgress:
    """Train over `batches`, continuing `progress`; metrics stay on the device until someone reads them.

    `after_step(step, snapshot)` runs after every optimizer step (`step` counts batches) and may return True
    to end the epoch there; `snapshot()` syncs the running sums (a mid-epoch checkpoint calls it, the plain
    loop never does).
    """
    step_fn.model.train()
    keep_frozen_batchnorm_in_eval(step_fn.model)
    meter = Meter(progress, step_fn.device, step_fn.multi_label)
    guard = FiniteGuard(progress.epoch, step_fn.device)

    def snapshot() -> EpochProgress:
        guard.raise_recorded()
        return meter.snapshot()

    bar = tqdm(batches, desc=f"epoch {progress.epoch}", total=total_steps, initial=progress.step, leave=False,
               dynamic_ncols=True, disable=not bars)  # fmt: skip
    for x, y in bar:
        group, last = accumulation_group(meter.step, step_fn.accumulate, total_steps)
        with step_fn.syncing(last):
            loss, logits, target = step_fn.forward(x, y)
            guard.check(loss, meter.step + 1)
            step_fn.backward(loss, 1 / group)
        if last:
            step_fn.update()
        meter.add(loss, logits, target)
        if bars and meter.step % 10 == 0:
            now = snapshot()
            rate = (now.seen - progress.seen) / max(now.seconds - progress.seconds, 1e-9)
            bar.set_postfix(loss=f"{now.loss_sum / now.seen:.3f}", acc=f"{now.correct / now.seen:.3f}",
                            img_s=f"{rate:.0f}")  # fmt: skip
        if last and after_step is not None and after_step(meter.step, snapshot):
            break  # the hook asked to stop here (a time budget ran out)
    return snapshot()


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    desc: str = "eval",
    tta: bool = False,
    bars: bool = False,
    on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over `batches`, summed over every process of the run.

    `on_batch(x, y, logits)` sees every batch (the report's confusion matrix: no second pass over the data).
    """
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, disable=not bars):
        logits = infer(model, preprocess, x, tta)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if on_batch is not None:
            on_batch(x, y, logits)
    counts = [loss_sum.double(), correct.double(), torch.tensor(seen, device=device).double()]
    sums = distributed.all_sum(torch.stack(counts))
    total_loss, total_correct, total_seen = sums.tolist()
    total_seen = max(total_seen, 1)
    return {"loss": total_loss / total_seen, "acc": total_correct / total_seen}


def evaluate_sets(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    classes: list[str],
    thresholds: list[float] | None = None,
    desc: str = "eval",
    tta: bool = False,
    bars: bool = False,
) -> dict[str, Any]:
    """Multi-label evaluation over every process: mean binary cross-entropy (per image and class), mAP, and
    F1 and exact-match ("acc") at `thresholds`, or at thresholds tuned here for F1 (validation: returned)."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    probs, targets = [], []
    for x, y in tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, disable=not bars):
        logits = infer(model, preprocess, x, tta, multi_label=True)
        loss_sum += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").double()
        probs.append(logits.sigmoid())
        targets.append(y)
    k = len(classes)
    scores = distributed.gather_rows(torch.cat(probs) if probs else torch.empty(0, k, device=device))
    truth = distributed.gather_rows(torch.cat(targets) if targets else torch.empty(0, k, device=device))
    total_loss = distributed.all_sum(loss_sum).item()
    thresholds = thresholds if thresholds is not None else tune_thresholds(scores, truth)
    metrics = multilabel_metrics(scores.cpu(), truth.cpu(), thresholds, classes)
    loss = total_loss / max(truth.numel(), 1)
    return {
        "loss": loss,
        "acc": metrics["exact_match"],
        "thresholds": thresholds,
        "images": len(truth),
        **metrics,
    }
