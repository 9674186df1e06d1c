"""fit(cfg, run_dir): the whole training run, callable from the CLI, a sweep or a test."""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnn_train import checkpoint, distributed, files, plots, transfer
from cnn_train.data.datasets import Dataset, load_dataset
from cnn_train.data.loaders import Batches, cache_split, should_cache
from cnn_train.data.transforms import EvalTransform, Preprocess
from cnn_train.distributed import World, world_from_env
from cnn_train.engine import EpochProgress, evaluate, train_one_epoch
from cnn_train.errors import UserError
from cnn_train.hardware import (
    Speed,
    apply_speed,
    compile_model,
    fast_optimizer_kwargs,
    pick_device,
    resolve_speed,
)
from cnn_train.interrupts import Interrupted, StopRequests
from cnn_train.loggers import CsvLogger
from cnn_train.models import build_model, min_image_size

log = logging.getLogger(__name__)
OPTIMIZABLE = ("best_val_acc", "test_acc", "test_loss", "wall_seconds")  # results a sweeper may optimize


def check_config(cfg: DictConfig) -> None:
    """Catch bad values before any data is read, naming the key."""
    min_image_size(cfg.model.name)  # unknown model names fail here, listing the valid ones
    checks = [
        ("optimizer.lr", cfg.optimizer.lr, lambda v: v > 0, "must be > 0"),
        ("data.batch_size", cfg.data.batch_size, lambda v: int(v) == v and v >= 1, "must be an integer ≥ 1"),
        ("data.val_split", cfg.data.val_split, lambda v: 0 < v < 1, "must lie strictly between 0 and 1"),
        ("trainer.max_epochs", cfg.trainer.max_epochs, lambda v: v >= 1, "must be ≥ 1"),
        ("data.num_workers", cfg.data.num_workers, lambda v: v >= 0, "must be ≥ 0"),
    ]
    for key, value, ok, why in checks:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
            raise UserError(f"{key}: {value!r} {why}")
    metric = cfg.get("optimized_metric", "best_val_acc")
    if metric not in OPTIMIZABLE:
        raise UserError(f"optimized_metric: {metric!r} is not one of {', '.join(OPTIMIZABLE)}")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = cfg.trainer.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"trainer.{key}: {value!r} must be a whole number of batches ≥ 1, or null")
    if cfg.data.name == "image_folder" and not Path(str(cfg.data.root)).expanduser().is_dir():
        raise UserError(
            f"data.root: {cfg.data.root} does not exist (image_folder needs a folder of class folders)"
        )


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def image_size_for(cfg: DictConfig, data: Dataset) -> int:
    """data.image_size, else the model's stated input side, else the data's own side."""
    size = cfg.data.get("image_size") or cfg.model.get("image_size") or data.native_size
    if size is None:
        raise UserError("data.image_size: must be set for image folders (e.g. data.image_size=224)")
    return int(size)


@dataclass
class Session:
    """Everything a run builds from its config, before the first step."""

    data: Dataset
    spec: EvalTransform
    model_spec: dict[str, Any]
    model: nn.Module  # the weights that are saved
    net: nn.Module  # what runs them: the model, or its torch.compile'd forward
    preprocess: Preprocess
    augment: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_batches: Batches
    val_batches: Batches
    shuffle: torch.Generator
    device: torch.device
    init: str  # where the starting weights came from
    speed: Speed
    scaler: torch.amp.GradScaler | None  # 16-mixed only
    world: World = field(default_factory=World)


def _fit_channels(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel statistics for another channel count: averaged for grey, repeated for colour."""
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) if channels == 1 else values[:1] * channels


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
    apply_speed(speed, device, bool(tr.get("deterministic", False)))
    source = None
    if m.get("pretrained"):
        source = transfer.imagenet_source(m.name)
    elif m.get("weights"):
        source = transfer.file_source(m.weights)
    strict = bool(cfg.data.get("strict", False))
    want = cfg.data.get("channels", 3)
    if source is not None and source.channels == 1:
        want = 1  # grey weights: colour images are converted to grey
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.val_split, tr.seed, want, strict)
    size = image_size_for(cfg, data)
    # Grey data into colour weights: the model takes one channel and the first conv's kernels are summed.
    channels = 1 if data.channels == 1 or (source is not None and source.channels == 1) else data.channels
    mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
    if source is not None and source.mean is not None:
        mean, std = source.mean, source.std  # the normalisation the weights were trained with
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise UserError(f"data.mean/data.std: {len(mean)} and {len(std)} values; give 1 or 3 of each")
    spec = EvalTransform(size, channels, _fit_channels(mean, channels), _fit_channels(std, channels))
    args = OmegaConf.to_container(m.args, resolve=True) if "args" in m else {}
    kwargs = {"num_classes": len(data.classes), "in_channels": channels, "image_size": size, **args}
    model_spec = {"name": m.name, "kwargs": kwargs}
    model = build_model(m.name, **kwargs)
    if source is not None:
        transfer.load_source(model, source)
    transfer.freeze(model, m.get("finetune", "full"), int(m.get("trainable_layers", 1)))
    model = model.to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    shuffle = torch.Generator().manual_seed(tr.seed)
    bs, workers = int(cfg.data.batch_size), int(cfg.data.num_workers)
    cache = cfg.data.get("cache", "auto")
    for part in ("train", "val", "test"):
        split = getattr(data, part)
        if split is not None and should_cache(split, spec, cache):
            setattr(data, part, cache_split(split, spec, workers, strict))
            n = len(getattr(data, part))
            log.info("data.cache: decoded %d %s images once into memory at %d px", n, part, size)
    shard = (world.rank, world.size)
    train_batches = Batches(
        data.train, spec, bs, device, shuffle=True, drop_last=True, generator=shuffle, num_workers=workers,
        limit=tr.limit_train_batches, strict=strict, shard=shard,
    )  # fmt: skip
    val_batches = Batches(
        data.val, spec, bs, device, num_workers=workers, limit=tr.limit_val_batches, strict=strict, shard=shard,
    )  # fmt: skip
    factory = instantiate(cfg.optimizer)
    fast = fast_optimizer_kwargs(factory, device, dict(cfg.optimizer))
    optimizer = factory(params=[p for p in model.parameters() if p.requires_grad], **fast)
    steps = len(train_batches)
    scheduler = instantiate(cfg.scheduler)(
        optimizer, total_steps=tr.max_epochs * steps, steps_per_epoch=steps
    )
    augment = instantiate(cfg.augmentation)
    preprocess = Preprocess(spec, speed.channels_last).to(device)
    scaler = torch.amp.GradScaler(device.type) if speed.precision == "16-mixed" else None
    net: nn.Module = model
    if world.active:
        if tr.get("sync_batchnorm", False):
            if device.type != "cuda":
                raise UserError(
                    "trainer.sync_batchnorm: needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Session(
        data, spec, model_spec, model, compile_model(net, speed), preprocess, augment, optimizer, scheduler,
        train_batches, val_batches, shuffle, device, source.origin if source is not None else "scratch", speed,
        scaler, world,
    )  # fmt: skip


def _global(progress: EpochProgress, device: torch.device) -> EpochProgress:
    """This epoch's sums over every process (the progress itself for one process)."""
    if not distributed.active():
        return progress
    sums = torch.tensor(
        [progress.loss_sum, progress.correct, progress.seen], device=device, dtype=torch.float64
    )
    distributed.all_sum(sums)
    loss_sum, correct, seen = sums.tolist()
    return replace(progress, loss_sum=loss_sum, correct=int(correct), seen=int(seen))


def fit(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train, keep best.pt/last.pt/metrics.csv current, then test the best weights.

    last.pt is written at every epoch end, every `trainer.checkpoint_every_n_steps` steps, and on SIGINT or
    SIGTERM (then `Interrupted` is raised); a resumed run continues mid-epoch exactly where it stopped.
    Under torchrun every rank calls this; rank 0 alone writes files, and all return the same results.
    """
    started = time.perf_counter()
    check_config(cfg)
    tr = cfg.trainer
    world = world_from_env()
    device = distributed.init(world, pick_device(tr.device))
    run_dir = Path(distributed.broadcast(str(run_dir)))  # ranks started in different seconds agree on one
    main = world.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(tr.seed, tr.get("deterministic", False))
    s = build(cfg, world, device)
    precision, tta = s.speed.precision, bool(tr.get("tta", False))
    n_params = sum(p.numel() for p in s.model.parameters())
    n_train = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    log.info(
        "%s on %s: %d classes, %d×%d×%d input, %s of %s parameters trainable, %d train / %d val images, device %s",
        cfg.model.name, s.data.name, len(s.data.classes), s.spec.channels, s.spec.image_size, s.spec.image_size,
        f"{n_train:,}", f"{n_params:,}", len(s.data.train), len(s.data.val), s.device,
    )  # fmt: skip
    log.info("speed: %s%s", s.speed.describe(), f", {world.size} processes" if world.active else "")
    common = {
        "model": s.model_spec, "classes": s.data.classes, "eval_transform": s.spec.to_dict(),
        "config": OmegaConf.to_container(cfg, resolve=True), "init": s.init,
    }  # fmt: skip
    history: list[dict[str, Any]] = []
    best_acc, best_epoch, start_epoch, partial = -1.0, 0, 1, None
    resume = checkpoint.find_resume(tr.get("resume"), run_dir, Path(str(cfg.get("output_root", "outputs"))))
    if resume is not None:
        last = checkpoint.load(resume)
        if last["model"] != s.model_spec:
            raise UserError(
                f"trainer.resume: {resume} holds {last['model']['name']} {last['model']['kwargs']}, "
                f"but this run builds {s.model_spec['name']} {s.model_spec['kwargs']}"
            )
        s.model.load_state_dict(last["state_dict"])
        s.optimizer.load_state_dict(last["optimizer"])
        s.scheduler.load_state_dict(last["scheduler"])
        if s.scaler is not None and last.get("scaler"):
            s.scaler.load_state_dict(last["scaler"])
        checkpoint.set_rng_state(last["rng"], s.shuffle)
        history, best_acc, best_epoch = last["history"], last["best_val_acc"], last["best_epoch"]
        start_epoch, partial = last["epoch"] + 1, last.get("partial")
        if partial is not None and not main:  # the saved sums are global: rank 0 carries them on
            partial = {**partial, "loss_sum": 0.0, "correct": 0, "seen": 0}
        if main and resume.parent.resolve() != run_dir.resolve() and (resume.parent / "best.pt").is_file():
            shutil.copy2(resume.parent / "best.pt", run_dir / "best.pt")
        where = f"epoch {start_epoch}" + (f", step {partial['step'] + 1}" if partial else "")
        log.info("resumed from %s at %s", resume, where)

    if not main:  # same weights (DDP copies rank 0's), different augmentation and dropout draws
        torch.manual_seed(tr.seed + 7919 * world.rank + start_epoch)
    tracker = None
    if main:
        files.write_json(run_dir / "class_indices.json", {str(i): c for i, c in enumerate(s.data.classes)})
        plot_samples(s, run_dir / "samples.png")
        tracker = instantiate(cfg.logger)(run_dir=run_dir) if "logger" in cfg else CsvLogger(run_dir)
        tracker.log_config(common["config"])
    every = tr.get("checkpoint_every_n_steps") or 0
    loss = nn.CrossEntropyLoss(label_smoothing=tr.get("label_smoothing", 0.0))

    def save_last(epoch_done: int, extra: dict[str, Any]) -> None:
        if not main:
            return
        checkpoint.save(
            run_dir / "last.pt",
            {
                **common, "state_dict": s.model.state_dict(), "epoch": epoch_done,
                "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
                "rng": checkpoint.rng_state(s.shuffle), "history": history, "best_val_acc": best_acc,
                "best_epoch": best_epoch, "scaler": s.scaler.state_dict() if s.scaler else None, **extra,
            },
        )  # fmt: skip

    with StopRequests() as stop:

        def stop_signal() -> int | None:
            """The signal any process got; every rank must agree, or one would wait for the others forever."""
            if not world.active:
                return stop.signum
            return distributed.all_max(stop.signum or 0, s.device) or None

        for epoch in range(start_epoch, tr.max_epochs + 1):
            if partial is not None:  # replay this epoch's shuffle, skip the batches already trained
                s.shuffle.set_state(partial["shuffle_state"])
                progress = EpochProgress(**{k: v for k, v in partial.items() if k != "shuffle_state"})
                partial = None
            else:
                progress = EpochProgress(epoch, lr=s.optimizer.param_groups[0]["lr"])
            epoch_start = s.shuffle.get_state()

            def after_step(
                step: int, snapshot: Callable[[], EpochProgress], epoch: int = epoch, epoch_start=epoch_start
            ) -> None:
                signum = stop_signal()
                if signum is None and not (every and step % every == 0):
                    return
                now = _global(snapshot(), s.device)
                save_last(epoch - 1, {"partial": {**asdict(now), "shuffle_state": epoch_start}})
                if signum is not None:
                    raise Interrupted(signum, epoch, step, run_dir / "last.pt")

            done = train_one_epoch(
                s.net, s.train_batches.epoch(skip=progress.step), s.preprocess, s.augment, s.optimizer,
                s.scheduler, loss, precision, progress, after_step, total_steps=len(s.train_batches),
                scaler=s.scaler,
            )  # fmt: skip
            done = _global(done, s.device)
            train = done.summary()
            distributed.sync_buffers(s.model)
            val = evaluate(s.net, s.val_batches, s.preprocess, precision, desc="val", tta=tta)
            row = {
                "epoch": epoch, "train_loss": round(train["loss"], 5), "train_acc": round(train["acc"], 5),
                "val_loss": round(val["loss"], 5), "val_acc": round(val["acc"], 5), "lr": done.lr,
                "seconds": round(train["seconds"], 2), "images_per_s": round(train["images"] / train["seconds"], 1),
            }  # fmt: skip
            history.append(row)
            metrics = {"val_acc": val["acc"], "val_loss": val["loss"], "train_acc": train["acc"]}
            if val["acc"] > best_acc:
                best_acc, best_epoch = val["acc"], epoch
                if main:
                    best = {**common, "state_dict": s.model.state_dict(), "epoch": epoch, "metrics": metrics}
                    checkpoint.save(run_dir / "best.pt", best)
            save_last(epoch, {"metrics": metrics})
            if tracker is not None:  # rank 0
                tracker.log_epoch(history)
                plots.plot_curves(history, run_dir / "curves.png")
            log.info(
                "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.3g  %.1fs  %.0f img/s",
                epoch, tr.max_epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
                done.lr, row["seconds"], row["images_per_s"],
            )  # fmt: skip
            signum = stop_signal()
            if signum is not None:
                raise Interrupted(signum, epoch, done.step, run_dir / "last.pt")
        distributed.barrier()  # best.pt is on disk before any rank reads it
        test_acc, test_loss = test_best(cfg, s, run_dir, precision, tta)
    results = {
        "model": cfg.model.name, "data": s.data.name, "test_acc": test_acc, "test_loss": test_loss,
        "best_val_acc": best_acc, "best_epoch": best_epoch, "epochs": tr.max_epochs, "parameters": n_params,
        "trainable_parameters": n_train, "precision": precision, "channels_last": s.speed.channels_last,
        "compile": s.speed.compile, "threads": s.speed.threads, "tta": tta, "processes": world.size,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip
    if tracker is not None:  # rank 0
        files.write_json(run_dir / "results.json", results)
        tracker.log_best(run_dir / "best.pt")
        tracker.close()
    return results


def plot_samples(s: Session, path: Path, n: int = 32) -> None:
    """The first training images after augmentation, named; on a forked RNG so training draws the same."""
    first = s.data.train.subset(torch.arange(min(n, len(s.data.train))))
    with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
        x, y = next(iter(Batches(first, s.spec, n, s.device)))
        images = s.preprocess.unit(x, s.augment)
    plots.plot_grid(images, [s.data.classes[i] for i in y.tolist()], path)


def test_best(
    cfg: DictConfig, s: Session, run_dir: Path, precision: str, tta: bool = False
) -> tuple[float | None, float | None]:
    """Accuracy and loss of best.pt on the test split, if the data has one."""
    if s.data.test is None:
        return None, None
    s.model.load_state_dict(checkpoint.load(run_dir / "best.pt")["state_dict"])
    batches = Batches(
        s.data.test, s.spec, int(cfg.data.batch_size), s.device, num_workers=int(cfg.data.num_workers),
        limit=cfg.trainer.limit_test_batches, shard=(s.world.rank, s.world.size),
    )  # fmt: skip
    test = evaluate(s.net, batches, s.preprocess, precision, desc="test", tta=tta)
    return test["acc"], test["loss"]
