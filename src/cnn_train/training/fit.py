"""fit(cfg, run_dir): the whole training run, callable from the CLI, a sweep or a test."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnn_train.analysis import plots
from cnn_train.analysis.multilabel import set_titles
from cnn_train.config import check_target_keys
from cnn_train.data.labels import SAMPLERS, check_folds
from cnn_train.data.loaders import Batches
from cnn_train.data.preprocess import Preprocess
from cnn_train.data.table import LabelFile
from cnn_train.inference import checkpoint
from cnn_train.inference.infer import INFERENCE
from cnn_train.models import min_image_size
from cnn_train.reports.run import TestRecord, after_run
from cnn_train.runtime import distributed
from cnn_train.runtime.errors import Interrupted, UserError
from cnn_train.runtime.hardware import pick_device
from cnn_train.runtime.interrupts import StopRequests
from cnn_train.runtime.loggers import CsvLogger
from cnn_train.runtime.world import world_from_env
from cnn_train.training import lrfind
from cnn_train.training.budget import Plan, check_plan, relative_test_size
from cnn_train.training.engine import EpochProgress, evaluate, evaluate_sets, train_one_epoch
from cnn_train.training.profiling import StepProfiler
from cnn_train.training.rundir import RunDir
from cnn_train.training.session import Session, build
from cnn_train.training.stopping import MODES as STOP_MODES
from cnn_train.training.stopping import Deadline, parse_duration, should_stop_early

log = logging.getLogger(__name__)
# results a sweeper may optimize (the _map ones: multi-label runs)
OPTIMIZABLE = ("best_val_acc", "test_acc", "test_loss", "wall_seconds", "best_val_map", "test_map")


def check_config(cfg: DictConfig) -> None:
    """Catch bad values before any data is read, naming the key."""
    min_image_size(cfg.model.name)  # unknown model names fail here, listing the valid ones
    # The _target_ groups' keys are their targets' arguments: a typo fails here, not deep in a constructor.
    for group in ("optimizer", "scheduler", "augmentation", "logger"):
        if group in cfg:
            check_target_keys(cfg[group], group)
    checks = [
        ("optimizer.lr", cfg.optimizer.lr, lambda v: v > 0, "must be > 0"),
        ("data.batch_size", cfg.data.batch_size, lambda v: int(v) == v and v >= 1, "must be an integer ≥ 1"),
        ("data.val_split", cfg.data.val_split, lambda v: 0 < v < 1, "must lie strictly between 0 and 1"),
        ("trainer.max_epochs", cfg.trainer.max_epochs, lambda v: v >= 1, "must be ≥ 1"),
        ("data.num_workers", cfg.data.num_workers, lambda v: v >= 0, "must be ≥ 0"),
        ("trainer.profile_steps", cfg.trainer.profile_steps, lambda v: v >= 1, "must be a whole number ≥ 1"),
        (
            "trainer.accumulate_grad_batches",
            cfg.trainer.accumulate_grad_batches,
            lambda v: v >= 1,
            "must be ≥ 1",
        ),
    ]
    optional = [
        (
            "trainer.ema_decay",
            cfg.trainer.ema_decay,
            lambda v: 0 < v < 1,
            "must lie strictly between 0 and 1",
        ),
        ("trainer.grad_clip_norm", cfg.trainer.grad_clip_norm, lambda v: v > 0, "must be > 0"),
        (
            "trainer.early_stopping.patience",
            cfg.trainer.early_stopping.patience,
            lambda v: v >= 1,
            "must be ≥ 1",
        ),
    ]
    checks += [c for c in optional if c[1] is not None]
    for key, value, ok, why in checks:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
            raise UserError(f"{key}: {value!r} {why}")
    for key in ("class_weights", "pos_weight"):
        if cfg.trainer[key] not in (None, "balanced"):
            raise UserError(f"trainer.{key}: {cfg.trainer[key]!r} is not null or balanced")
    if (monitor := cfg.trainer.early_stopping.monitor) not in STOP_MODES:
        raise UserError(f"trainer.early_stopping.monitor: {monitor!r} is not one of {', '.join(STOP_MODES)}")
    parse_duration(cfg.trainer.max_time)
    check_plan(cfg.trainer)
    check_distill(cfg.trainer.distill)
    metric = cfg.optimized_metric
    if metric not in OPTIMIZABLE:
        raise UserError(f"optimized_metric: {metric!r} is not one of {', '.join(OPTIMIZABLE)}")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = cfg.trainer[key]
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"trainer.{key}: {value!r} must be a whole number of batches ≥ 1, or null")
    if cfg.data.name == "image_folder" and not Path(str(cfg.data.root)).expanduser().is_dir():
        raise UserError(
            f"data.root: {cfg.data.root} does not exist (image_folder needs a folder of class folders)"
        )
    if (table := LabelFile.from_config(cfg.data)) is not None and not table.file.is_file():
        raise UserError(f"data.file: {table.file} does not exist")
    check_folds(cfg.data.folds, cfg.data.fold)
    if cfg.data.sampler not in SAMPLERS:
        raise UserError(f"data.sampler: {cfg.data.sampler!r} is not one of {', '.join(SAMPLERS)}")


def check_distill(d: DictConfig) -> None:
    """trainer.distill: the teacher file exists and the weights make sense, before any data is read."""
    if not d.teacher:
        return
    if not Path(str(d.teacher)).expanduser().is_file():
        raise UserError(f"trainer.distill.teacher: {d.teacher} does not exist (give a trained best.pt)")
    if not 0 <= d.alpha <= 1:
        raise UserError(f"trainer.distill.alpha: {d.alpha} must lie between 0 and 1 (the teacher's share)")
    if not d.temperature > 0:
        raise UserError(f"trainer.distill.temperature: {d.temperature} must be > 0")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


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


@dataclass
class TrainState:
    """Where the run stands between epochs: what last.pt restores besides weights, optimizer and schedule."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)  # the best epoch's validation loss, acc (and map)
    best_epoch: int = 0
    epoch: int = 0  # epochs finished
    partial: dict[str, Any] | None = (
        None  # the unfinished epoch's progress and shuffle, from a mid-epoch last.pt
    )
    monitor: str = "acc"  # the validation metric that picks best.pt: acc, or map (multi-label data)

    @property
    def best_val_acc(self) -> float:
        return self.best.get("acc", -1.0)

    @property
    def best_value(self) -> float:
        """The monitored metric's best value so far (-1 before the first epoch)."""
        value = self.best.get(self.monitor)
        return -1.0 if value is None else value

    def begin(self, epoch: int, s: Session) -> EpochProgress:
        """A new epoch's progress, or the saved one's: its shuffle replayed, the batches done skipped."""
        if self.partial is None:
            return EpochProgress(epoch, lr=s.optimizer.param_groups[0]["lr"])
        s.shuffle.set_state(self.partial["shuffle_state"])
        progress = EpochProgress(**{k: v for k, v in self.partial.items() if k != "shuffle_state"})
        self.partial = None
        return progress

    def record(self, done: EpochProgress, val: dict[str, float]) -> tuple[dict[str, Any], bool]:
        """The epoch's metrics row, and whether it is the best so far."""
        train = done.summary()
        row = {
            "epoch": done.epoch, "train_loss": round(train["loss"], 5), "train_acc": round(train["acc"], 5),
            "val_loss": round(val["loss"], 5), "val_acc": round(val["acc"], 5), "lr": done.lr,
            "seconds": round(train["seconds"], 2), "images_per_s": round(train["images"] / train["seconds"], 1),
        }  # fmt: skip
        if "map" in val:  # multi-label: mean average precision, what picks best.pt
            row["val_map"] = None if val["map"] is None else round(val["map"], 5)
        self.history.append(row)
        self.epoch = done.epoch
        value = val.get(self.monitor)
        improved = (-1.0 if value is None else value) > self.best_value or not self.best
        if improved:
            self.best = {k: val[k] for k in ("loss", "acc", "map") if k in val}
            self.best_epoch = done.epoch
        return row, improved


@dataclass
class Checkpoints:
    """best.pt and last.pt of this run: the self-describing payloads, written through the run dir."""

    run: RunDir
    s: Session
    state: TrainState
    plan: Plan
    common: dict[str, Any]

    def best(self, epoch: int, metrics: dict[str, float], thresholds: list[float] | None = None) -> None:
        """best.pt; a multi-label run's carries the per-class thresholds tuned on validation for its weights."""
        self.run.save("best.pt", {**self.common, "state_dict": self.s.weights(), "epoch": epoch,
                                  "metrics": metrics, "thresholds": thresholds})  # fmt: skip

    def last(self, epoch_done: int, **extra: Any) -> None:
        s, st = self.s, self.state
        self.run.save("last.pt", {
            **self.common, "state_dict": s.model.state_dict(), "epoch": epoch_done,
            "optimizer": s.optimizer.state_dict(), "scheduler": s.schedule.state_dict(),
            "rng": checkpoint.rng_state(s.shuffle), "history": st.history, "best_val_acc": st.best_val_acc,
            "best": st.best, "best_epoch": st.best_epoch, "scaler": s.scaler.state_dict() if s.scaler else None,
            "ema": s.ema.state_dict() if s.ema else None, "plan": self.plan.state_dict(), **extra,
        })  # fmt: skip


class MidEpoch:
    """After every step: on a stop signal, every `every` steps, or when the time budget is spent, last.pt
    takes the epoch's progress so far. A signal raises `Interrupted`; the budget ends the epoch (returns True).
    """

    def __init__(
        self, saves: Checkpoints, epoch: int, every: int, stop: StopRequests, deadline: Deadline
    ) -> None:
        self.saves, self.epoch, self.every, self.stop, self.deadline = saves, epoch, every, stop, deadline
        self.shuffle_state = saves.s.shuffle.get_state()  # replayed on resume: the epoch's own shuffle
        self.timed_out = False

    def __call__(self, step: int, snapshot: Callable[[], EpochProgress]) -> bool:
        device = self.saves.s.device
        signum = self.stop.agreed(device)
        self.timed_out = self.deadline.passed(device)
        if signum is None and not self.timed_out and not (self.every and step % self.every == 0):
            return False
        now = _global(snapshot(), device)
        self.saves.last(self.epoch - 1, partial={**asdict(now), "shuffle_state": self.shuffle_state})
        if signum is not None:
            raise Interrupted(signum, self.epoch, step, self.saves.run.path / "last.pt")
        return self.timed_out


def resume(cfg: DictConfig, s: Session, path: Path | None, last: dict[str, Any] | None) -> TrainState:
    """Continue from last.pt (`path`, read as `last`) where there is one to continue (`checkpoint.find_resume`)."""
    monitor = "map" if s.data.multi_label else "acc"
    if path is None or last is None:
        return TrainState(monitor=monitor)
    if last["model"] != s.model_spec:
        raise UserError(
            f"trainer.resume: {path} holds {last['model']['name']} {last['model']['kwargs']}, "
            f"but this run builds {s.model_spec['name']} {s.model_spec['kwargs']}"
        )
    saved = str(last["config"]["scheduler"].get("_target_"))
    # By the factory's name, not its module path: a checkpoint written under another layout still resumes.
    if (
        "total_steps" not in last["scheduler"]
        or saved.rpartition(".")[2] != cfg.scheduler._target_.rpartition(".")[2]
    ):
        raise UserError(
            f"trainer.resume: {path} holds a schedule this run cannot continue ({saved}, written by this or an "
            f"older cnn-train); resume with the same scheduler, or start anew with model.weights={path}"
        )
    s.model.load_state_dict(last["state_dict"])
    try:
        s.optimizer.load_state_dict(last["optimizer"])
    except ValueError as e:  # other param groups: written before norms and biases got their own, or toggled
        raise UserError(
            f"trainer.resume: {path} holds optimizer state for other parameter groups ({e}); resume with the "
            "settings it was written with (trainer.decay_norm_and_bias), or start anew with model.weights"
        ) from e
    if s.ema is not None and last.get("ema"):
        s.ema.load_state_dict(last["ema"])
    s.schedule.load_state_dict(last["scheduler"])  # after the optimizer: it may rebuild for a new length
    if s.scaler is not None and last["scaler"]:
        s.scaler.load_state_dict(last["scaler"])
    checkpoint.set_rng_state(last["rng"], s.shuffle)
    best = last.get("best") or {"acc": last["best_val_acc"]}  # older last.pt files hold the accuracy alone
    state = TrainState(last["history"], best, last["best_epoch"], last["epoch"], last.get("partial"), monitor)
    if state.partial is not None and not s.world.is_main:  # the saved sums are global: rank 0 carries them on
        state.partial = {**state.partial, "loss_sum": 0.0, "correct": 0, "seen": 0}
    where = f"epoch {state.epoch + 1}" + (f", step {state.partial['step'] + 1}" if state.partial else "")
    log.info("resumed from %s at %s", path, where)
    return state


def validate(s: Session) -> dict[str, Any]:
    """Validation in the inference numerics: the trained weights copied into the contiguous fp32 model.

    Multi-label: the per-class thresholds are tuned here, on these probabilities (see analysis.multilabel).
    """
    distributed.sync_buffers(s.model)  # rank 0's BatchNorm statistics everywhere: the weights rank 0 saves
    s.eval_model.load_state_dict(s.weights())
    if s.data.multi_label:
        classes = s.data.classes
        return evaluate_sets(
            s.eval_model, s.val_batches, s.eval_preprocess, classes, None, "val", s.tta, s.bars
        )
    return evaluate(s.eval_model, s.val_batches, s.eval_preprocess, "val", s.tta, s.bars)


def fit(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train, keep best.pt/last.pt/metrics.csv current, then test the best weights.

    last.pt is written at every epoch end, every `trainer.checkpoint_every_n_steps` steps, and on SIGINT or
    SIGTERM (then `Interrupted` is raised); a resumed run continues mid-epoch exactly where it stopped.
    Under torchrun every rank calls this; rank 0 alone writes files, and all return the same results.
    """
    started = time.perf_counter()
    check_config(cfg)
    tr, world = cfg.trainer, world_from_env()
    device = distributed.init(world, pick_device(tr.device))
    path = Path(distributed.broadcast(str(run_dir)))  # ranks started in different seconds agree on one
    # last.pt to continue (trainer.resume, or this dir's unfinished run), read once: lr_find and resume use it
    resumed = checkpoint.find_resume(tr.resume, path, Path(str(cfg.output_root)))
    last = checkpoint.load(resumed) if resumed is not None else None
    cfg = lrfind.apply(cfg, path, world, device, last)  # trainer.lr_find: optimizer.lr becomes its suggestion
    seed_everything(tr.seed, tr.deterministic)
    s = build(cfg, world, device)
    common = describe(cfg, s)
    plan = plan_of(cfg, s, started, last)
    tracker = instantiate(cfg.logger) if "logger" in cfg else CsvLogger
    resumed_dir = resumed.parent if resumed is not None else None
    with (
        RunDir(path, world.is_main, lambda p: tracker(run_dir=p), resumed_dir) as run,
        StopRequests() as stop,
    ):
        state = resume(cfg, s, resumed, last)
        if not world.is_main:  # same weights (DDP copies rank 0's), different augmentation and dropout draws
            torch.manual_seed(tr.seed + 7919 * world.rank + state.epoch + 1)
        run.start(s.data.classes, common["config"], lambda p: plot_samples(s, p))
        saves = Checkpoints(run, s, state, plan, common)
        deadline = Deadline(parse_duration(tr.max_time), started)  # the hard stop, budget or not
        ended = "finished"
        profiler = StepProfiler.from_config(tr, path, world.is_main, s.device)
        epoch = state.epoch
        while plan.another(epoch, s.schedule, midway=state.partial is not None):
            epoch += 1
            progress = state.begin(epoch, s)
            hook = MidEpoch(saves, epoch, tr.checkpoint_every_n_steps or 0, stop, deadline)
            batches = s.train_batches.epoch(skip=progress.step)
            with profiler.around(hook, len(s.train_batches) - progress.step, progress.step) as watched:
                done = train_one_epoch(s.step, batches, progress, watched, len(s.train_batches), s.bars)
            done = _global(done, s.device)
            with plan.validating():
                val = validate(s)
            row, improved = state.record(done, val)
            metrics = {"val_acc": val["acc"], "val_loss": val["loss"], "train_acc": row["train_acc"]}
            if "map" in val:
                metrics["val_map"] = val["map"]
            if improved:
                saves.best(epoch, metrics, val.get("thresholds"))
            if not hook.timed_out:  # a cut-short epoch keeps its mid-epoch last.pt: a resume finishes it
                s.schedule.after_epoch({"val_loss": val["loss"], "val_acc": val["acc"]})
                saves.last(epoch, metrics=metrics, thresholds=val.get("thresholds"))
            run.epoch_done(state.history)
            log_epoch(row, plan.epochs)
            if (signum := stop.agreed(s.device)) is not None:
                raise Interrupted(signum, epoch, done.step, path / "last.pt")
            if hook.timed_out or should_stop_early(state.history, tr.early_stopping):
                ended = "max_time" if hook.timed_out else "early_stopping"
                log.info("stopping after epoch %d: %s", epoch, ended.replace("_", " "))
                break
        distributed.barrier()  # best.pt is on disk before any rank reads it
        record = TestRecord(s.data.classes) if tr.report and not s.data.multi_label else None
        test = test_best(cfg, s, path, record)
        results = summarize(cfg, s, state, plan, test, time.perf_counter() - started, ended)
        if s.teacher is not None:
            results["distill"] = {**s.teacher.describe(), "teacher_test_acc": test_teacher(cfg, s)}
        run.finish(results)
        log_budget(results)
        if tr.report:  # report.html; only warns if it cannot be written
            after_run(path, world.is_main, s.data, s.spec, s.eval_model, record, test)
    return results


def plan_of(cfg: DictConfig, s: Session, started: float, last: dict[str, Any] | None) -> Plan:
    """The run's epochs: max_epochs, `trainer.plan`, or fitted to `trainer.budget` (continued from last.pt)."""
    test_images = len(s.data.test) if s.data.test is not None else None
    bs, limit = int(cfg.data.batch_size), cfg.trainer.limit_test_batches
    return Plan.start(
        cfg.trainer, started, last, relative_test_size(len(s.val_batches), test_images, bs, limit)
    )


def describe(cfg: DictConfig, s: Session) -> dict[str, Any]:
    """Log what is about to train; return what every checkpoint of the run says about itself."""
    n_params, n_train = s.parameter_counts
    log.info(
        "%s on %s: %d classes, %d×%d×%d input, %s of %s parameters trainable, %d train / %d val images, device %s",
        cfg.model.name, s.data.name, len(s.data.classes), s.spec.channels, s.spec.image_size, s.spec.image_size,
        f"{n_train:,}", f"{n_params:,}", len(s.data.train), len(s.data.val), s.device,
    )  # fmt: skip
    log.info("speed: %s%s", s.speed.describe(), f", {s.world.size} processes" if s.world.active else "")
    if cfg.data.folds is not None:
        log.info("data.folds=%d: fold %d validates, the other %d train (stratified by label, fixed by the seed)",
                 cfg.data.folds, cfg.data.fold, cfg.data.folds - 1)  # fmt: skip
    if cfg.data.sampler == "balanced":
        log.info("data.sampler=balanced: each epoch draws %d training images with replacement, ∝ 1/class size",
                 len(s.data.train))  # fmt: skip
    if s.data.skipped_rows:
        log.warning("data.file: %d bad row(s) skipped (results.json: skipped_rows)", s.data.skipped_rows)
    if s.teacher is not None:
        t = s.teacher
        log.info("distilling from %s (%s): alpha %g, temperature %g", t.path, t.name, t.alpha, t.temperature)
    return {
        "model": s.model_spec, "classes": s.data.classes, "eval_transform": s.spec.to_dict(),
        "inference": INFERENCE, "config": OmegaConf.to_container(cfg, resolve=True), "init": s.init,
        "multi_label": s.data.multi_label,
    }  # fmt: skip


def log_epoch(row: dict[str, Any], epochs: int) -> None:
    mean_ap = f" mAP {row['val_map']:.4f}" if row.get("val_map") is not None else ""  # multi-label
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f%s  lr %.3g  %.1fs  %.0f img/s",
        row["epoch"], epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"], mean_ap,
        row["lr"], row["seconds"], row["images_per_s"],
    )  # fmt: skip


def log_budget(results: dict[str, Any]) -> None:
    """How a budgeted run spent its time, and the overrides that replay it without one."""
    if (b := results["budget"]) is None:
        return
    log.info(
        "budget %.0f s: %.0f s used (%s s start-up, %d of %d planned epochs at %s s each, the test pass), "
        "the last step's lr %.3g; replay without a budget: %s",
        b["seconds"], b["used_seconds"], b["startup_seconds"], results["epochs_run"], b["planned_epochs"],
        b["seconds_per_epoch"], b["last_lr"] if b["last_lr"] is not None else float("nan"), results["replay"],
    )  # fmt: skip


def summarize(
    cfg: DictConfig,
    s: Session,
    state: TrainState,
    plan: Plan,
    test: dict[str, float] | None,
    seconds: float,
    ended: str,
) -> dict[str, Any]:
    """results.json: the accuracies, why and when the run ended, and the settings behind the number."""
    (n_params, n_train), tr = s.parameter_counts, cfg.trainer
    results = {
        "model": cfg.model.name, "data": s.data.name,
        "test_acc": test["acc"] if test else None, "test_loss": test["loss"] if test else None,
        "best_val_acc": state.best_val_acc, "best_epoch": state.best_epoch, "epochs": plan.epochs,
        "epochs_run": state.epoch, "stop_reason": ended, "ema_decay": tr.ema_decay,
        "effective_batch_size": int(cfg.data.batch_size) * int(tr.accumulate_grad_batches),
        "grad_clip_norm": tr.grad_clip_norm,
        "parameters": n_params, "trainable_parameters": n_train,
        "precision": s.speed.precision, "channels_last": s.speed.channels_last, "compile": s.speed.compile,
        "threads": s.speed.threads, "tta": s.tta, "inference": INFERENCE, "processes": s.world.size,
        "wall_seconds": round(seconds, 2), "skipped_rows": s.data.skipped_rows,
        "lr_find": {"suggested_lr": cfg.optimizer.lr, "curve": "lr_find.json"} if cfg.trainer.lr_find else None,
        "budget": plan.summary(s.schedule.last_lr), "replay": plan.replay(),
    }  # fmt: skip
    if s.data.multi_label:  # test_acc is the exact-match ratio (test_exact_match), at best.pt's thresholds
        results.update(multi_label=True, best_val_map=state.best.get("map"), monitor=f"val_{state.monitor}")
        named = ("map", "micro_f1", "macro_f1", "exact_match")
        results.update({f"test_{k}": test[k] if test else None for k in named})
    return results


def plot_samples(s: Session, path: Path, n: int = 32) -> None:
    plots.plot_grid(*training_samples(s, n), path)


def training_samples(s: Session, n: int = 32) -> tuple[torch.Tensor, list[str]]:
    """The first training images as trained on (augmented, mixed) and their labels; on a forked RNG, so
    training draws the same.

    Mixup/cutmix mix the normalised batch in training; mixing commutes with the per-pixel normalisation, so
    mixing the [0, 1] images shows exactly what the network is given.
    """
    first = s.data.train.subset(torch.arange(min(n, len(s.data.train))))
    with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
        x, y = next(iter(Batches(first, s.spec, n, s.device)))
        images = s.eval_preprocess.unit(x, s.augment)
        mix = getattr(s.augment, "mix", None)
        images, target = mix(images, y) if mix is not None else (images, y)
    if s.data.multi_label:
        return images, set_titles(target, s.data.classes, shares=True)
    return images, label_titles(target, s.data.classes)


def label_titles(target: torch.Tensor, classes: list[str]) -> list[str]:
    """'coat' for a class index; 'coat 0.62 + shirt 0.38' for a mixed label (its two largest shares)."""
    if target.ndim == 1:
        return [classes[i] for i in target.tolist()]
    titles = []
    for shares, index in zip(*target.topk(2, dim=1), strict=True):
        (a, b), (i, j) = shares.tolist(), index.tolist()
        titles.append(classes[i] if b < 1e-3 else f"{classes[i]} {a:.2f} + {classes[j]} {b:.2f}")
    return titles


def test_teacher(cfg: DictConfig, s: Session) -> float | None:
    """The teacher's accuracy on this run's test split, through its own eval transform; None without one."""
    t = s.teacher
    if t is None or s.data.test is None:
        return None
    batches = Batches(
        s.data.test, t.spec, int(cfg.data.batch_size), s.device, num_workers=int(cfg.data.num_workers),
        limit=cfg.trainer.limit_test_batches, shard=(s.world.rank, s.world.size),
    )  # fmt: skip
    return evaluate(t.model, batches, Preprocess(t.spec).to(s.device), "teacher test", s.tta, s.bars)["acc"]


def test_best(
    cfg: DictConfig, s: Session, run_dir: Path, record: TestRecord | None = None
) -> dict[str, Any] | None:
    """best.pt on the test split, loaded and run exactly as cnn-eval runs it; None without a test split.

    Multi-label: at the thresholds best.pt carries; the result holds every metric and the per-class rows.
    """
    if s.data.test is None:
        return None
    payload = checkpoint.load(run_dir / "best.pt")
    model = checkpoint.inference_model(payload, s.device)
    batches = Batches(
        s.data.test, s.spec, int(cfg.data.batch_size), s.device, num_workers=int(cfg.data.num_workers),
        limit=cfg.trainer.limit_test_batches, shard=(s.world.rank, s.world.size),
    )  # fmt: skip
    if s.data.multi_label:
        thresholds = checkpoint.thresholds(payload)
        return evaluate_sets(
            model, batches, s.eval_preprocess, s.data.classes, thresholds, "test", s.tta, s.bars
        )
    return evaluate(model, batches, s.eval_preprocess, "test", s.tta, s.bars, record)
