"""The typed config: every key the code reads, declared once with its type, its default and what it means.

The primary YAMLs (configs/train.yaml, ...) put these schemas first in their defaults list, so every group
choice (configs/model/*.yaml, ...) is merged onto a typed node: a wrong type or an unknown key fails while
Hydra composes the config, naming the key. The defaults live here; a choice file sets only what differs.
The `_target_` groups (optimizer, scheduler, augmentation, logger) stay untyped: their keys are their
constructors' arguments, checked against the target's signature by `check_target_keys`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, OmegaConf

from cnn_train.runtime.errors import UserError


@dataclass
class ModelConfig:
    name: str = MISSING  # registry key (cnn_train.models.list_models()); set by configs/model/<name>.yaml
    image_size: int | None = None  # input side it expects; null = the data's own; data.image_size overrides
    args: dict[str, Any] = field(default_factory=dict)  # architecture options for the builder (per model)
    pretrained: bool = False  # start from torchvision's ImageNet weights (downloads once; needs the internet)
    weights: str | None = None  # start from this file: a cnn-train checkpoint or a plain state dict
    finetune: str = "full"  # full | head (only a new classifier trains) | last_n (the last trainable_layers)
    trainable_layers: int = 1  # with finetune=last_n: how many layers with parameters, from the end, train


@dataclass
class DataConfig:
    name: str = (
        MISSING  # fashion_mnist | mnist | cifar10 | image_folder | csv | fashion_mnist_multilabel (per yaml)
    )
    root: str | None = MISSING  # where the files are (per choice); csv: null = paths relative to data.file
    batch_size: int = 128  # images per step (the global batch under torchrun)
    image_size: int | None = None  # input side; null = the model's stated size, else the data's own
    val_split: float = 0.1  # fraction of the training split held out for validation (fixed by trainer.seed)
    num_workers: int = 0  # loader processes (in-memory data needs none)
    mean: list[float] = MISSING  # per-channel normalisation of the data, recorded in the checkpoint
    std: list[float] = MISSING  # per-channel standard deviation, the same way
    cache: Any = (
        "auto"  # image_folder, csv: decode every image once into memory: auto (if it fits) | true | false
    )
    strict: bool = False  # image_folder, csv: an unreadable image (a bad row) fails the run, not skipped
    channels: int = 3  # image_folder, csv: 3 = RGB, 1 = grayscale; every file is converted
    permute_pixels: bool = False  # one fixed shuffle of pixel positions, recorded in the checkpoint
    permute_seed: int = 0  # with permute_pixels: the seed that draws the permutation
    file: str | None = None  # csv: the .csv/.tsv file (comma, semicolon or tab; .tsv = tab) listing images
    path_column: str = "path"  # csv: the column of image paths (relative to data.root, else to data.file)
    label_column: str = "label"  # csv: the column of class names
    split_column: str | None = "split"  # csv: optional column of train | val | test; absent = data.val_split
    label_separator: str | None = None  # csv: null = one label per row; "|" or " " = several (multi-label)
    folds: int | None = None  # k-fold: split the training data into this many stratified folds; null = off
    fold: int = 0  # k-fold: the fold (counted from 0) that validates; the others train
    sampler: str = "shuffle"  # shuffle (each image once per epoch) | balanced (∝ 1/class frequency, replaced)
    multi_label: bool = False  # labels are sets: sigmoid + BCE, per-class thresholds (single labels: one-hot)


@dataclass
class EarlyStoppingConfig:
    patience: int | None = None  # stop after this many epochs without improvement; null = never
    monitor: str = "val_acc"  # val_acc | val_loss | val_map (multi-label): the validation metric watched
    min_delta: float = 0.0  # an improvement must beat the best so far by more than this


@dataclass
class DistillConfig:
    teacher: str | None = (
        None  # a trained best.pt the student also learns from (its softened outputs); null = off
    )
    alpha: float = 0.9  # weight of the teacher's term alpha·T²·KL; the labels' cross-entropy gets 1 − alpha
    temperature: float = 4.0  # T: both networks' logits are divided by it before the softmax


@dataclass
class TrainerConfig:
    max_epochs: int = 10  # passes over the training split
    device: str = "auto"  # auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)
    seed: int = 42  # seeds weights, shuffling, augmentation and the validation hold-out
    precision: str = "auto"  # auto | 32 | bf16 | 16-mixed (auto: bf16 on CUDA and on CPUs with native bf16)
    channels_last: Any = "auto"  # NHWC memory format: auto (on for CUDA and CPU) | true | false
    compile: Any = "auto"  # torch.compile: auto (on for CUDA, off on CPU) | true | false
    threads: Any = "auto"  # CPU threads for torch: auto (the physical cores) | a whole number
    tta: bool = False  # flip test-time augmentation for validation and test (image + mirror, averaged)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    deterministic: bool = False  # use only deterministic kernels (repeatable runs, slower)
    limit_train_batches: int | None = None  # stop each training epoch after this many batches (smoke runs)
    limit_val_batches: int | None = None  # validate on at most this many batches
    limit_test_batches: int | None = None  # test on at most this many batches
    resume: str | None = None  # a last.pt, or auto (this run dir's, else the newest unfinished run's)
    checkpoint_every_n_steps: int | None = None  # also save last.pt every N steps; resume continues mid-epoch
    sync_batchnorm: bool = False  # under torchrun: BatchNorm becomes SyncBatchNorm (CUDA only)
    ema_decay: float | None = (
        None  # keep an EMA of the weights (e.g. 0.999): validated, saved as best, tested
    )
    grad_clip_norm: float | None = None  # clip the gradients' global L2 norm to this before each step
    accumulate_grad_batches: int = 1  # optimizer step every N batches: effective batch = N × data.batch_size
    decay_norm_and_bias: bool = False  # also weight-decay normalisation weights and biases (off: timm's rule)
    class_weights: str | None = None  # null | balanced: inverse-frequency class weights in the training loss
    pos_weight: str | None = None  # multi-label: null | balanced: BCE positives × negatives/positives (train)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)  # knowledge distillation from a teacher
    max_time: str | None = None  # hard stop from the start: 600, 90s, 10m, 1h30m; then best.pt is tested
    budget: str | None = None  # train about this long (90s, 10m): epochs fitted, the schedule ends on time
    plan: list[list[int]] | None = None  # [[after_epoch, epochs], ...]: a budgeted run's lengths, replayed
    report: bool = True  # write report.html (curves, confusion matrix, CAMs of mistakes) when the run ends
    lr_find: bool = False  # run the lr range test (cnn-lrfind) first and train at its suggested optimizer.lr
    lr_find_range: list[float] = field(default_factory=lambda: [1.0e-7, 10.0])  # range test: first, last lr
    lr_find_steps: int = 100  # range-test steps (at most one epoch); it stops early once the loss diverges
    profile: bool = False  # torch.profiler on the first epoch: profile.txt (top ops) + profile_trace.json
    profile_steps: int = 5  # with profile: steps recorded, after 2 warm-up steps


@dataclass
class TrainConfig:
    """cnn-train: the groups of configs/train.yaml's defaults list, and two top-level keys."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optimizer: dict[str, Any] = MISSING  # _target_ + _partial_: its keys are the optimizer's arguments
    scheduler: dict[str, Any] = MISSING  # _target_ + _partial_: a schedule in cnn_train.training.schedules
    augmentation: dict[str, Any] = MISSING  # _target_: a BatchAugment (data.transforms, data.policies)
    logger: dict[str, Any] = MISSING  # _target_ + _partial_: a tracker in cnn_train.runtime.loggers
    optimized_metric: str = "best_val_acc"  # the results.json value cnn-train returns (a sweeper maximizes)
    output_root: str = "outputs"  # run dirs go here; cnn-predict and trainer.resume=auto search here


@dataclass
class PredictConfig:
    """cnn-predict: classify images with a trained checkpoint; needs no training config."""

    img: str = MISSING  # an image file, a folder (searched recursively) or a glob
    ckpt: str | None = None  # checkpoint (or exported .onnx); null = the newest best.pt under output_root
    topk: int = 5  # classes shown per image, capped at the class count
    output: str | None = None  # also write rows to this .csv or .json file
    save_annotated: bool = False  # also save each image titled with its class in <output>_annotated/
    cam: bool = False  # also save each image under its predicted class's Grad-CAM in <output>_cam/ (or cam/)
    device: str = "auto"  # auto | cpu | cuda | mps
    batch_size: int = 64  # images per forward pass
    output_root: str = "outputs"  # where to look for the newest best.pt


@dataclass
class EvalConfig:
    """cnn-eval: a checkpoint's accuracy, per-class table, confusion matrix and misclassified images."""

    data: DataConfig | None = None  # null = the data the checkpoint was trained on; or data=<choice>
    ckpt: str | None = None  # checkpoint; null = the newest best.pt under output_root
    split: str = "test"  # test | val
    output_dir: str | None = None  # where eval.json and the PNGs go; null = <checkpoint dir>/eval
    device: str = "auto"  # auto | cpu | cuda | mps
    batch_size: int | None = None  # images per forward pass; null = the batch size it was trained with
    limit_batches: int | None = None  # evaluate at most this many batches
    tta: bool | None = None  # flip TTA (image and mirror, probabilities averaged); null = as the run tested
    output_root: str = "outputs"  # where to look for the newest best.pt
    cam: bool = False  # also draw misclassified_cam.png: the misclassified images under their Grad-CAM


@dataclass
class ExportConfig:
    """cnn-export: a checkpoint as ONNX (dynamic batch) or TorchScript, checked against PyTorch."""

    ckpt: str | None = None  # the checkpoint to export (required)
    format: str = "onnx"  # onnx | torchscript
    output: str | None = None  # file to write; null = next to the checkpoint (.onnx / .ts)
    tolerance: float = 1.0e-3  # fail when outputs differ from PyTorch by more than this
    quantize: str | None = (
        None  # null | int8: also write <name>.int8.onnx (ONNX Runtime static, QDQ; format=onnx)
    )
    calibration_images: int = 512  # with quantize=int8: training images (drawn at random) that set the scales
    max_accuracy_drop: float = (
        1.0  # with quantize=int8: refuse the file if its accuracy is this many points lower
    )


# cnn-bench's formats: PyTorch eager fp32 and bf16 autocast, ONNX Runtime fp32 and int8 (QDQ); on CUDA too.
BENCH_FORMATS = (
    "pytorch",
    "pytorch_bf16",
    "onnx",
    "onnx_int8",
    "pytorch_cuda",
    "pytorch_bf16_cuda",
    "onnx_cuda",
)


@dataclass
class BenchConfig:
    """cnn-bench: a checkpoint in every format it runs in: batch-1 latency, throughput, accuracy, file size."""

    ckpt: str | None = None  # the checkpoint (.pt); null = the newest best.pt under output_root
    formats: list[str] | None = None  # null = every one in BENCH_FORMATS this machine runs (others: skipped)
    threads: Any = "auto"  # CPU threads for every format: auto (the physical cores) | a whole number
    batch_size: int = 64  # the throughput batch (real test images)
    latency_runs: int = 200  # timed batch-1 passes per format (median and 90th percentile)
    throughput_runs: int = 20  # timed full batches per format (images/s at the median)
    warmup: int = 20  # untimed batch-1 passes first (a quarter as many full batches)
    accuracy: bool = True  # also score each format on the test split, as cnn-eval does
    limit_batches: int | None = None  # score at most this many test batches (the accuracy is then partial)
    calibration_images: int = 512  # for the int8 file when it is missing (made as cnn-export quantize=int8)
    output: str | None = None  # bench.json; null = <checkpoint dir>/bench.json (then report.html shows it)
    output_root: str = "outputs"  # where to look for the newest best.pt


@dataclass
class SummaryConfig:
    """cnn-summary: every layer of a model at the input its data gives it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    json: str | None = None  # also write the summary to this .json file (--json prints it instead)
    img: str | None = None  # also write filters.png and feature_maps.png (this image) into the current folder
    ckpt: str | None = None  # describe this checkpoint's model, with its trained weights, instead of model=


@dataclass
class DataCheckConfig:
    """cnn-data: counts, sizes, unreadable files and duplicates of a dataset's train/val/test splits."""

    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 42  # the hold-out seed: cnn-train's trainer.seed, so val is the split it validates on
    near_threshold: int = 4  # near duplicate candidates: 64-bit perceptual hashes this many bits apart
    near_max_diff: float = 4.0  # confirmed: 16×16 grey thumbnails differ by at most this (0–255) on average
    output: str | None = None  # also write the full report (every duplicate group) to this .json file


SCHEMAS = {
    "train_schema": TrainConfig,
    "predict_schema": PredictConfig,
    "eval_schema": EvalConfig,
    "export_schema": ExportConfig,
    "bench_schema": BenchConfig,
    "summary_schema": SummaryConfig,
    "data_check_schema": DataCheckConfig,
}


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore, where the primary YAMLs' defaults lists find them by name."""
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(name=name, node=schema)


def check_declared_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Fail, naming the key, on a key no schema declares.

    Merging a YAML or a `key=value` onto a typed node already refuses unknown keys; `+key=value` does not
    (Hydra lifts the struct flag to append), so every console script checks the composed config once more.

    Raises:
        UserError: `<full key>: not a key of ...`.
    """
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return  # an untyped node: model.args, a _target_ group (see check_target_keys)
    declared = [f.name for f in dataclasses.fields(schema)]
    for key in cfg:
        full = f"{prefix}{key}"
        if key not in declared:
            raise UserError(unknown_key(full, declared))
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            check_declared_keys(node, f"{full}.")


def unknown_key(full_key: str, declared: list[str]) -> str:
    """The one line for a key the schema lacks, listing the keys it has."""
    parent = full_key.rpartition(".")[0] or "the config"
    return f"{full_key}: not a key of {parent} (it has {', '.join(declared)})"


def with_defaults(schema: type, stored: Mapping[str, Any]) -> DictConfig:
    """A stored config section (a checkpoint's) with the declared default of every key it lacks.

    Keys the schema no longer declares are dropped, so a checkpoint written by an older version still reads.
    """
    names = {f.name for f in dataclasses.fields(schema)}
    return OmegaConf.merge(OmegaConf.structured(schema), {k: v for k, v in stored.items() if k in names})


def check_target_keys(node: Any, key_prefix: str) -> None:
    """Fail, naming the key, when a `_target_` node has a key its target does not take as an argument.

    Keys starting with `_` are Hydra's own (`_target_`, `_partial_`, ...). A target that takes `**kwargs`
    accepts any key, unless it is a class that passes them on to a base class (see `accepted_keys`).

    Args:
        node: the config node, e.g. `cfg.optimizer`.
        key_prefix: its full key, e.g. `optimizer`, for the message.

    Raises:
        UserError: `<key_prefix>.<key>: ...` for an unknown key or a target that cannot be imported.
    """
    if "_target_" not in node:
        raise UserError(f"{key_prefix}._target_: missing (the class or function to build)")
    path = str(node["_target_"])
    try:
        target = get_object(path)
    except Exception as e:  # hydra reports every import failure as one exception type or another
        raise UserError(f"{key_prefix}._target_: cannot import {path} ({str(e).splitlines()[0]})") from e
    takes = accepted_keys(target)
    if takes is None:
        return
    for key in node:
        if not str(key).startswith("_") and key not in takes:
            raise UserError(f"{key_prefix}.{key}: not an argument of {path} (it takes {', '.join(takes)})")


def accepted_keys(target: Any) -> list[str] | None:
    """The keyword arguments `target` takes; None when it takes any.

    A class whose `__init__` takes `**kwargs` also takes its base classes' named arguments, up to the first
    base without `**kwargs` (the augmentations pass random erasing and mixup/cutmix on to `BatchAugment`).
    """
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    chain = [c for c in target.__mro__ if c is not object] if inspect.isclass(target) else [target]
    takes: list[str] = []
    for owner in chain:
        try:
            params = inspect.signature(owner).parameters
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
            return None
        takes += [n for n, p in params.items() if p.kind in named and n not in takes]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return takes
    return None
