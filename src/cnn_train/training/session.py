"""What a run builds from its config before the first step: data, model, optimizer, schedule, the step.

`build(cfg)` sizes everything from the data (classes, channels, input side), applies transferred weights and
frozen layers, and under torchrun shards the batches and wraps the network in DistributedDataParallel.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnn_train.data.datasets import Dataset, load_from_config
from cnn_train.data.images import EvalTransform
from cnn_train.data.labels import sampler_weights
from cnn_train.data.loaders import Batches, cache_split, should_cache
from cnn_train.data.preprocess import Preprocess
from cnn_train.models import build_model
from cnn_train.runtime.errors import UserError
from cnn_train.runtime.hardware import (
    Speed,
    apply_speed,
    compile_model,
    fast_optimizer_kwargs,
    pick_device,
    resolve_speed,
)
from cnn_train.runtime.world import World
from cnn_train.training import transfer
from cnn_train.training.budget import first_length
from cnn_train.training.distill import Teacher, load_teacher
from cnn_train.training.ema import EMA
from cnn_train.training.engine import TrainStep, show_bars
from cnn_train.training.losses import build_loss
from cnn_train.training.schedules import Schedule

log = logging.getLogger(__name__)


def image_size_for(cfg: DictConfig, data: Dataset) -> int:
    """data.image_size, else the model's stated input side, else the data's own side."""
    size = cfg.data.image_size or cfg.model.image_size or data.native_size
    if size is None:
        raise UserError("data.image_size: must be set for image folders (e.g. data.image_size=224)")
    return int(size)


@dataclass
class Session:
    """Everything a run builds from its config, before the first step."""

    data: Dataset
    spec: EvalTransform
    model_spec: dict[str, Any]
    model: nn.Module  # the weights that train and are saved (in the training memory format)
    eval_model: nn.Module  # a contiguous fp32 copy that validation loads them into: the inference numerics
    step: TrainStep  # one optimizer step: the training network (maybe compiled or DDP), precision, schedule
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    augment: nn.Module
    train_batches: Batches
    val_batches: Batches
    shuffle: torch.Generator
    device: torch.device
    init: str  # where the starting weights came from
    speed: Speed
    scaler: torch.amp.GradScaler | None  # 16-mixed only
    tta: bool
    world: World = field(default_factory=World)
    ema: EMA | None = None  # trainer.ema_decay: the averaged weights validated, saved as best and tested
    teacher: Teacher | None = None  # trainer.distill.teacher: the network the student also learns from

    @property
    def bars(self) -> bool:
        return show_bars(self.world.is_main)

    @property
    def parameter_counts(self) -> tuple[int, int]:
        """(all, trainable) parameters of the network: what the log line and results.json report."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

    @cached_property
    def eval_preprocess(self) -> Preprocess:
        """The eval transform on this device, contiguous: what validation, the test pass and the report feed."""
        return Preprocess(self.spec).to(self.device)

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights a run evaluates and keeps as best.pt: the EMA's when there is one, else the model's."""
        return self.ema.weights() if self.ema is not None else self.model.state_dict()


def _fit_channels(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel statistics for another channel count: averaged for grey, repeated for colour."""
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) if channels == 1 else values[:1] * channels


def _weights_source(m: DictConfig) -> transfer.Source | None:
    if m.pretrained:
        return transfer.imagenet_source(m.name)
    return transfer.file_source(m.weights) if m.weights else None


def _load_data(cfg: DictConfig, source: transfer.Source | None) -> tuple[Dataset, EvalTransform]:
    """The dataset and the eval transform: input side, channels and normalisation (the weights' own, if any)."""
    want = cfg.data.channels
    if source is not None and source.channels == 1:
        want = 1  # grey weights: colour images are converted to grey
    strict = cfg.data.strict
    data = load_from_config(cfg.data, cfg.trainer.seed, want)
    check_labels(cfg, data)
    size = image_size_for(cfg, data)
    # Grey data into colour weights: the model takes one channel and the first conv's kernels are summed.
    channels = 1 if data.channels == 1 or (source is not None and source.channels == 1) else data.channels
    mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
    if source is not None and source.mean is not None:
        mean, std = source.mean, source.std  # the normalisation the weights were trained with
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise UserError(f"data.mean/data.std: {len(mean)} and {len(std)} values; give 1 or 3 of each")
    permute = cfg.data.permute_seed if cfg.data.permute_pixels else None
    spec = EvalTransform(size, channels, _fit_channels(mean, channels), _fit_channels(std, channels), permute)
    cache = cfg.data.cache
    for part in ("train", "val", "test"):
        split = getattr(data, part)
        if split is not None and should_cache(split, spec, cache):
            setattr(data, part, cache_split(split, spec, int(cfg.data.num_workers), strict))
            n = len(getattr(data, part))
            log.info("data.cache: decoded %d %s images once into memory at %d px", n, part, size)
    return data, spec


def check_labels(cfg: DictConfig, data: Dataset) -> None:
    """Settings that need multi-label data, or single-label data, checked as soon as the data says which it
    is (a CSV's label column decides): before anything is built or trained."""
    tr = cfg.trainer
    if data.multi_label:
        if tr.class_weights:
            raise UserError(
                f"trainer.class_weights: {data.name} is multi-label; its classes are weighted by "
                "trainer.pos_weight=balanced"
            )
        if tr.distill.teacher:
            raise UserError(
                f"trainer.distill.teacher: {data.name} is multi-label; distillation matches a teacher's softmax "
                "over one class per image"
            )
        return
    needs = {
        "trainer.pos_weight": tr.pos_weight is not None,
        "trainer.early_stopping.monitor": tr.early_stopping.monitor == "val_map",
        "optimized_metric": str(cfg.optimized_metric).endswith("_map"),
    }
    for key, used in needs.items():
        if used:
            raise UserError(
                f"{key}: {OmegaConf.select(cfg, key)} needs multi-label data ({data.name} has one label per "
                "image; data.multi_label=true makes it multi-label)"
            )


def _batches(cfg: DictConfig, data: Dataset, spec: EvalTransform, device: torch.device, world: World,
             shuffle: torch.Generator) -> tuple[Batches, Batches]:  # fmt: skip
    """This rank's training and validation batches (its shard of every global batch under torchrun)."""
    tr, bs, workers = cfg.trainer, int(cfg.data.batch_size), int(cfg.data.num_workers)
    weights = sampler_weights(data.train.label_sets()) if cfg.data.sampler == "balanced" else None
    common = {
        "num_workers": workers,
        "strict": cfg.data.strict,
        "shard": (world.rank, world.size),
    }
    train = Batches(data.train, spec, bs, device, shuffle=True, drop_last=True, generator=shuffle,
                    limit=tr.limit_train_batches, weights=weights, **common)  # fmt: skip
    val = Batches(data.val, spec, bs, device, limit=tr.limit_val_batches, **common)
    return train, val


def _distribute(model: nn.Module, cfg: DictConfig, world: World, device: torch.device) -> nn.Module:
    """The network the steps run: the model itself, or DistributedDataParallel around it under torchrun."""
    if not world.active:
        return model
    if cfg.trainer.sync_batchnorm:
        if device.type != "cuda":
            raise UserError("trainer.sync_batchnorm: needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def build(cfg: DictConfig, world: World | None = None, device: torch.device | None = None) -> Session:
    """Data, model (with transferred weights and frozen layers), optimizer and schedule, sized from the data.

    Under torchrun (`world.active`) the batches are this rank's shard of each global batch of
    `data.batch_size`, and the network runs inside DistributedDataParallel.
    """
    tr, m = cfg.trainer, cfg.model
    world = world or World()
    device = device or pick_device(tr.device)
    if world.active and int(cfg.data.batch_size) % world.size:
        raise UserError(
            f"data.batch_size: {cfg.data.batch_size} (the global batch) must divide by the {world.size} processes"
        )
    speed = resolve_speed(tr, device)
    apply_speed(speed, device, bool(tr.deterministic))
    source = _weights_source(m)
    data, spec = _load_data(cfg, source)
    args = OmegaConf.to_container(m.args, resolve=True)
    kwargs = {
        "num_classes": len(data.classes),
        "in_channels": spec.channels,
        "image_size": spec.image_size,
        **args,
    }
    model_spec = {"name": m.name, "kwargs": kwargs}
    model = build_model(m.name, **kwargs)
    if source is not None:
        transfer.load_source(model, source)
    transfer.freeze(model, m.finetune, int(m.trainable_layers))
    eval_model = copy.deepcopy(model).to(device).eval()  # contiguous fp32, whatever the training copy becomes
    model = model.to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    shuffle = torch.Generator().manual_seed(tr.seed)
    train_batches, val_batches = _batches(cfg, data, spec, device, world, shuffle)
    factory = instantiate(cfg.optimizer)
    fast = fast_optimizer_kwargs(factory, device, dict(cfg.optimizer))
    optimizer = factory(params=param_groups(model, tr.decay_norm_and_bias), **fast)
    steps = optimizer_steps(len(train_batches), tr.accumulate_grad_batches)  # per epoch
    schedule = Schedule(instantiate(cfg.scheduler), optimizer, first_length(tr) * steps, steps)
    augment = instantiate(cfg.augmentation, num_classes=len(data.classes))  # mixup/cutmix: soft labels
    scaler = torch.amp.GradScaler(device.type) if speed.precision == "16-mixed" else None
    loss = build_loss(tr, data, device)
    net = compile_model(_distribute(model, cfg, world, device), speed)
    preprocess = Preprocess(spec, speed.channels_last).to(device)
    ema = EMA(model, float(tr.ema_decay)) if tr.ema_decay is not None else None
    teacher = load_teacher(tr.distill, data.classes, spec, device)
    step = TrainStep(net, preprocess, augment, optimizer, schedule, loss, speed.precision, scaler,
                     tr.grad_clip_norm, int(tr.accumulate_grad_batches), ema, teacher, data.multi_label)  # fmt: skip
    return Session(
        data, spec, model_spec, model, eval_model, step, optimizer, schedule, augment, train_batches, val_batches,
        shuffle, device, source.origin if source is not None else "scratch", speed, scaler, bool(tr.tta), world,
        ema, teacher,
    )  # fmt: skip


def param_groups(model: nn.Module, decay_norm_and_bias: bool) -> list[dict[str, Any]]:
    """The trainable parameters; without `decay_norm_and_bias`, norms and biases get no weight decay.

    Decay pulls a BatchNorm scale or a bias towards zero without regularising anything (timm's
    `param_groups_weight_decay`, torchvision's `norm_weight_decay=0`): every 0- and 1-dimensional tensor
    is one of those.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params}]
    groups = [{"params": [p for p in params if p.ndim > 1]},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]  # fmt: skip
    return [g for g in groups if g["params"]]


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of `batches` batches, one per `accumulate` (the last group may be short)."""
    return -(-batches // accumulate)
