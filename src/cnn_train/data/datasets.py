"""Where images come from: the MNIST family (IDX), CIFAR-10 (pickle batches), folders of images, CSV files,
and the Fashion-MNIST mosaics (multi-label).

Built-in datasets are small, so they are held in memory as uint8 tensors; image folders and the files a CSV
lists stay on disk as (path, label) lists decoded by loader workers. A multi-label dataset's labels are sets:
N×K float 0/1 rows in memory, (path, tuple of class indices) on disk, made into rows of K by the file loader.
"""

from __future__ import annotations

import functools
import gzip
import logging
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torchvision import datasets as tvd

from cnn_train.data import mosaic
from cnn_train.data.labels import LabelSet, check_folds
from cnn_train.data.table import LabelFile, read_table
from cnn_train.data.validation import validation_index, validation_pool
from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MOSAICS = {"train+val": 60_000, "test": 10_000}  # data=fashion_mnist_multilabel: mosaics per part
MOSAIC_SEED = 2017  # the mosaics' layout and items; the test mosaics depend on nothing else
DATASETS = "fashion_mnist, mnist, cifar10, image_folder, csv, fashion_mnist_multilabel"  # data.name
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class TensorSplit:
    """Images as uint8 N×C×H×W and labels, sliced into batches without copies per image.

    Labels are int64 class indices, or for multi-label data an N×K float32 multi-hot matrix.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])

    def joined(self, other: TensorSplit) -> TensorSplit:
        return TensorSplit(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]))

    def label_sets(self) -> list[LabelSet]:
        """Each image's classes: (c,), or the classes a multi-hot row marks."""
        if self.labels.ndim == 1:
            return [(y,) for y in self.labels.tolist()]
        return [tuple(i for i, v in enumerate(row) if v) for row in self.labels.tolist()]


@dataclass
class FileSplit:
    """Image files with their labels, decoded on demand.

    A label is a class index, or for multi-label data (`label_count` = K classes) a tuple of class indices,
    which the file loader turns into a multi-hot row of K.
    """

    samples: list[tuple[str, Any]]
    label_count: int | None = None  # multi-label: K, the width of a multi-hot row; None: one class per image

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, index: torch.Tensor) -> FileSplit:
        return FileSplit([self.samples[i] for i in index.tolist()], self.label_count)

    def joined(self, other: FileSplit) -> FileSplit:
        return FileSplit(self.samples + other.samples, self.label_count)

    def label_sets(self) -> list[LabelSet]:
        if self.label_count is None:
            return [(y,) for _, y in self.samples]
        return [tuple(y) for _, y in self.samples]


Split = TensorSplit | FileSplit


@dataclass
class Dataset:
    """Train / validation / optional test splits and what the model needs to know about them."""

    name: str
    train: Split
    val: Split
    test: Split | None
    classes: list[str]
    channels: int
    native_size: int | None  # None: files of any size, resized to the training side
    multi_label: bool = False  # labels are sets of classes (multi-hot rows), not one class per image
    skipped_rows: int | None = None  # data=csv: bad rows left out under data.strict=false (None: not a table)

    def splits(self) -> dict[str, Split]:
        """The splits there are, by name (no test split: train and val only)."""
        named = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in named.items() if v is not None}


def multi_hot(label_sets: Iterable[Iterable[int]], num_classes: int) -> torch.Tensor:
    """N×K float32 rows with a 1 at each class of each set."""
    sets = [list(s) for s in label_sets]
    rows = torch.zeros(len(sets), num_classes)
    for i, s in enumerate(sets):
        rows[i, s] = 1.0
    return rows


def label_rows(split: Split, num_classes: int) -> torch.Tensor:
    """Every label of a split as N×K 0/1 rows (one-hot for single-label): what class counts are read from."""
    if isinstance(split, TensorSplit) and split.labels.ndim == 2:
        return split.labels.float()
    return multi_hot(split.label_sets(), num_classes)


def _holds_sets(split: Split) -> bool:
    return split.labels.ndim == 2 if isinstance(split, TensorSplit) else split.label_count is not None


def as_multi_label(split: Split, num_classes: int) -> Split:
    """The split with its labels as sets: one-hot rows for single labels, the loader told their width."""
    if isinstance(split, TensorSplit):
        return TensorSplit(split.images, label_rows(split, num_classes))
    return FileSplit(
        [(p, s) for (p, _), s in zip(split.samples, split.label_sets(), strict=True)], num_classes
    )


def settle_labels(data: Dataset, force: bool = False) -> Dataset:
    """Mark a dataset multi-label when its labels are sets (or `force`: data.multi_label=true) and put every
    split in that form, so that training, evaluation and prediction see one representation."""
    if not (force or data.multi_label or any(_holds_sets(s) for s in data.splits().values())):
        return data
    k = len(data.classes)
    for name, split in data.splits().items():
        setattr(data, name, as_multi_label(split, k))
    data.multi_label = True
    return data


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format), gzipped or not, as a uint8 tensor (shared: do not modify it).

    Decoded once per process and file version (path, size, mtime): a sweep's jobs or a test session that
    load the same dataset again skip the gunzip, which takes longer than a small run's training.
    """
    try:
        stat = path.stat()
    except OSError as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from e
    return _read_idx(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx(name: str, size: int, mtime_ns: int) -> torch.Tensor:
    path = Path(name)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = 1
    for d in dims:
        count *= d
    if len(raw) - offset != count:
        raise UserError(f"{path}: IDX header promises {dims} but the file holds {len(raw) - offset} bytes")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).view(*dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if all(_find(d, s) for pair in MNIST_FILES.values() for s in pair):
            return d
    return None


def _not_found(name: str, root: Path, tried: list[Path], extra: str, err: Exception) -> UserError:
    places = ", ".join(str(p) for p in tried)
    return UserError(
        f"data: no {name} files found (looked in {places}) and the download failed ({err}). "
        f"Either point data.root at a folder that holds them, {extra}or run once with internet access "
        f"so torchvision can download them into data.root={root}."
    )


def load_mnist_family(name: str, root: Path) -> tuple[dict[str, TensorSplit], list[str]]:
    """MNIST or Fashion-MNIST from data.root, Debian's package, then torchvision's download."""
    tv_class = tvd.FashionMNIST if name == "fashion_mnist" else tvd.MNIST
    candidates = [root, root / tv_class.__name__ / "raw"]
    extra = ""
    if name == "fashion_mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
        extra = "install Debian's package (apt-get install dataset-fashion-mnist), "
    directory = _idx_dir(candidates)
    if directory is None:
        try:
            tv_class(str(root), train=True, download=True)
            tv_class(str(root), train=False, download=True)
        except Exception as e:  # torchvision raises RuntimeError/URLError/OSError when offline
            raise _not_found(name, root, candidates, extra, e) from e
        directory = root / tv_class.__name__ / "raw"
    log.info("%s: reading IDX files from %s", name, directory)
    splits = {}
    for split, (images, labels) in MNIST_FILES.items():
        x = read_idx(_find(directory, images))  # type: ignore[arg-type]
        y = read_idx(_find(directory, labels)).long()  # type: ignore[arg-type]
        if x.ndim != 3 or len(x) != len(y):
            raise UserError(f"{directory}: {split} images {tuple(x.shape)} do not match {len(y)} labels")
        splits[split] = TensorSplit(x.unsqueeze(1).contiguous(), y)
    return splits, list(tv_class.classes)


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow the numpy array reconstruction they need and nothing else."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise UserError(f"{path}: not a CIFAR-10 python batch ({e})") from e
    if not isinstance(entry, dict):
        raise UserError(f"{path}: not a CIFAR-10 python batch (holds {type(entry).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def load_cifar10(root: Path) -> tuple[dict[str, TensorSplit], list[str]]:
    """CIFAR-10 python pickle batches from data.root, then torchvision's download."""
    candidates = [root / "cifar-10-batches-py", root]
    directory = next((d for d in candidates if (d / "test_batch").is_file()), None)
    if directory is None:
        try:
            tvd.CIFAR10(str(root), train=True, download=True)
        except Exception as e:  # torchvision raises RuntimeError/URLError/OSError when offline
            raise _not_found("cifar10", root, candidates, "", e) from e
        directory = root / "cifar-10-batches-py"
    log.info("cifar10: reading batches from %s", directory)
    meta = _unpickle(directory / "batches.meta")
    splits = {}
    for split, files in {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}.items():
        xs, ys = [], []
        for fname in files:
            entry = _unpickle(directory / fname)
            data = torch.as_tensor(entry["data"], dtype=torch.uint8)
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(torch.as_tensor(entry["labels"], dtype=torch.long))
        splits[split] = TensorSplit(torch.cat(xs).contiguous(), torch.cat(ys))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    return splits, names


def _scan_folder(directory: Path, class_to_idx: dict[str, int] | None = None) -> tuple[FileSplit, list[str]]:
    """Class folders under `directory`; non-image files are ignored."""
    try:
        classes, found = tvd.folder.find_classes(str(directory))
        mapping = class_to_idx or found
        if class_to_idx is not None and (extra := set(classes) - set(class_to_idx)):
            raise UserError(f"{directory}: classes {sorted(extra)} are not in the training folder")
        samples = tvd.folder.make_dataset(str(directory), mapping, extensions=tvd.folder.IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise UserError(f"data.root: {directory}: {e}") from e
    return FileSplit(samples), classes


def _drop_unreadable(split: FileSplit, strict: bool) -> FileSplit:
    """Check every file once (header, and PNG checksums): broken files are listed and skipped, or fail if strict.

    What this cheap pass cannot see (a JPEG cut short) is caught when decoded, and skipped with a warning.
    """
    bad = []
    for path, _ in split.samples:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception:  # any failure to parse a file from the wild means the file is unusable
            bad.append(path)
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        if strict:
            raise UserError(f"data.strict: {len(bad)} unreadable image(s): {shown}")
        log.warning("skipping %d unreadable image(s): %s", len(bad), shown)
    skipped = set(bad)
    return FileSplit([s for s in split.samples if s[0] not in skipped])


def load_image_folder(root: Path, strict: bool = False) -> tuple[dict[str, FileSplit], list[str]]:
    """`root/train` (+ `root/val`, `root/test`) or one folder of class folders."""
    if not root.is_dir():
        raise UserError(f"data.root: {root} is not a folder of class folders")
    top = root / "train" if (root / "train").is_dir() else root
    train, classes = _scan_folder(top)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    splits = {"train": _drop_unreadable(train, strict)}
    for name in ("val", "test"):
        if top != root and (root / name).is_dir():
            splits[name] = _drop_unreadable(_scan_folder(root / name, class_to_idx)[0], strict)
    return splits, classes


def load_table(table: LabelFile, strict: bool) -> tuple[dict[str, FileSplit], list[str], int]:
    """data=csv: the file's usable rows as file splits, the class names, and how many bad rows were skipped."""
    rows = read_table(table, strict)
    index = {c: i for i, c in enumerate(rows.classes)}
    width = len(rows.classes) if table.multi_label else None

    def sample(path: str, labels: tuple[str, ...]) -> tuple[str, Any]:
        return (path, tuple(index[c] for c in labels)) if width else (path, index[labels[0]])

    splits = {name: FileSplit([sample(*r) for r in split], width) for name, split in rows.splits.items()}
    return splits, rows.classes, rows.skipped


def load_fashion_mosaics(root: Path, val_split: float, seed: int) -> tuple[dict[str, TensorSplit], list[str]]:
    """Fashion-MNIST as 2×2 mosaics of 1–4 items (data/mosaic.py), labelled with the classes they show.

    Training and validation mosaics are built from disjoint parts of the training images (held out by
    data.val_split and the seed), test mosaics from the test images alone: no image is in two splits.
    """
    base, classes = load_mnist_family("fashion_mnist", root)
    kept, held = validation_index(base["train"], val_split, seed, None)  # the base images, before mosaics
    train, val = base["train"].subset(kept), base["train"].subset(held)
    n_val = max(1, round(MOSAICS["train+val"] * val_split))
    parts = {
        "train": (train, MOSAICS["train+val"] - n_val),
        "val": (val, n_val),
        "test": (base["test"], MOSAICS["test"]),
    }
    splits = {}
    for i, (name, (source, count)) in enumerate(parts.items()):
        tiles = mosaic.layout(len(source), count, torch.Generator().manual_seed(MOSAIC_SEED + i))
        splits[name] = TensorSplit(*mosaic.compose(source.images, source.labels, len(classes), tiles))
    return splits, classes


def describe(
    name: str, root: str | Path | None, channels: int = 3, table: LabelFile | None = None
) -> tuple[int, int, int | None]:
    """(channels, classes, native side) without reading images: enough to build and inspect a model."""
    if name in ("fashion_mnist", "mnist"):
        return 1, 10, 28
    if name == "cifar10":
        return 3, 10, 32
    if name == "fashion_mnist_multilabel":
        return 1, 10, 28 * mosaic.GRID
    if name == "image_folder":
        root = Path(str(root)).expanduser()
        top = root / "train" if (root / "train").is_dir() else root
        try:
            classes, _ = tvd.folder.find_classes(str(top))
        except FileNotFoundError as e:
            raise UserError(f"data.root: {top}: {e}") from e
        return channels, len(classes), None
    if name == "csv":
        if table is None:
            raise UserError("data.file: give the CSV or TSV file of image paths and labels")
        return channels, len(read_table(table, strict=False, check_files=False).classes), None
    raise UserError(f"data.name: unknown dataset {name!r}; choose {DATASETS}")


@dataclass
class Source:
    """A dataset's splits as its files hold them, before validation is carved out."""

    splits: dict[str, Split]
    classes: list[str]
    channels: int
    native_size: int | None
    multi_label: bool = False
    skipped_rows: int | None = None


def read_source(
    name: str,
    root: str | Path | None,
    channels: int = 3,
    strict: bool = False,
    table: LabelFile | None = None,
) -> Source:
    """The splits a dataset's files hold (data.name, data.root, data.file), as cnn-train and cnn-data read them."""
    if name == "csv":
        if table is None:
            raise UserError("data.file: give the CSV or TSV file of image paths and labels")
        splits, classes, skipped = load_table(table, strict)
        return Source(splits, classes, channels, None, table.multi_label, skipped)  # type: ignore[arg-type]
    path = Path(str(root)).expanduser()
    if name in ("fashion_mnist", "mnist"):
        return Source(*load_mnist_family(name, path), 1, 28)  # type: ignore[arg-type]
    if name == "cifar10":
        return Source(*load_cifar10(path), 3, 32)  # type: ignore[arg-type]
    if name == "image_folder":
        return Source(*load_image_folder(path, strict), channels, None)  # type: ignore[arg-type]
    raise UserError(f"data.name: unknown dataset {name!r}; choose {DATASETS}")


def load_dataset(
    name: str,
    root: str | Path | None,
    val_split: float,
    seed: int,
    channels: int = 3,
    strict: bool = False,
    *,
    table: LabelFile | None = None,
    folds: tuple[int, int] | None = None,
    multi_label: bool = False,
) -> Dataset:
    """Load a dataset by its config name (data.name) and carve out the validation split.

    `folds` = (data.folds, data.fold): fold `data.fold` of a stratified k-fold split validates instead.
    `multi_label` (data.multi_label) makes single-label data multi-label (one-hot sets); data whose labels are
    sets is multi-label anyway.
    """
    if name == "fashion_mnist_multilabel":  # its val mosaics are built from held-out images: no re-split
        if folds is not None:
            raise UserError(
                "data.folds: fashion_mnist_multilabel's train and val mosaics are built from separate images; "
                "folds over the mosaics would share images between training and validation"
            )
        src = Source(
            *load_fashion_mosaics(Path(str(root)).expanduser(), val_split, seed), 1, 28 * mosaic.GRID
        )
    else:
        src = read_source(name, root, channels, strict, table)
    pool = validation_pool(src.splits, folds)
    if pool is None:
        train, val = src.splits["train"], src.splits["val"]
    else:
        kept, held = validation_index(pool, val_split, seed, folds)
        train, val = pool.subset(kept), pool.subset(held)
    data = Dataset(name, train, val, src.splits.get("test"), src.classes, src.channels, src.native_size,
                   src.multi_label, src.skipped_rows)  # fmt: skip
    return settle_labels(data, multi_label)


def load_from_config(data: Mapping[str, Any], seed: int, channels: int | None = None) -> Dataset:
    """The dataset a data config describes (cnn-train's, or the one a checkpoint stored), split with `seed`."""
    return load_dataset(
        str(data["name"]), data.get("root"), float(data["val_split"]), seed,
        int(data.get("channels", 3)) if channels is None else channels, bool(data.get("strict", False)),
        table=LabelFile.from_config(data), folds=check_folds(data.get("folds"), int(data.get("fold", 0))),
        multi_label=bool(data.get("multi_label", False)),
    )  # fmt: skip
