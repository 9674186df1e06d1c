"""Speed options: precision, memory format, compile, threads, fused optimizers, data cache, flip TTA."""

from __future__ import annotations

import importlib
import math
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnn_train.analysis.anatomy import summarize
from cnn_train.config import TrainerConfig
from cnn_train.data.datasets import load_dataset
from cnn_train.data.images import EvalTransform
from cnn_train.data.loaders import Batches
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference.infer import infer
from cnn_train.models import build_model
from cnn_train.runtime.errors import UserError
from cnn_train.runtime.hardware import resolve_speed
from cnn_train.training.fit import fit
from cnn_train.training.session import build
from tests.conftest import make_config
from tests.test_train import read_metrics

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SHORT = ["trainer.max_epochs=1", "trainer.limit_val_batches=4", "trainer.limit_test_batches=4"]


def short_run(tmp_path: Path, *overrides: str, batches: int = 30) -> dict:
    cfg = make_config("model=lenet", *SHORT, f"trainer.limit_train_batches={batches}", *overrides)
    return fit(cfg, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "precision,channels_last", [("32", False), ("32", True), ("bf16", False), ("bf16", True)]
)
def test_precision_and_memory_format_train_and_stay_finite(
    fashion_root: Path, tmp_path: Path, precision: str, channels_last: bool
) -> None:
    seen: set[tuple[torch.dtype, bool, bool]] = set()

    def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        """A training step's convolution: the dtype it computed in, and its weights' and output's layout.
        (One input channel makes both layouts the same tensor: LeNet's second conv, 6 → 16, tells them apart.)"""
        if isinstance(module, torch.nn.Conv2d) and module.training and module.in_channels > 1:
            nhwc = [t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                    for t in (module.weight, output)]  # fmt: skip
            seen.add((output.dtype, *nhwc))

    hook = torch.nn.modules.module.register_module_forward_hook(record)  # every module, wherever built
    try:
        results = short_run(
            tmp_path, f"trainer.precision={precision}", f"trainer.channels_last={channels_last}", batches=8
        )
    finally:
        hook.remove()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen == {(dtype, channels_last, channels_last)}
    assert results["precision"] == precision and results["channels_last"] is channels_last
    rows = read_metrics(tmp_path)
    assert math.isfinite(float(rows[0]["train_loss"])) and math.isfinite(results["test_loss"])
    assert float(rows[0]["train_loss"]) < math.log(10) + 0.5  # it trained, not diverged


@pytest.mark.slow
def test_bf16_reaches_the_accuracy_of_fp32(fashion_root: Path, tmp_path: Path) -> None:
    """Same weights, same batches, two precisions.

    bf16 really ran: on a CPU an fp32 run repeats to the bit (one process, same threads and batches), so
    losses that differ at all come from bf16's rounding (8 significant bits). And it learned as much: the
    two test accuracies are measured on the same n = 1024 images, each with a standard error of at most
    √(¼/n); they may differ by 3 standard errors of a difference, 3·√(2·¼/n) ≈ 0.066, while a bf16 step
    that broke training would leave it near chance (0.1) against fp32's > 0.6.
    """
    over = ["data.batch_size=64", "optimizer.lr=0.003", "trainer.limit_test_batches=16"]
    fp32 = short_run(tmp_path / "fp32", "trainer.precision=32", *over, batches=60)
    bf16 = short_run(tmp_path / "bf16", "trainer.precision=bf16", *over, batches=60)
    (row32,), (row16,) = read_metrics(tmp_path / "fp32"), read_metrics(tmp_path / "bf16")
    for loss in ("train_loss", "val_loss"):
        assert row32[loss] != row16[loss], (row32, row16)
    assert fp32["test_loss"] != bf16["test_loss"] and bf16["precision"] == "bf16"
    assert fp32["test_acc"] > 0.6
    assert abs(fp32["test_acc"] - bf16["test_acc"]) <= 3 * math.sqrt(2 * 0.25 / (16 * 64))


def cpuinfo() -> tuple[set[str], int]:
    """The CPU's flags and its physical cores among those this process may use, as /proc/cpuinfo says."""
    flags: set[str] = set()
    cores, cpu = set(), {}
    allowed = os.sched_getaffinity(0)
    for block in Path("/proc/cpuinfo").read_text().strip().split("\n\n"):
        cpu = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        cpu = {k.strip(): v.strip() for k, v in cpu.items()}
        flags |= set(cpu.get("flags", "").split())
        if int(cpu["processor"]) in allowed:
            cores.add((cpu.get("physical id", "0"), cpu.get("core id", cpu["processor"])))
    return flags, len(cores)


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads /proc/cpuinfo")
def test_auto_picks_bf16_only_on_native_bf16_cpus_and_one_thread_per_core() -> None:
    speed = resolve_speed(TrainerConfig(), torch.device("cpu"))  # every speed setting at its default, auto
    flags, cores = cpuinfo()
    assert speed.precision == ("bf16" if {"avx512_bf16", "amx_bf16"} & flags else "32")
    assert speed.channels_last is True and speed.compile is False
    assert speed.threads == cores


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("precision", "16-mixed", "trainer.precision: 16-mixed needs CUDA"),
        ("precision", "fp8", "trainer.precision: fp8 is not one of"),
        ("channels_last", "maybe", "trainer.channels_last: 'maybe' must be auto, true or false"),
        ("threads", 0, "trainer.threads: 0 must be auto or a whole number"),
    ],
)
def test_bad_speed_settings_name_the_key(key: str, value: object, message: str) -> None:
    tr = OmegaConf.structured(TrainerConfig(**{key: value}))
    with pytest.raises(UserError, match=message):
        resolve_speed(tr, torch.device("cpu"))


def test_optimizer_is_fused_and_model_is_channels_last(fashion_root: Path) -> None:
    s = build(make_config("model=lenet", "optimizer=sgd", "trainer.channels_last=true"))
    assert s.optimizer.param_groups[0]["fused"] is True
    conv = s.model[3].weight  # 6 → 16 channels (with one input channel both layouts coincide)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, _ = next(iter(s.train_batches))
    assert s.step.preprocess(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.numerics
def test_flip_tta_is_mirror_invariant_and_a_distribution(fashion_root: Path) -> None:
    torch.manual_seed(0)
    spec = EvalTransform(28, 1, (0.286,), (0.353,))
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    data = load_dataset("fashion_mnist", "data", 0.1, 0, 1, False)
    x, _ = next(iter(Batches(data.test, spec, 16, torch.device("cpu"))))
    pre = Preprocess(spec)
    plain, tta = infer(model, pre, x), infer(model, pre, x, tta=True)
    mirrored_tta = infer(model, pre, x.flip(-1), tta=True)
    torch.testing.assert_close(tta, mirrored_tta, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tta.exp().sum(1), torch.ones(16))
    assert not torch.allclose(plain.log_softmax(1), tta, atol=1e-3)


@pytest.mark.numerics
def test_image_folder_cache_trains_exactly_like_the_files(folder_root: Path, tmp_path: Path) -> None:
    common = [
        "model=lenet", "data=image_folder", f"data.root={folder_root}", "data.image_size=32",
        "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=2", "trainer.deterministic=true",
        "trainer.channels_last=false",
    ]  # fmt: skip
    s = build(make_config(*common, "data.cache=true"))
    assert type(s.data.train).__name__ == "TensorSplit" and len(s.data.train) == 36
    fit(make_config(*common, "data.cache=true"), tmp_path / "cached")
    fit(make_config(*common, "data.cache=false"), tmp_path / "files")
    cached, files = read_metrics(tmp_path / "cached"), read_metrics(tmp_path / "files")
    for a, b in zip(cached, files, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_acc"] == b["val_acc"]


@pytest.mark.slow
def test_compile_trains_on_cpu(fashion_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    from cnn_train.training import fit as fitting

    sessions, build = [], fitting.build

    def build_and_keep(*args: object, **kwargs: object) -> object:
        """fit's own `build`, keeping what it built: the session the run trains."""
        sessions.append(build(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(fitting, "build", build_and_keep)
    counters.clear()
    results = short_run(tmp_path, "trainer.compile=true", batches=5)
    (s,) = sessions
    # The steps ran the torch.compile'd network around the weights that are saved, and dynamo traced it.
    assert isinstance(s.step.model, OptimizedModule) and s.step.model._orig_mod is s.model
    assert counters["stats"]["unique_graphs"] >= 1
    assert results["compile"] is True and math.isfinite(results["test_loss"])
    assert (tmp_path / "best.pt").is_file()


@cuda
def test_cuda_16_mixed_with_resident_data_compile_and_scaler(fashion_root: Path, tmp_path: Path) -> None:
    s = build(make_config("model=lenet", "trainer.device=cuda", "trainer.precision=16-mixed"))
    x, y = next(iter(s.train_batches))
    assert x.is_cuda and y.is_cuda and s.train_batches._resident is not None and s.scaler is not None
    results = short_run(tmp_path, "trainer.device=cuda", "trainer.precision=16-mixed", "trainer.compile=true")
    assert results["precision"] == "16-mixed" and math.isfinite(results["test_loss"])


@cuda
def test_cuda_auto_is_bf16_and_compiled(fashion_root: Path, tmp_path: Path) -> None:
    results = short_run(tmp_path, "trainer.device=cuda", "model=resnet18", batches=20)
    assert results["precision"] in ("bf16", "16-mixed") and results["compile"] is True
    assert math.isfinite(results["test_loss"])


def test_benchmark_limit_times_the_models_heaviest_convolution_at_its_real_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # how bench.py finds it: beside the script
    limits = importlib.import_module("limits")
    name, conv, shape = limits.heaviest_conv("alexnet", 128, 28)
    assert (name, conv.in_channels, conv.out_channels, shape) == ("features.3", 64, 192, (128, 64, 7, 7))
    name, conv, shape = limits.heaviest_conv("resnet18", 64, 28)  # 28 → 14 → 7 → 4 px: layer4 does the most
    assert name.startswith("layer4.") and shape == (64, 512, 4, 4)


@pytest.mark.slow
def test_benchmark_quick_mode_writes_its_table(
    fashion_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bench.md"
    # `python benchmarks/bench.py ...` in this process (its time-to-accuracy job still starts its own)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.chdir(tmp_path)
    # one time-to-accuracy job (--skip-main-job) shows that table
    argv = ["bench.py", "--quick", "--device", "cpu", "--out", str(out), "--skip-main-job"]
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(ROOT / "benchmarks" / "bench.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    header = [
        c.strip() for c in next(ln for ln in text.splitlines() if ln.startswith("| model |")).split("|")
    ]
    for model in ("lenet", "alexnet", "resnet18"):
        row = [
            c.strip()
            for c in next(ln for ln in text.splitlines() if ln.startswith(f"| {model} |")).split("|")
        ]
        cell = dict(zip(header, row, strict=True))
        batch, side, step_gflop = int(cell["batch"]), int(cell["input"]), float(cell["GFLOP/step"])
        rates = [float(r.strip("* ")) for r in cell["limit GFLOP/s: matmul / heaviest conv"].split("/")]
        share = float(cell["share of limit"].rstrip("%")) / 100
        assert share == pytest.approx(float(cell["GFLOP/s (cnn-train)"]) / max(rates), abs=0.02, rel=0.1)
        forward = summarize(build_model(model, 10, 1, side), 1, side)["total_flops"] * batch / 1e9
        # a training step is the forward pass and a backward pass of about twice its cost
        assert 2.0 * forward < step_gflop < 3.05 * forward, (model, step_gflop, forward)
    job = next(ln for ln in text.splitlines() if "experiment=fashion_mnist_speedrun" in ln).split("|")
    float(job[2])  # the test accuracy, a number
    assert float(job[3]) > 0 and "model=alexnet data=fashion_mnist" not in text
    # AlexNet's small-image stem (5×5 stride 2, pool) leaves 7×7 maps for its 64→192 5×5 conv: the heaviest
    assert "alexnet: features.3 64→192 5×5 at 7 px" in text
