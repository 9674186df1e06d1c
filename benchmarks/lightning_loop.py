"""The Lightning-style loop: a LightningModule and a torchvision DataLoader over the same network and batch.

Optional (`pip install 'cnn-train[lightning]'`): without `lightning` the benchmark leaves its column empty.
It trains as a Lightning user would write it: the dataset's per-image PIL transforms, `self.log` of the loss,
the Trainer's defaults otherwise (no logger, checkpoints or bars: they would time files and terminals), in
the precision `auto` picks (fp32 on an AVX2 CPU, bf16-mixed on AMX CPUs and GPUs) and the same SGD.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tutorial import tutorial_loader

from cnn_train.models import build_model

try:
    import lightning as L
except ImportError:  # the optional extra is not installed
    L = None


def available() -> bool:
    return L is not None


def lightning_loop(
    model: str, bs: int, side: int, steps: int, device: torch.device, root: Path, precision: str
) -> float | None:
    """Images/s over `steps` batches after 3 warm-up batches; None without `lightning`."""
    if L is None:
        return None
    loader = tutorial_loader(bs, side, device, root)
    torch.manual_seed(0)
    clock = Clock(warmup=3)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_steps=clock.warmup + steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        precision="bf16-mixed" if precision == "bf16" else "32-true", callbacks=[clock],
    )  # fmt: skip
    trainer.fit(Classifier(build_model(model, num_classes=10, in_channels=1, image_size=side)), loader)
    return clock.images / (clock.end - clock.start)


if L is not None:

    class Classifier(L.LightningModule):
        """The network, cross-entropy and SGD with momentum, as a LightningModule."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.loss_fn = net, nn.CrossEntropyLoss()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
            x, y = batch
            loss = self.loss_fn(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    class Clock(L.Callback):
        """Times the batches after the first `warmup` (data loading included, as in the other loops)."""

        def __init__(self, warmup: int) -> None:
            self.warmup, self.images, self.start, self.end = warmup, 0, 0.0, 0.0

        def on_train_batch_end(self, trainer: Any, _module: Any, _out: Any, batch: Any, index: int) -> None:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if index == self.warmup - 1:
                self.start = now
            elif index >= self.warmup:
                self.images, self.end = self.images + len(batch[1]), now
