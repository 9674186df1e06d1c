"""cnn-data: what is in a dataset before anything trains on it: counts, sizes, broken files, duplicates, leaks.

Validation is checked as its own split, exactly as cnn-train holds it out (data.val_split and the seed), so a
validation image with a copy in train shows up as a leak: it would inflate the accuracy that picks best.pt.
Built-in datasets name images by split and index (for val: the index in the training file it was drawn from);
image folders by path.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import torch
from PIL import Image
from rich.table import Table

from cnn_train.analysis.duplicates import exact_groups, near_groups
from cnn_train.data import datasets as ds
from cnn_train.data.table import LabelFile
from cnn_train.data.validation import validation_index, validation_pool
from cnn_train.runtime.errors import UserError

NEAR_THRESHOLD = 4  # bits of the 64-bit pHash (96% of resized + JPEG re-encoded copies measured ≤ 6 apart)
NEAR_MAX_DIFF = 4.0  # mean |difference| of 16×16 grey thumbnails (0–255) that still counts as the same image
THUMB_SIDE = 16


@dataclass
class Inventory:
    """One row per readable image: where it is, what it is, and its two hashes."""

    ids: list[dict[str, Any]] = field(default_factory=list)  # {"split", "index"} or {"split", "path"}
    labels: list[Any] = field(default_factory=list)  # class index, or a multi-label image's tuple of them
    keys: list[bytes] = field(default_factory=list)  # content hash of the decoded pixels
    phashes: list[int] = field(default_factory=list)  # 64-bit perceptual hash
    thumbs: list[np.ndarray] = field(default_factory=list)  # grey THUMB_SIDE² thumbnails that confirm a match
    sizes: dict[str, Counter[str]] = field(default_factory=dict)
    modes: dict[str, Counter[str]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def add(self, split: str, ident: dict[str, Any], label: Any, image: Image.Image) -> None:
        self.ids.append({"split": split, **ident})
        self.labels.append(label)
        self.keys.append(_content_key(image))
        self.phashes.append(_phash(image))
        thumb = image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
        self.thumbs.append(np.asarray(thumb, dtype=np.uint8))
        self.sizes.setdefault(split, Counter())[f"{image.width}x{image.height}"] += 1
        self.modes.setdefault(split, Counter())[image.mode] += 1


def _content_key(image: Image.Image) -> bytes:
    header = f"{image.mode}{image.size}".encode()
    return hashlib.blake2b(header + image.tobytes(), digest_size=16).digest()


def _phash(image: Image.Image) -> int:
    bits = imagehash.phash(image).hash.ravel()  # 8×8 booleans: DCT coefficients above their median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _tensor_image(x: torch.Tensor) -> Image.Image:
    array = x.numpy()
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))


def _add_tensor_split(inv: Inventory, split: str, data: ds.TensorSplit, index: torch.Tensor) -> None:
    for x, y, i in zip(data.images, data.labels.tolist(), index.tolist(), strict=True):
        inv.add(split, {"index": i}, y, _tensor_image(x))


def _add_file_split(inv: Inventory, split: str, data: ds.FileSplit) -> None:
    for path, label in data.samples:
        try:
            with Image.open(path) as im:
                im.load()
                inv.add(split, {"path": path}, label, im)
        except Exception:  # any failure to decode a file from the wild: it is reported, not fatal
            inv.unreadable.append(path)


def _folder_files(root: Path) -> set[str]:
    """Every image file under the class folders cnn-train would read, readable or not."""
    top = root / "train" if (root / "train").is_dir() else root
    tops = [top] + [root / s for s in ("val", "test") if top != root and (root / s).is_dir()]
    return {path for d in tops for path, _ in ds._scan_folder(d)[0].samples}


def _load(
    name: str,
    root: Path | None,
    val_split: float,
    seed: int,
    table: LabelFile | None,
    folds: tuple[int, int] | None,
) -> tuple[dict[str, Any], dict[str, Any], list[str], int | None]:
    """The splits as cnn-train sees them, for held-out splits the source index of every image, the classes,
    and a CSV's bad rows skipped (cnn-data reports them instead of stopping)."""
    if name == "fashion_mnist_multilabel":
        raise UserError(
            "data.name: fashion_mnist_multilabel is built from Fashion-MNIST: check data=fashion_mnist"
        )
    src = ds.read_source(name, root, strict=False, table=table)
    pool = validation_pool(src.splits, folds)
    if pool is None:
        return src.splits, {}, src.classes, src.skipped_rows
    kept, held = validation_index(pool, val_split, seed, folds)  # the very split load_dataset draws
    splits = {**src.splits, "train": pool.subset(kept), "val": pool.subset(held)}
    return splits, {"train": kept, "val": held}, src.classes, src.skipped_rows


def _inventory(
    name: str,
    root: Path | None,
    val_split: float,
    seed: int,
    table: LabelFile | None,
    folds: tuple[int, int] | None,
) -> tuple[Inventory, list[str], int | None]:
    splits, index, classes, skipped = _load(name, root, val_split, seed, table, folds)
    inv = Inventory()
    for split in ("train", "val", "test"):
        data = splits.get(split)
        if isinstance(data, ds.TensorSplit):
            _add_tensor_split(inv, split, data, index.get(split, torch.arange(len(data))))
        elif isinstance(data, ds.FileSplit):
            _add_file_split(inv, split, data)
    if name == "image_folder" and root is not None:  # files the loader's header check already dropped
        seen = {i["path"] for i in inv.ids} | set(inv.unreadable)
        inv.unreadable.extend(sorted(_folder_files(root) - seen))
    return inv, classes, skipped


def _members(inv: Inventory, group: list[int]) -> list[dict[str, Any]]:
    order = {"train": 0, "val": 1, "test": 2}
    ids = [inv.ids[i] for i in group]
    return sorted(ids, key=lambda m: (order[m["split"]], m.get("index", -1), m.get("path", "")))


def _leaks(groups: list[list[dict[str, Any]]], split: str) -> int:
    """How many images of `split` have a copy in train: they test what the model has already seen."""
    return sum(sum(m["split"] == split for m in g) for g in groups if any(m["split"] == "train" for m in g))


def _class_counts(inv: Inventory, classes: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for ident, label in zip(inv.ids, inv.labels, strict=True):
        per_split = counts.setdefault(ident["split"], dict.fromkeys(classes, 0))
        for c in label if isinstance(label, tuple) else (label,):  # a multi-label image counts for each
            per_split[classes[c]] += 1
    return counts


def check_dataset(
    name: str,
    root: str | Path | None,
    val_split: float = 0.1,
    seed: int = 42,
    near_threshold: int = NEAR_THRESHOLD,
    near_max_diff: float = NEAR_MAX_DIFF,
    *,
    table: LabelFile | None = None,
    folds: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Counts, sizes, modes, unreadable files and duplicate groups of a dataset, as cnn-data writes them.

    Args:
        name, root, val_split: data.name, data.root and data.val_split, as cnn-train takes them.
        seed: the hold-out seed (cnn-train's trainer.seed), so val is the split training validates on.
        near_threshold: most differing bits of the 64-bit perceptual hash for a near duplicate candidate.
        near_max_diff: most mean |difference| (0–255) of the two 16×16 grey thumbnails that confirms one.
        table, folds: data=csv's file and columns; data.folds and data.fold (then that fold is val).
    """
    if not 0 <= near_threshold < 64:
        raise UserError(f"near_threshold: {near_threshold} must lie in 0..63 (bits of a 64-bit hash)")
    if near_max_diff < 0:
        raise UserError(f"near_max_diff: {near_max_diff} must be ≥ 0 (a mean pixel difference, 0–255)")
    place = Path(str(root)).expanduser() if root is not None else None
    inv, classes, skipped = _inventory(name, place, val_split, seed, table, folds)
    exact = [_members(inv, g) for g in exact_groups(inv.keys)]
    hashes, thumbs = (
        np.array(inv.phashes, np.uint64),
        np.stack(inv.thumbs) if inv.thumbs else np.zeros((0, 1, 1)),
    )
    near = [_members(inv, g) for g in near_groups(hashes, thumbs, inv.keys, near_threshold, near_max_diff)]
    exact.sort(key=lambda g: str(g[0]))
    near.sort(key=lambda g: str(g[0]))
    counts = _class_counts(inv, classes)
    train = [n for n in counts.get("train", {}).values()]
    across = lambda gs: sum(len({m["split"] for m in g}) > 1 for g in gs)  # noqa: E731
    summary = {
        **{f"images_{s}": sum(c.values()) for s, c in counts.items()},
        "classes": len(classes),
        "imbalance_ratio": round(max(train) / min(train), 3) if train and min(train) > 0 else None,
        "unreadable": len(inv.unreadable),
        **({"skipped_rows": skipped} if skipped is not None else {}),
        "exact_duplicate_groups_within_splits": len(exact) - across(exact),
        "exact_duplicate_groups_across_splits": across(exact),
        "near_duplicate_groups_within_splits": len(near) - across(near),
        "near_duplicate_groups_across_splits": across(near),
        **{f"{s}_exact_in_train": _leaks(exact, s) for s in ("val", "test") if s in counts},
        **{f"{s}_near_in_train": _leaks(near, s) for s in ("val", "test") if s in counts},
        "near_threshold_bits": near_threshold,
        "near_max_diff": near_max_diff,
    }
    return {
        "dataset": name,
        "summary": summary,
        "class_counts": counts,
        "sizes": {s: dict(c.most_common()) for s, c in inv.sizes.items()},
        "modes": {s: dict(c.most_common()) for s, c in inv.modes.items()},
        "unreadable": sorted(inv.unreadable),
        "exact_duplicates": exact,
        "near_duplicates": near,
    }


def summary_table(report: dict[str, Any]) -> Table:
    """The summary as the short table cnn-data prints; the groups themselves are in the JSON."""
    table = Table(title=f"{report['dataset']}: data check", show_header=False)
    for key, value in report["summary"].items():
        table.add_row(key, "n/a" if value is None else str(value))
    return table
