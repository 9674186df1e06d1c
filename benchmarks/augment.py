"""Augmentation throughput: per-image policies three ways, and training images/s per augmentation choice.

    python benchmarks/augment.py            # about 10 minutes on 2 CPU cores; writes benchmarks/augment-<device>.md
    python benchmarks/augment.py --quick    # a few batches of each, to check it runs

1. RandAugment / TrivialAugment / AutoAugment on one 256-image batch (28×28 grey, 32×32 RGB), images/s:
   torchvision.transforms.v2 called once per image (per-image draws), Kornia's batched policy (if installed;
   one operation per batch) and cnn-train's (per-image draws, one batched call per operation drawn).
2. Training images/s of `fit` (epoch 2; epoch 1 warms up) for each augmentation choice and trick, for LeNet
   (batch 128) and the speedrun net (ResNet-9 width 8, batch 256), all in this one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from bench import ROOT, cnn_train_cfg, machine  # benchmarks/bench.py, next to this file
from torchvision.transforms import v2

from cnn_train.data.policies import AutoAugment, RandAugment, TrivialAugment
from cnn_train.runtime.hardware import pick_device
from cnn_train.training.fit import fit

POLICIES = {  # name: (torchvision, cnn-train, Kornia class name and arguments)
    "randaugment": (v2.RandAugment(), RandAugment(), ("RandAugment", {"n": 2, "m": 9})),
    "trivialaugment": (v2.TrivialAugmentWide(), TrivialAugment(), ("TrivialAugment", {})),
    "autoaugment": (v2.AutoAugment(), AutoAugment(), ("AutoAugment", {})),
}
CHOICES = {  # row label: overrides
    "none": ["augmentation=none"],
    "basic": ["augmentation=basic"],
    "randaugment": ["augmentation=randaugment"],
    "trivialaugment": ["augmentation=trivialaugment"],
    "autoaugment": ["augmentation=autoaugment"],
    "basic + random_erasing=0.25": ["augmentation=basic", "augmentation.random_erasing=0.25"],
    "basic + mixup_alpha=0.2": ["augmentation=basic", "augmentation.mixup_alpha=0.2"],
    "basic + cutmix_alpha=1": ["augmentation=basic", "augmentation.cutmix_alpha=1.0"],
    "trivialaugment + all three": ["augmentation=trivialaugment", "augmentation.random_erasing=0.25",
                                   "augmentation.mixup_alpha=0.2", "augmentation.cutmix_alpha=1.0"],
}  # fmt: skip
NETS = {  # label: (overrides, batches timed on a CPU, on a GPU)
    "lenet": (["model=lenet", "data.batch_size=128"], 40, 300),
    "resnet9 w8 (speedrun)": (["model=resnet9", "model.args.width=8", "data.batch_size=256"], 10, 200),
}


def images_per_s(fn, x: torch.Tensor, reps: int) -> float:
    fn(x)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def policy_rows(reps: int, n: int) -> list[str]:
    try:
        from kornia.augmentation import auto as kornia_auto
    except ImportError:
        kornia_auto = None
    rows = ["| policy | batch | torchvision per image | Kornia batched (per batch) | cnn-train per image |",
            "|---|---|---|---|---|"]  # fmt: skip
    for shape in [(n, 1, 28, 28), (n, 3, 32, 32)]:
        u8 = torch.randint(0, 256, shape, dtype=torch.uint8)
        x = u8.float() / 255
        for name, (tv, ours, (kornia_name, kornia_args)) in POLICIES.items():
            loop = images_per_s(lambda b, tv=tv: torch.stack([tv(img) for img in b]), u8, reps)
            kornia = "not installed"
            if kornia_auto is not None:
                try:
                    kornia = f"{images_per_s(getattr(kornia_auto, kornia_name)(**kornia_args), x, reps):.0f}"
                except Exception as e:  # Kornia's colour operations refuse 1-channel input
                    kornia = f"fails: {type(e).__name__}"
            mine = images_per_s(ours, x, reps)
            size = "×".join(map(str, shape))
            rows.append(f"| {name} | {size} | {loop:.0f} | {kornia} | {mine:.0f} |")
            print(rows[-1], flush=True)
    return rows


def training_rows(device: str, quick: bool, out: Path) -> list[str]:
    gpu = pick_device(device).type == "cuda"
    rows = ["| augmentation | " + " | ".join(f"{net} img/s | × basic" for net in NETS) + " |",
            "|---|" + "---|---|" * len(NETS)]  # fmt: skip
    rates: dict[str, list[float]] = {}
    for label, choice in CHOICES.items():
        for net, (overrides, cpu_steps, gpu_steps) in NETS.items():
            steps = 3 if quick else gpu_steps if gpu else cpu_steps
            cfg = cnn_train_cfg([
                *overrides, *choice, "data=fashion_mnist", "trainer.max_epochs=2", f"trainer.device={device}",
                f"trainer.limit_train_batches={steps}", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
            ])  # fmt: skip
            run_dir = out / f"{len(rates)}-{net.split()[0]}"
            fit(cfg, run_dir)
            lines = (run_dir / "metrics.csv").read_text().splitlines()
            header, last = lines[0].split(","), lines[-1].split(",")
            rates.setdefault(label, []).append(float(last[header.index("images_per_s")]))
        print(label, rates[label], flush=True)
    for label, rate in rates.items():
        cells = [f"{r:.0f} | {r / rates['basic'][i]:.2f}×" for i, r in enumerate(rate)]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few batches of each part, to check it runs")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", type=Path, default=None, help="markdown file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    began = time.perf_counter()
    device = pick_device(args.device)
    out_md = args.out or ROOT / "benchmarks" / f"augment-{'cuda' if device.type == 'cuda' else 'cpu'}.md"
    command = f"python benchmarks/augment.py{' --quick' if args.quick else ''}"
    lines = [f"Machine: {machine(device)}; torch {torch.__version__}. Command: `{command}`", ""]
    lines += policy_rows(reps=1 if args.quick else 2, n=32 if args.quick else 256)
    lines += [
        "",
        "Training images/s of `fit`, epoch 2 (data, augmentation, step), and the ratio to `basic`:",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        lines += training_rows(args.device, args.quick, Path(tmp))
    lines += ["", f"Benchmark wall time: {time.perf_counter() - began:.0f} s."]
    out_md.write_text("\n".join(lines) + "\n")
    print(f"wrote {out_md}")


if __name__ == "__main__":
    main()
