"""The machine a run lands on: device, and the fastest safe precision, memory format, compile and threads."""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "32", "bf16", "16-mixed")


def pick_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device: cuda was asked for but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.device: mps was asked for but Apple's MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"trainer.device: {name!r} is not one of auto, cpu, cuda, mps")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: where oneDNN runs bf16 convolutions natively instead of emulating them.

    Without them bf16 autocast on the CPU was 25× slower than fp32 for AlexNet (2-core AVX2 EPYC).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def physical_cores() -> int:
    """Cores this process may use, counting hyper-threads once (torch would otherwise use logical CPUs)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in allowed:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            package = (topo / "physical_package_id").read_text().strip()
            cores.add((package, (topo / "core_id").read_text().strip()))
    except OSError:
        return max(len(allowed), 1)
    return max(len(cores), 1)


@dataclass(frozen=True)
class Speed:
    """What `auto` resolved to for this device; logged at start and stored in results.json."""

    precision: str
    channels_last: bool
    compile: bool
    threads: int

    def describe(self) -> str:
        return (
            f"precision {self.precision}, channels_last {'on' if self.channels_last else 'off'}, "
            f"compile {'on' if self.compile else 'off'}, {self.threads} CPU threads"
        )


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matrix products of a `trainer.precision` run compute in (fp32 for `32`)."""
    return {"bf16": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)


def _switch(key: str, value: Any, auto: bool) -> bool:
    if value in ("auto", None):
        return auto
    if isinstance(value, bool):
        return value
    raise UserError(f"trainer.{key}: {value!r} must be auto, true or false")


def resolve_speed(trainer: Any, device: torch.device) -> Speed:
    """Turn the trainer's `auto` settings (`cfg.trainer`) into choices measured to be faster on this device.

    precision auto: bf16 on CUDA with bf16 support (else 16-mixed), bf16 on CPUs with native bf16, else fp32.
    channels_last auto: on for CUDA and CPU (oneDNN's NHWC kernels: +12% for AlexNet on 2 AVX2 cores).
    compile auto: on for CUDA only; on a CPU the compile time outweighs the gain for runs of minutes.
    """
    precision = str(trainer.precision)
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision: {precision} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "16-mixed"
        elif device.type == "cpu" and cpu_has_fast_bf16():
            precision = "bf16"
        else:
            precision = "32"
    if precision == "16-mixed" and device.type != "cuda":
        raise UserError(
            f"trainer.precision: 16-mixed needs CUDA (this run is on {device.type}); use bf16 or 32"
        )
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        log.warning(
            "trainer.precision=bf16: this CPU has no native bf16 (AVX-512 BF16/AMX); expect it to be slow"
        )
    channels_last = _switch("channels_last", trainer.channels_last, device.type in ("cuda", "cpu"))
    compile_ = _switch("compile", trainer.compile, device.type == "cuda")
    threads = trainer.threads
    if threads in ("auto", None):
        threads = physical_cores()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UserError(f"trainer.threads: {threads!r} must be auto or a whole number ≥ 1")
    return Speed(precision, channels_last, compile_, threads)


def apply_speed(speed: Speed, device: torch.device, deterministic: bool) -> None:
    """Process-wide settings: CPU threads; on CUDA, cuDNN's autotuner and TF32 for fp32 matrix products."""
    if torch.get_num_threads() != speed.threads:
        torch.set_num_threads(speed.threads)
    if device.type == "cuda" and not deterministic:
        torch.backends.cudnn.benchmark = True  # batch shapes repeat, so the per-shape search pays off
        torch.set_float32_matmul_precision("high")


def fast_optimizer_kwargs(
    optimizer_factory: Any, device: torch.device, given: dict[str, Any]
) -> dict[str, Any]:
    """`fused=True` where the optimizer has a fused kernel for this device, else `foreach=True`.

    One kernel per step instead of one per parameter tensor; a choice in the optimizer config wins.
    """
    if "fused" in given or "foreach" in given:
        return {}
    func = getattr(optimizer_factory, "func", optimizer_factory)
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    if "fused" in params and device.type in ("cuda", "cpu"):
        return {"fused": True}
    if "foreach" in params:
        return {"foreach": True}
    return {}


def compile_model(model: nn.Module, speed: Speed) -> nn.Module:
    """torch.compile'd forward for training and evaluation; the plain module keeps the weights to save."""
    if not speed.compile:
        return model
    return torch.compile(model, dynamic=False)  # type: ignore[return-value]
