"""The loops: train one epoch, evaluate, and the one `infer` that evaluation and prediction share."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from cnn_train import distributed
from cnn_train.data.transforms import Preprocess
from cnn_train.errors import UserError


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run stops before the bad step touches the weights."""


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for `bf16` and `16-mixed`; plain fp32 for `32`."""
    if precision in ("32", "32-true"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _quiet() -> bool:
    # Live bars only on a terminal, and only from rank 0; logs and CI get the one line per epoch fit() prints.
    return not sys.stderr.isatty() or not distributed.is_main_process()


def _bar(batches: Iterable, desc: str) -> Any:
    return tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, disable=_quiet())


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


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    augment: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    precision: str,
    progress: EpochProgress,
    after_step: Callable[[int, Callable[[], EpochProgress]], None] | None = None,
    total_steps: int | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochProgress:
    """Train over `batches`, continuing `progress`; metrics stay on the device until someone reads them.

    `after_step(step, snapshot)` runs after every optimizer step; `snapshot()` syncs the running sums
    (a mid-epoch checkpoint calls it, the plain loop never does). A non-finite loss stops the run: on the
    CPU before its step, on an accelerator (where checking each step would stall the queue) at the next
    snapshot or every 50 steps, naming the first bad step; either way before any checkpoint is written.
    """
    model.train()
    for m in model.modules():  # frozen BatchNorm keeps its running statistics (fine-tuning a backbone)
        params = list(m.parameters(recurse=False))
        if (
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and params
            and not any(p.requires_grad for p in params)
        ):
            m.eval()
    device = next(model.parameters()).device
    loss_sum = torch.tensor(progress.loss_sum, device=device)
    correct = torch.tensor(progress.correct, device=device, dtype=torch.long)
    seen, step, epoch, lr = progress.seen, progress.step, progress.epoch, progress.lr
    start = time.perf_counter() - progress.seconds
    eager_check = device.type == "cpu"
    first_bad = torch.zeros((), device=device, dtype=torch.long)  # 0: every loss so far was finite

    def non_finite(value: str, at: int) -> NonFiniteLoss:
        return NonFiniteLoss(
            f"loss became {value} at epoch {epoch}, step {at}; stopped before a checkpoint took those weights, "
            "best.pt and last.pt keep the last good ones (try a lower optimizer.lr)"
        )

    def check_finite() -> None:
        bad = int(first_bad.item())
        if bad:
            raise non_finite("non-finite", bad)

    def snapshot() -> EpochProgress:
        check_finite()
        elapsed = time.perf_counter() - start
        return EpochProgress(epoch, lr, step, loss_sum.item(), int(correct.item()), seen, elapsed)

    bar = tqdm(
        batches, desc=f"epoch {epoch}", total=total_steps, initial=step, leave=False, dynamic_ncols=True,
        disable=_quiet(),
    )  # fmt: skip
    for x, y in bar:
        step += 1
        inputs = preprocess(x, augment)
        with autocast(device, precision):
            logits = model(inputs)
            loss = loss_fn(logits.float(), y)
        if eager_check:
            if not torch.isfinite(loss):  # before the step: the weights stay the last good ones
                raise non_finite(str(loss.item()), step)
        else:
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss.detach()), step, first_bad)
            if step % 50 == 0:
                check_finite()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16: scale the loss so small gradients survive, skip steps that overflow
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if not bar.disable and step % 10 == 0:
            now = snapshot()
            rate = (now.seen - progress.seen) / max(now.seconds - progress.seconds, 1e-9)
            acc = now.correct / now.seen
            bar.set_postfix(loss=f"{now.loss_sum / now.seen:.3f}", acc=f"{acc:.3f}", img_s=f"{rate:.0f}")
        if after_step is not None:
            after_step(step, snapshot)
    return snapshot()


@torch.inference_mode()
def infer(
    model: Callable[[torch.Tensor], torch.Tensor],
    preprocess: Preprocess,
    x: torch.Tensor,
    precision: str = "32",
    tta: bool = False,
) -> torch.Tensor:
    """Logits (fp32) for a uint8 batch, through the eval transform; shared by evaluation and predict.

    `model` is a network, or anything with its call signature and `eval()` (an ONNX export). With `tta`
    the image and its mirror image are both classified and their probabilities averaged (returned as
    log-probabilities, which softmax and cross-entropy treat as logits).
    """
    model.eval()
    inputs = preprocess(x)
    with autocast(x.device, precision):
        logits = model(inputs).float()
        if not tta:
            return logits
        mirrored = model(inputs.flip(-1)).float()
    both = torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)])
    return torch.logsumexp(both, 0) - math.log(2)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    precision: str = "32",
    desc: str = "eval",
    tta: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over `batches` (with flip test-time augmentation if `tta`)."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in _bar(batches, desc):
        logits = infer(model, preprocess, x, precision, tta)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    sums = distributed.all_sum(
        torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen, device=device).double()])
    )
    total_loss, total_correct, total_seen = sums.tolist()
    total_seen = max(total_seen, 1)
    return {"loss": total_loss / total_seen, "acc": total_correct / total_seen}
