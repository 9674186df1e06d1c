"""An imbalanced image folder from real Fashion-MNIST images, as PNG files: what data.sampler=balanced is for.

    python benchmarks/imbalanced_folder.py imbalanced            # T-shirt/top 1800 : shirt 200 (9:1)
    python benchmarks/imbalanced_folder.py imbalanced --ratio 19 --train 2000 --majority 0 --minority 6

train/<class>/ holds the first images of each class in the training file, in the given ratio; val/<class>/
the next `--val` images of each class, balanced, so that validation accuracy (which picks best.pt) is the
balanced accuracy and not won by predicting the majority class; test/<class>/ the first `--test` images of
each class in the test file, balanced, so that each class's recall is measured on equal footing. `--val 0`
leaves val/ out: data.val_split then holds out an imbalanced share of train. Nothing random: the same
arguments always write the same files. docs/labels.md shows the runs on it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets import FashionMNIST

from cnn_train.data.datasets import DEBIAN_FASHION_MNIST, load_mnist_family


def folder_name(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")  # "T-shirt/top" -> "t_shirt_top"


def write_class(
    images: torch.Tensor, labels: torch.Tensor, cls: int, count: int, folder: Path, skip: int = 0
) -> None:
    """The images of class `cls` after the first `skip`, `count` of them, as PNG files named by index."""
    chosen = (labels == cls).nonzero().flatten()[skip:]
    if len(chosen) < count:
        raise SystemExit(f"class {cls} has only {len(chosen)} more images, {count} asked for")
    folder.mkdir(parents=True, exist_ok=True)
    for i in chosen[:count].tolist():
        Image.fromarray(images[i, 0].numpy(), mode="L").save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the folder to write (train/ and test/ go inside)")
    parser.add_argument("--majority", type=int, default=0, help="Fashion-MNIST class index (0 = T-shirt/top)")
    parser.add_argument("--minority", type=int, default=6, help="Fashion-MNIST class index (6 = Shirt)")
    parser.add_argument("--ratio", type=int, default=9, help="majority images per minority image in train")
    parser.add_argument("--train", type=int, default=2000, help="training images in all")
    parser.add_argument("--val", type=int, default=100, help="validation images per class (0: no val/)")
    parser.add_argument("--test", type=int, default=1000, help="test images per class (at most 1000)")
    parser.add_argument("--root", type=Path, default=DEBIAN_FASHION_MNIST, help="Fashion-MNIST IDX files")
    args = parser.parse_args()
    if (args.out / "train").exists():
        raise SystemExit(f"{args.out / 'train'} exists: choose a new folder")
    splits, classes = load_mnist_family("fashion_mnist", args.root)
    minority = args.train // (args.ratio + 1)
    counts = {args.majority: args.train - minority, args.minority: minority}
    for cls, n in counts.items():
        name = folder_name(FashionMNIST.classes[cls])
        train = splits["train"]
        write_class(train.images, train.labels, cls, n, args.out / "train" / name)
        if args.val:
            write_class(train.images, train.labels, cls, args.val, args.out / "val" / name, skip=n)
        write_class(splits["test"].images, splits["test"].labels, cls, args.test, args.out / "test" / name)
    shown = ", ".join(f"{classes[c]} {n}" for c, n in counts.items())
    print(f"wrote {args.out}: train {shown}; val {args.val} and test {args.test} of each")


if __name__ == "__main__":
    main()
