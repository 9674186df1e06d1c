"""Batches of uint8 images and labels on the training device, from memory or from files."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from cnn_train.data.datasets import FileSplit, Split, TensorSplit, multi_hot
from cnn_train.data.transforms import EvalTransform, read_image_tensor
from cnn_train.runtime import distributed
from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, torch.Tensor]


class _Files(TorchDataset):
    """Decodes one file per item at the training side; unreadable files come back as None."""

    def __init__(self, split: FileSplit, spec: EvalTransform, strict: bool = False) -> None:
        self.samples, self.spec, self.strict = split.samples, spec, strict

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, Any, str]:
        path, label = self.samples[i]
        try:
            return read_image_tensor(path, self.spec), label, path
        except UserError:
            if self.strict:
                raise
            return None, label, path


def _collate(items: list[tuple[torch.Tensor | None, Any, str]], num_classes: int | None = None) -> Batch:
    """Images and labels of the readable files: class indices, or with `num_classes` (multi-label: the
    labels are sets) N×K 0/1 rows."""
    bad = [p for x, _, p in items if x is None]
    for p in bad:
        log.warning("skipping unreadable image %s", p)
    good = [(x, y) for x, y, _ in items if x is not None]
    if not good:
        empty = torch.empty(0, num_classes) if num_classes else torch.empty(0, dtype=torch.long)
        return torch.empty(0), empty
    labels = [y for _, y in good]
    rows = multi_hot(labels, num_classes) if num_classes else torch.tensor(labels)
    return torch.stack([x for x, _ in good]), rows


def _collate_for(split: FileSplit) -> Any:
    return functools.partial(_collate, num_classes=split.num_classes)


def available_memory() -> int:
    """Bytes of memory the system can still give (MemAvailable), or 0 where that cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def should_cache(split: Split, spec: EvalTransform, setting: object) -> bool:
    """data.cache: true, false, or auto (the decoded uint8 split takes under a quarter of free memory)."""
    if not isinstance(split, FileSplit):
        return False
    if setting in ("auto", None):
        need = len(split) * spec.channels * spec.image_size**2
        return need < available_memory() // 4
    if isinstance(setting, bool):
        return setting
    raise UserError(f"data.cache: {setting!r} must be auto, true or false")


def cache_split(split: FileSplit, spec: EvalTransform, num_workers: int, strict: bool) -> TensorSplit:
    """Decode every file once, at the training side, into one uint8 tensor; unreadable files are skipped.

    Each later epoch is then a tensor gather, like the built-in datasets, instead of a JPEG decode per image.
    """
    loader = DataLoader(
        _Files(split, spec, strict),
        batch_size=256,
        num_workers=num_workers,
        collate_fn=_collate_for(split),
        generator=torch.Generator().manual_seed(0),  # not the global stream: the model's init draws from it
    )
    images, labels = [], []
    for x, y in loader:
        if len(y):
            images.append(x)
            labels.append(y)
    if not images:
        raise UserError("data.root: none of the images could be read")
    return TensorSplit(torch.cat(images), torch.cat(labels))


class _Order:
    """Index lists for one epoch, starting at batch `skip`: the batch sampler behind the file loader."""

    def __init__(self) -> None:
        self.chunks: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


class Batches:
    """An epoch's worth of batches: slices of an in-memory tensor, or decoded files from loader workers.

    The shuffle is drawn from `generator` when an epoch starts, so restoring the generator state saved at
    that moment and skipping the batches already done replays the rest of the epoch exactly.
    """

    def __init__(
        self,
        split: Split,
        spec: EvalTransform,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        num_workers: int = 0,
        limit: int | None = None,
        strict: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.split, self.spec, self.batch_size, self.device = split, spec, batch_size, device
        self.rank, self.world = shard  # under torchrun each rank takes its slice of every global batch
        self.shuffle, self.generator, self.num_workers, self.strict = shuffle, generator, num_workers, strict
        self.drop_last = drop_last
        # One image in a training batch breaks BatchNorm, so a short last batch is dropped in training.
        drop = drop_last and len(split) > batch_size
        full, rest = divmod(len(split), batch_size)
        n = full + (0 if drop or rest == 0 else 1)
        self.num_batches = min(n, limit) if limit else n
        self._order = _Order()
        self._loader: DataLoader | None = None
        self._resident: TensorSplit | None = None
        if isinstance(split, TensorSplit) and device.type == "cuda":
            # The built-in datasets are a few hundred MB at most: kept on the GPU, a batch is one gather.
            self._resident = TensorSplit(split.images.to(device), split.labels.to(device))

    def __len__(self) -> int:
        return self.num_batches

    def _chunks(self, skip: int) -> list[torch.Tensor]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        bs = self.batch_size
        chunks = [order[i * bs : (i + 1) * bs] for i in range(skip, self.num_batches)]
        if self.world > 1:
            if (
                self.drop_last
            ):  # a training step needs every rank: DDP's all-reduce would wait for an empty one
                chunks = [c for c in chunks if len(c) >= self.world]
            chunks = [c.tensor_split(self.world)[self.rank] for c in chunks]
        return chunks

    def _file_loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = DataLoader(
                _Files(self.split, self.spec, self.strict),  # type: ignore[arg-type]
                batch_sampler=self._order,
                num_workers=self.num_workers,
                collate_fn=_collate_for(self.split),  # type: ignore[arg-type]
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.num_workers > 0,
                # Its own generator: each epoch's iterator draws a worker seed, which from the global stream
                # would shift the augmentation draws of a run resumed mid-epoch.
                generator=torch.Generator().manual_seed(0),
            )
        return self._loader

    def epoch(self, skip: int = 0) -> Iterator[Batch]:
        """This epoch's batches from batch `skip` on (the shuffle is drawn here)."""
        chunks = self._chunks(skip)
        if self._resident is not None:
            data = self._resident
            yield from (
                (data.images[i], data.labels[i]) for i in (c.to(self.device) for c in chunks if len(c))
            )
            return
        if isinstance(self.split, TensorSplit):
            batches: Iterator[Batch] = ((self.split.images[i], self.split.labels[i]) for i in chunks)
        else:
            self._order.chunks = [c.tolist() for c in chunks]
            batches = iter(self._file_loader())
        non_blocking = self.device.type == "cuda"
        for x, y in batches:
            if self._take(len(y)):
                yield (
                    x.to(self.device, non_blocking=non_blocking),
                    y.to(self.device, non_blocking=non_blocking),
                )

    def _take(self, n: int) -> bool:
        """Whether to yield a decoded batch of `n` images; in sharded training only if every rank has some
        (a rank whose files all failed to decode would otherwise leave the others waiting in the all-reduce)."""
        if self.world > 1 and self.drop_last:
            return distributed.all_min(n, self.device) > 0
        return n > 0

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch()
