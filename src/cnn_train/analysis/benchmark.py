"""cnn-bench's work: one checkpoint in every format it ships as, measured side by side in one process.

Formats: PyTorch eager fp32, PyTorch bf16 autocast (where the CPU computes bf16 natively), ONNX Runtime fp32
and int8 (QDQ), and their CUDA variants on a GPU. For each: batch-1 latency (median and 90th percentile of
single forward passes), batch throughput (images per second at the median batch time), the test split's
accuracy through `evaluation.score` (the pass cnn-eval runs, at the same batch size, so the same number), and
the size of the file it runs from. Times are of the network alone, on normalised test images already in
memory: decoding and the eval transform are the same for every format.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnn_train.analysis.evaluation import score, split_batches
from cnn_train.analysis.quantization import export_int8, int8_path
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference.artifact import Artifact, open_artifact
from cnn_train.inference.export import OnnxModel, export
from cnn_train.runtime.cpu import cpu_description
from cnn_train.runtime.errors import UserError
from cnn_train.runtime.hardware import cpu_has_fast_bf16


@dataclass
class Format:
    """How one format runs: its file, device, and the callable `infer` and the timing loop use."""

    name: str
    runtime: str
    precision: str
    file: Path
    device: torch.device
    model: Any  # called on a float batch (a tensor on `device`), returns logits


class Autocast:
    """A network under bf16 autocast, behind the call signature `inference.infer` expects."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device

    def eval(self) -> Autocast:
        self.model.eval()
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.model(x)


def skip_reason(name: str) -> str | None:
    """Why this machine cannot run a format (None: it can)."""
    cuda = name.endswith("_cuda")
    if cuda and not torch.cuda.is_available():
        return "no CUDA device"
    if name == "pytorch_bf16" and not cpu_has_fast_bf16():
        return "this CPU has no native bf16 (AVX-512 BF16 or AMX)"
    if name == "onnx_cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
    return None


def exports(
    ckpt: Path, formats: list[str], calibration_images: int, say: Callable[[str], None]
) -> tuple[Path, Path]:
    """The fp32 and int8 ONNX files next to the checkpoint, those the formats need made (as cnn-export makes
    them) when missing or older than the checkpoint. The int8 file is made without cnn-export's accuracy
    bound: the bench shows what it costs."""
    fp32, int8 = ckpt.with_suffix(".onnx"), int8_path(ckpt)
    newer = ckpt.stat().st_mtime
    if any(f.startswith("onnx_int8") for f in formats) and (
        not int8.is_file() or int8.stat().st_mtime < newer
    ):
        say(f"quantizing {ckpt.name} to {int8.name} on {calibration_images} training images")
        export_int8(ckpt, int8, calibration_images, max_drop=None)  # writes the fp32 file too
    needs_fp32 = any(f in ("onnx", "onnx_cuda") for f in formats)
    if needs_fp32 and (not fp32.is_file() or fp32.stat().st_mtime < newer):
        say(f"exporting {ckpt.name} to {fp32.name}")
        export(ckpt, "onnx")
    return fp32, int8


def open_format(name: str, ckpt: Path, fp32: Path, int8: Path, threads: int) -> Format:
    device = torch.device("cuda" if name.endswith("_cuda") else "cpu")
    base = name.removesuffix("_cuda")
    if base.startswith("pytorch"):
        model = open_artifact(ckpt, device).model
        bf16 = base == "pytorch_bf16"
        runtime = f"PyTorch {torch.__version__.split('+')[0]} eager"
        model = Autocast(model, device) if bf16 else model
        return Format(
            name,
            runtime,
            "bf16" if bf16 else "fp32",
            ckpt,
            device,
            Autocast(model, device) if bf16 else model,
        )
    import onnxruntime

    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    file = int8 if base == "onnx_int8" else fp32
    onnx = OnnxModel(file, providers, threads, spin=True)  # ONNX Runtime's default threading, as deployed
    runtime = f"ONNX Runtime {onnxruntime.__version__}"
    return Format(name, runtime, "int8" if file == int8 else "fp32", file, torch.device("cpu"), onnx)


def _timed(run: Callable[[], Any], runs: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return times


def measure(
    fmt: Format, inputs: torch.Tensor, latency_runs: int, throughput_runs: int, warmup: int
) -> dict[str, Any]:
    """Batch-1 latency (ms: median, 90th percentile) and throughput (images/s at the median batch time)."""
    x = inputs.to(fmt.device)
    sync = torch.cuda.synchronize if fmt.device.type == "cuda" else (lambda: None)
    model = fmt.model.eval()
    with torch.inference_mode():
        single = _timed(lambda: model(x[:1]), latency_runs, warmup, sync)
        batch = _timed(lambda: model(x), throughput_runs, max(1, warmup // 4), sync)
    return {
        "latency_ms_median": statistics.median(single) * 1e3,
        "latency_ms_p90": float(np.percentile(single, 90)) * 1e3,
        "throughput_img_s": len(x) / statistics.median(batch),
    }


def accuracy(fmt: Format, art: Artifact, limit_batches: int | None) -> dict[str, Any]:
    """The test split's accuracy as cnn-eval computes it on this format's file."""
    batches, _, batch_size = split_batches(art, None, "test", fmt.device, None, limit_batches)
    scores = score(fmt.model, Preprocess(art.spec).to(fmt.device), batches, len(art.classes))
    return {"accuracy": scores.accuracy, "images": scores.seen, "accuracy_batch_size": batch_size}


def bench(
    ckpt: Path, formats: list[str], threads: int, batch_size: int = 64, latency_runs: int = 200,
    throughput_runs: int = 20, warmup: int = 20, with_accuracy: bool = True, limit_batches: int | None = None,
    calibration_images: int = 512, say: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Every format of `ckpt` that this machine runs, measured; the others listed with the reason."""
    torch.set_num_threads(threads)
    art = open_artifact(ckpt, torch.device("cpu"))
    if art.multi_label and (with_accuracy or "onnx_int8" in formats):
        raise UserError(f"{ckpt}: a multi-label checkpoint; cnn-bench's accuracy and its int8 file are for "
                        "single-label ones (cnn-eval gives mAP): bench it with accuracy=false and without "
                        "onnx_int8 in formats")  # fmt: skip
    fp32, int8 = exports(ckpt, [f for f in formats if skip_reason(f) is None], calibration_images, say)
    batches, _, _ = split_batches(art, None, "test", torch.device("cpu"), batch_size, 1)
    images, _ = next(iter(batches))
    inputs = Preprocess(art.spec)(images)  # normalised test images: what every format's network takes
    cpu = cpu_description()
    records = []
    for name in formats:
        base = {"format": name, "cpu": cpu, "threads": threads, "batch_size": len(inputs)}
        if (why := skip_reason(name)) is not None:
            records.append({**base, "skipped": why})
            continue
        say(f"measuring {name}")
        fmt = open_format(name, ckpt, fp32, int8, threads)
        record = {**base, "runtime": fmt.runtime, "precision": fmt.precision, "device": fmt.device.type,
                  "file": fmt.file.name, "file_bytes": fmt.file.stat().st_size}  # fmt: skip
        record |= measure(fmt, inputs, latency_runs, throughput_runs, warmup)
        if with_accuracy:
            record |= accuracy(fmt, art, limit_batches)
        records.append(record)
    return {
        "checkpoint": str(ckpt), "model": art.config.get("model", {}).get("name"),
        "data": art.config.get("data", {}).get("name"), "input": [art.spec.channels, art.spec.image_size],
        "cpu": cpu, "threads": threads, "python": platform.python_version(), "records": records,
    }  # fmt: skip
