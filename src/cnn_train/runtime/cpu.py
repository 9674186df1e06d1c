"""The CPU a number was measured on: its model name and the instruction sets that decide int8 and bf16 speed."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

# The flags (as /proc/cpuinfo names them) that change which kernels ONNX Runtime and oneDNN run.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@cache
def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def cpu_name() -> str:
    """'Intel(R) Xeon(R) Processor', 'AMD EPYC 7B13', ...: /proc/cpuinfo's model name, else the platform's."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """Which of SPEED_FLAGS this CPU has (empty where /proc/cpuinfo cannot be read)."""
    have = set(_cpuinfo().get("flags", "").split())
    return [f for f in SPEED_FLAGS if f in have]


def cpu_description() -> str:
    """The model name and its speed flags, as every measured figure names its CPU."""
    flags = cpu_flags()
    return f"{cpu_name()} ({', '.join(flags)})" if flags else cpu_name()
