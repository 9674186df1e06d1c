"""cnn-train's benchmark: throughput against a tutorial-style loop, time-to-accuracy, achieved GFLOP/s.

    python benchmarks/bench.py                # full run (CPU: about 25 minutes), writes benchmarks/results-<device>.md
    python benchmarks/bench.py --quick        # a minute: tiny runs of every part (the slow test runs this)
    python benchmarks/bench.py --best --keep runs   # also the 30-minute recipe; keep the three runs' folders

Everything is measured in this one process on this machine, so the ratios compare like with like:
1. training throughput (images/s, data included) of lenet, alexnet and resnet18 through cnn-train's own `fit`
   against a seed-style loop of the same model, batch and input size: torchvision's FashionMNIST dataset,
   PIL -> ToTensor -> Normalize per image, a DataLoader, fp32, NCHW, `.item()` for the metrics every step;
2. time-to-accuracy: wall seconds from starting `cnn-train` to its final line, with the test accuracy it
   reached, for the speedrun recipe and for the main job (`cnn-train model=alexnet data=fashion_mnist`), and
   with `--best` for `experiment=fashion_mnist_best` (the 30-minute record);
3. achieved GFLOP/s of the training step (FLOPs of forward + backward from torch.utils.flop_counter: the
   convolutions and matrix products; pooling, activations, the loss and the optimizer are not counted), and
   that rate as a share of the limit: the most this machine attained in the same numerics (limits.py: a large
   matmul, and the model's heaviest convolution forward + backward at its real shape);
4. with `lightning` installed (the `lightning` extra), a Lightning-style loop over the same network and data
   (lightning_loop.py): what a LightningModule + DataLoader user gets.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning_loop import available, lightning_loop
from limits import Limit, limit, matmul_rate, numerics
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tutorial import tutorial_loader

from cnn_train.config import register_schemas
from cnn_train.data.datasets import DEBIAN_FASHION_MNIST, MNIST_FILES
from cnn_train.models import build_model
from cnn_train.runtime.hardware import compute_dtype, physical_cores, pick_device
from cnn_train.training.fit import fit

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # model: (batch size, input side, batches timed on a CPU, on a GPU)
    "lenet": (128, 28, 300, 300),
    "alexnet": (128, 28, 40, 200),
    "resnet18": (128, 28, 8, 200),
}


def cnn_train_cfg(overrides: list[str]):
    register_schemas()  # what cnn-train's entry point does before Hydra reads configs/train.yaml
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def ours(model: str, bs: int, side: int, steps: int, device: str, out: Path, epochs: int = 2) -> float:
    """Images/s of the last epoch of a real `fit` run: epoch 2 of 2 (epoch 1 warms up: allocator, oneDNN
    plans, compile); --quick runs one."""
    cfg = cnn_train_cfg([
        f"model={model}", "data=fashion_mnist", f"data.batch_size={bs}", f"data.image_size={side}",
        f"trainer.max_epochs={epochs}", f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", f"trainer.device={device}", "optimizer=sgd", "trainer.report=false",
    ])  # fmt: skip
    run_dir = out / f"fit-{model}"
    fit(cfg, run_dir)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    return float(last[header.index("images_per_s")])


def torchvision_root(tmp: Path) -> Path:
    """Debian's gzipped IDX files, unpacked where torchvision's FashionMNIST(download=False) looks."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for names in MNIST_FILES.values():
        for name in names:
            with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return tmp


def seed_loop(model: str, bs: int, side: int, steps: int, device: torch.device, root: Path) -> float:
    """Images/s of the loop the tutorials teach, on the same network, batch and input size."""
    loader = tutorial_loader(bs, side, device, root)
    torch.manual_seed(0)
    net = build_model(model, num_classes=10, in_channels=1, image_size=side).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    warmup, seen, total, correct = 3, 0, 0.0, 0
    net.train()
    start = 0.0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        if i == warmup + steps:
            break
        x, y = x.to(device), y.to(device)
        out = net(x)
        loss = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
        correct += (out.argmax(1) == y).sum().item()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def train_step_flops(model: str, bs: int, side: int) -> int:
    """FLOPs of one training step (forward + backward) at this batch and input size."""
    net = build_model(model, num_classes=10, in_channels=1, image_size=side)
    x, y = torch.randn(bs, 1, side, side), torch.randint(0, 10, (bs,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(net(x), y).backward()
    return counter.get_total_flops()


def limit_cell(lim: Limit) -> str:
    """Both rates; the larger (the step's ceiling, which the share is of) in bold."""
    cells = [f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in (lim.matmul, lim.conv)]
    cells[lim.conv > lim.matmul] = f"**{cells[lim.conv > lim.matmul]}**"
    return " / ".join(cells)


def time_to_accuracy(args: list[str], out: Path) -> tuple[float, float]:
    """Wall seconds from starting cnn-train to its exit, and the test accuracy it reports."""
    name = "-".join(args).translate(str.maketrans("=/.", "___"))[:60]
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / f"job-{name}"  # no '=' in it: the path goes back through Hydra's override parser
    cmd = [sys.executable, "-m", "cnn_train.cli", *args, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=out, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, json.loads((run_dir / "results.json").read_text())["test_acc"]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, {physical_cores()} CPU cores"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{cpu}, {physical_cores()} cores ({isa}), no GPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few batches of each part, to check it runs")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument(
        "--out", type=Path, default=None, help="markdown file (default benchmarks/results-<device>.md)"
    )
    parser.add_argument(
        "--skip-main-job", action="store_true", help="leave out the main job's time-to-accuracy"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write the time-to-accuracy runs' directories here and keep them",
    )
    parser.add_argument("--throughput-only", action="store_true", help="leave out both time-to-accuracy jobs")
    parser.add_argument(
        "--best",
        action="store_true",
        help="also time experiment=fashion_mnist_best (CPU: about 30 minutes more)",
    )
    args = parser.parse_args()
    began = time.perf_counter()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    out_md = args.out or ROOT / "benchmarks" / f"results-{'cuda' if gpu else 'cpu'}.md"
    speed = numerics(device)
    matmul = matmul_rate(device, compute_dtype(speed.precision))
    lines = [
        f"Machine: {machine(device)}; torch {torch.__version__}. "
        f"Command: `python benchmarks/bench.py{''.join(' ' + a for a in sys.argv[1:])}`",
        f"Numerics `auto` picks here (cnn-train's runs and the limit): {speed.describe()}.",
        "",
        "| model | batch | input | seed-style loop img/s | Lightning loop img/s | cnn-train img/s | ratio "
        "| GFLOP/step | GFLOP/s (cnn-train) | limit GFLOP/s: matmul / heaviest conv | share of limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    heaviest = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = torchvision_root(tmp / "tv")
        for model, (bs, side, cpu_steps, gpu_steps) in MODELS.items():
            steps = 3 if args.quick else (gpu_steps if gpu else cpu_steps)
            bs = 16 if args.quick else bs
            base = seed_loop(model, bs, side, steps, device, root)
            light = lightning_loop(model, bs, side, steps, device, root, speed.precision)
            mine = ours(model, bs, side, steps, args.device, tmp, epochs=1 if args.quick else 2)
            flops = train_step_flops(model, bs, side)
            gflops = flops / 1e9 * mine / bs
            lim = limit(model, bs, side, device, matmul)
            row = (
                f"| {model} | {bs} | {side} | {base:.0f} | {f'{light:.0f}' if light else '—'} | {mine:.0f} "
                f"| {mine / base:.2f}× | {flops / 1e9:.2f} | {gflops:.1f} | {limit_cell(lim)} "
                f"| {gflops / lim.best:.0%} |"
            )
            lines.append(row)
            heaviest.append(f"{model}: {lim.conv_name}")
            print(row, flush=True)
        lines += ["", "Heaviest convolution (batch as above) — " + "; ".join(heaviest) + "."]
        if not available():
            lines.append("Lightning loop: — (`lightning` not installed: pip install 'cnn-train[lightning]').")
        jobs = [] if args.throughput_only else [["experiment=fashion_mnist_speedrun"]]
        if not (args.skip_main_job or args.throughput_only):
            jobs.append(["model=alexnet", "data=fashion_mnist"])
        if args.best and not args.throughput_only:
            jobs.append(["experiment=fashion_mnist_best"])
        if jobs:
            lines += [
                "",
                "| command | test accuracy | wall seconds (process start to exit) |",
                "|---|---|---|",
            ]
        for job in jobs:
            extra = [
                "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=2",
            ]  # fmt: skip
            full = job + ([f"trainer.device={args.device}"] if args.device != "auto" else [])
            seconds, acc = time_to_accuracy(full + (extra if args.quick else []), args.keep or tmp)
            row = f"| `cnn-train {' '.join(job)}` | {acc:.4f} | {seconds:.0f} |"
            lines.append(row)
            print(row, flush=True)
    lines += ["", f"Benchmark wall time: {time.perf_counter() - began:.0f} s."]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(lines) + "\n")
    print(f"wrote {out_md}")


if __name__ == "__main__":
    main()
