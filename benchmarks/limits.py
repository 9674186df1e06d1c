"""What this machine attains in the numerics a run uses: the yardstick the benchmark holds each step against.

Two rates, measured in the benchmark's own process so contention and clocks are those of the step:
- a large matrix product (the machine's peak as PyTorch reaches it: oneDNN/MKL on a CPU, cuBLAS on a GPU);
- the model's heaviest convolution (most forward FLOPs), forward and backward (input and weight gradients)
  at its real shape in the run: batch, channels, side, memory format and dtype.
Both in the dtype `trainer.precision=auto` picks here (fp32 on an AVX2 CPU; bf16 on AMX/AVX-512 BF16 CPUs and
GPUs), with operands already in that dtype: the rate a step could reach if nothing but these ops ran.
FLOPs are torch.utils.flop_counter's (a multiply-add counts 2), the same counter the step's FLOPs come from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnn_train.config import TrainerConfig
from cnn_train.models import build_model
from cnn_train.runtime.hardware import Speed, compute_dtype, resolve_speed


@dataclass(frozen=True)
class Limit:
    matmul: float  # GFLOP/s of an n×n×n matrix product
    conv: float  # GFLOP/s of the heaviest convolution, forward + backward
    conv_name: str  # which one, and its shape

    @property
    def best(self) -> float:
        """The most this machine was seen to attain in these numerics: the step's ceiling."""
        return max(self.matmul, self.conv)


def numerics(device: torch.device) -> Speed:
    """What `auto` picks for a run on this device (the benchmark's cnn-train runs use the same)."""
    return resolve_speed(TrainerConfig(), device)


def rate(work: Callable[[], object], flops: int, device: torch.device, seconds: float = 1.0) -> float:
    """GFLOP/s of the fastest of several timed repetitions of `work` (after one warm-up call).

    The fastest, not the mean: on a shared machine the least-disturbed run is the one nearest the hardware.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    work()
    sync()
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        start = time.perf_counter()
        for _ in range(1 if device.type == "cpu" else 10):
            work()
        sync()
        took = (time.perf_counter() - start) / (1 if device.type == "cpu" else 10)
        best, spent = min(best, took), spent + took
    return flops / best / 1e9


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return rate(lambda: a @ b, 2 * n**3, device)


@dataclass
class ShapeOf:
    """A forward pre-hook noting the input shape of the module it watches (returns None: changes nothing)."""

    name: str
    into: dict[str, tuple[int, ...]]

    def __call__(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.into[self.name] = tuple(args[0].shape)


def heaviest_conv(model: str, batch: int, side: int) -> tuple[str, nn.Conv2d, tuple[int, ...]]:
    """The model's convolution with the most forward FLOPs at this input, and its input shape."""
    net = build_model(model, num_classes=10, in_channels=1, image_size=side).eval()
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(ShapeOf(n, shapes)) for n, m in convs.items()]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, side, side))
    for h in hooks:
        h.remove()
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(net).__name__
    name = max(convs, key=lambda n: per_module.get(f"{root}.{n}", 0))
    return name, convs[name], (batch, *shapes[name][1:])


def conv_rate(conv: nn.Conv2d, shape: tuple[int, ...], device: torch.device, speed: Speed) -> float:
    """Forward + backward of one convolution at the run's shape, memory format and dtype."""
    fmt = torch.channels_last if speed.channels_last else torch.contiguous_format
    layer = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None,
    ).to(device=device, dtype=compute_dtype(speed.precision), memory_format=fmt)  # fmt: skip
    x = (
        torch.randn(shape, device=device, dtype=compute_dtype(speed.precision))
        .to(memory_format=fmt)
        .requires_grad_()
    )

    def step() -> None:
        out = layer(x)
        out.backward(torch.ones_like(out))

    with FlopCounterMode(display=False) as counter:
        step()
    return rate(step, counter.get_total_flops(), device)


def limit(model: str, batch: int, side: int, device: torch.device, matmul: float) -> Limit:
    """The model's limit on this device: `matmul` (measured once per benchmark) and its heaviest conv's rate."""
    name, conv, shape = heaviest_conv(model, batch, side)
    k = "×".join(map(str, conv.kernel_size))
    described = f"{name} {conv.in_channels}→{conv.out_channels} {k} at {shape[-1]} px"
    return Limit(matmul, conv_rate(conv, shape, device, numerics(device)), described)
