"""fit(cfg, run_dir): the whole training run, callable from the CLI, a sweep or a test."""

from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnn_train import checkpoint, files
from cnn_train.data.datasets import Dataset, load_dataset
from cnn_train.data.loaders import Batches
from cnn_train.data.transforms import EvalTransform, Preprocess
from cnn_train.engine import evaluate, pick_device, train_one_epoch
from cnn_train.errors import UserError
from cnn_train.models import build_model, min_image_size

log = logging.getLogger(__name__)


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
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = cfg.trainer.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"trainer.{key}: {value!r} must be a whole number of batches ≥ 1, or null")
    if str(cfg.trainer.precision) not in ("32", "bf16", "16-mixed"):
        raise UserError(f"trainer.precision: {cfg.trainer.precision} is not one of 32, bf16, 16-mixed")
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


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resume(resume: str | None, run_dir: Path, outputs: Path) -> Path | None:
    """`auto`: this run dir's last.pt, else the newest last.pt of an unfinished run under `outputs`."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        if not path.is_file():
            raise UserError(f"trainer.resume: {path} does not exist")
        return path
    if (run_dir / "last.pt").is_file():
        return run_dir / "last.pt"
    unfinished = [p for p in outputs.rglob("last.pt") if not (p.parent / "results.json").exists()]
    if not unfinished:
        log.info("trainer.resume=auto: no interrupted run under %s, starting fresh", outputs)
        return None
    return max(unfinished, key=lambda p: p.stat().st_mtime)


def fit(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train, keep best.pt/last.pt/metrics.csv current every epoch, then test the best weights."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_config(cfg)
    tr = cfg.trainer
    seed_everything(tr.seed, tr.get("deterministic", False))
    device = pick_device(tr.device)
    precision = str(tr.precision)  # the command line turns 32 into an int
    data = load_dataset(
        cfg.data.name, cfg.data.root, cfg.data.val_split, tr.seed, cfg.data.get("channels", 3)
    )
    size = image_size_for(cfg, data)
    spec = EvalTransform(size, data.channels, tuple(cfg.data.mean), tuple(cfg.data.std))
    if len(spec.mean) != data.channels:
        raise UserError(f"data.mean: {len(spec.mean)} values for {data.channels}-channel images")
    model_spec = {
        "name": cfg.model.name,
        "kwargs": {
            "num_classes": len(data.classes),
            "in_channels": data.channels,
            "image_size": size,
            **(OmegaConf.to_container(cfg.model.args, resolve=True) if "args" in cfg.model else {}),
        },
    }
    model = build_model(model_spec["name"], **model_spec["kwargs"]).to(device)
    preprocess = Preprocess(spec).to(device)
    augment = instantiate(cfg.augmentation)
    shuffle_gen = torch.Generator().manual_seed(tr.seed)
    bs, workers = int(cfg.data.batch_size), int(cfg.data.num_workers)
    train_batches = Batches(
        data.train, spec, bs, device, shuffle=True, drop_last=True, generator=shuffle_gen,
        num_workers=workers, limit=tr.limit_train_batches,
    )  # fmt: skip
    val_batches = Batches(data.val, spec, bs, device, num_workers=workers, limit=tr.limit_val_batches)
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    steps = len(train_batches)
    scheduler = instantiate(cfg.scheduler)(
        optimizer, total_steps=tr.max_epochs * steps, steps_per_epoch=steps
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tr.get("label_smoothing", 0.0))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "%s on %s: %d classes, %d×%d×%d input, %s parameters, %d train / %d val images, device %s",
        cfg.model.name, data.name, len(data.classes), data.channels, size, size, f"{n_params:,}",
        len(data.train), len(data.val), device,
    )  # fmt: skip

    history: list[dict[str, Any]] = []
    best_acc, best_epoch, start_epoch = -1.0, 0, 1
    resume = find_resume(tr.get("resume"), run_dir, Path(str(cfg.get("output_root", "outputs"))))
    if resume is not None:
        last = checkpoint.load(resume)
        model.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        _set_rng_state(last["rng"], shuffle_gen)
        history, best_acc, best_epoch = last["history"], last["best_val_acc"], last["best_epoch"]
        start_epoch = last["epoch"] + 1
        if resume.parent.resolve() != run_dir.resolve() and (resume.parent / "best.pt").is_file():
            shutil.copy2(resume.parent / "best.pt", run_dir / "best.pt")
        log.info("resumed from %s at epoch %d", resume, start_epoch)

    files.write_json(run_dir / "class_indices.json", {str(i): c for i, c in enumerate(data.classes)})
    common = {
        "model": model_spec,
        "classes": data.classes,
        "eval_transform": spec.to_dict(),
        "config": resolved,
    }
    for epoch in range(start_epoch, tr.max_epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(
            model, train_batches, preprocess, augment, optimizer, scheduler, loss_fn, precision, epoch
        )
        val = evaluate(model, val_batches, preprocess, precision, desc="val")
        row = {
            "epoch": epoch, "train_loss": round(train["loss"], 5), "train_acc": round(train["acc"], 5),
            "val_loss": round(val["loss"], 5), "val_acc": round(val["acc"], 5), "lr": lr,
            "seconds": round(train["seconds"], 2), "images_per_s": round(train["images"] / train["seconds"], 1),
        }  # fmt: skip
        history.append(row)
        metrics = {"val_acc": val["acc"], "val_loss": val["loss"], "train_acc": train["acc"]}
        if val["acc"] > best_acc:
            best_acc, best_epoch = val["acc"], epoch
            checkpoint.save(
                run_dir / "best.pt",
                {**common, "state_dict": model.state_dict(), "epoch": epoch, "metrics": metrics},
            )
        checkpoint.save(
            run_dir / "last.pt",
            {
                **common, "state_dict": model.state_dict(), "epoch": epoch, "metrics": metrics,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state(shuffle_gen), "history": history, "best_val_acc": best_acc,
                "best_epoch": best_epoch,
            },
        )  # fmt: skip
        files.write_csv(run_dir / "metrics.csv", history)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.3g  %.1fs  %.0f img/s",
            epoch, tr.max_epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
            lr, row["seconds"], row["images_per_s"],
        )  # fmt: skip

    test_acc = test_loss = None
    if data.test is not None:
        best = checkpoint.load(run_dir / "best.pt")
        model.load_state_dict(best["state_dict"])
        test_batches = Batches(data.test, spec, bs, device, num_workers=workers, limit=tr.limit_test_batches)
        test = evaluate(model, test_batches, preprocess, precision, desc="test")
        test_acc, test_loss = test["acc"], test["loss"]
    results = {
        "model": cfg.model.name,
        "data": data.name,
        "test_acc": test_acc,
        "test_loss": test_loss,
        "best_val_acc": best_acc,
        "best_epoch": best_epoch,
        "epochs": tr.max_epochs,
        "parameters": n_params,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    files.write_json(run_dir / "results.json", results)
    return results
