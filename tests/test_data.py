"""Datasets load from files in their real formats; splits and transforms behave."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_train.data.datasets import TensorSplit, load_dataset, read_idx
from cnn_train.data.images import EvalTransform, load_image
from cnn_train.data.loaders import Batches
from cnn_train.data.preprocess import read_image_tensor
from cnn_train.data.transforms import RandomCropFlip
from cnn_train.runtime.errors import UserError
from tests.conftest import CIFAR_CLASSES, write_idx


def test_idx_reads_gzipped_and_plain(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        write_idx(tmp_path / name, a)
        assert torch.equal(read_idx(tmp_path / name), torch.from_numpy(a))


def test_truncated_idx_names_the_file(tmp_path: Path) -> None:
    write_idx(tmp_path / "bad-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="bad-idx3-ubyte: IDX header promises"):
        read_idx(path)


def test_mnist_from_idx_files(mnist_root: Path) -> None:
    data = load_dataset("mnist", mnist_root, val_split=0.2, seed=0)
    assert data.channels == 1 and data.native_size == 28
    assert data.classes[0] == "0 - zero" and len(data.classes) == 10
    assert len(data.train) == 240 and len(data.val) == 60 and len(data.test) == 100
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (1, 28, 28)
    again = load_dataset("mnist", mnist_root, val_split=0.2, seed=0)
    assert torch.equal(data.val.images, again.val.images)
    other = load_dataset("mnist", mnist_root, val_split=0.2, seed=1)
    assert not torch.equal(data.val.images, other.val.images)


def test_fashion_mnist_from_debian_package(fashion_root: Path, tmp_path: Path) -> None:
    data = load_dataset("fashion_mnist", tmp_path / "empty", val_split=0.1, seed=0)
    assert len(data.train) == 54000 and len(data.val) == 6000 and len(data.test) == 10000
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert sorted(data.test.labels.bincount().tolist()) == [1000] * 10


def test_cifar10_from_pickle_batches(cifar_root: Path) -> None:
    data = load_dataset("cifar10", cifar_root, val_split=0.25, seed=0)
    assert data.classes == CIFAR_CLASSES and data.channels == 3
    assert len(data.train) + len(data.val) == 200 and len(data.test) == 40
    raw = pickle.loads((cifar_root / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(data.test.images[0], torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)))
    assert data.test.labels[0].item() == raw[b"labels"][0]


def test_cifar_pickle_with_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (batches / name).write_bytes(pickle.dumps({"data": Payload()}))
    with pytest.raises(UserError, match="batches.meta: not a CIFAR-10 python batch.*refusing to load"):
        load_dataset("cifar10", tmp_path, val_split=0.1, seed=0)
    assert not (tmp_path / "pwned").exists()


def test_image_folder_with_splits(folder_root: Path) -> None:
    data = load_dataset("image_folder", folder_root, val_split=0.5, seed=0)
    assert data.classes == ["blue", "green", "red"]
    assert (len(data.train), len(data.val), len(data.test)) == (36, 12, 12)  # notes.txt ignored
    assert all(p.endswith((".png", ".jpg")) for p, _ in data.train.samples)


def test_single_image_folder_is_split(folder_root: Path) -> None:
    data = load_dataset("image_folder", folder_root / "train", val_split=0.25, seed=0)
    assert (len(data.train), len(data.val), data.test) == (27, 9, None)


def test_missing_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.root: .*nowhere is not a folder"):
        load_dataset("image_folder", tmp_path / "nowhere", val_split=0.2, seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="data.root: .*empty.*class folder"):
        load_dataset("image_folder", tmp_path / "empty", val_split=0.2, seed=0)


@pytest.mark.parametrize(
    "mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "LA"], ids=lambda m: m.replace(";", "")
)
@pytest.mark.parametrize("channels", [1, 3])
def test_any_image_mode_loads(tmp_path: Path, mode: str, channels: int) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 20, 3), dtype=np.uint8))
    img = (
        Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        if mode == "I;16"
        else rgb.convert(mode)
    )
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    spec = EvalTransform(image_size=16, channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    x = read_image_tensor(path, spec)
    assert x.shape == (channels, 16, 16) and x.dtype == torch.uint8
    assert load_image(path, channels).mode == ("L" if channels == 1 else "RGB")
    if mode == "I;16":  # 16-bit is scaled to 8-bit, not clipped to white
        assert 20 < x.float().mean() < 235


def test_random_crop_is_a_shifted_window() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float).view(2, 1, 6, 6) + 1
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(x), x)
    torch.manual_seed(0)
    out = RandomCropFlip(padding=2, flip=False)(x)
    assert out.shape == x.shape
    for i in range(2):
        nonzero = out[i, 0][out[i, 0] > 0]
        # every kept pixel comes from the same image, and pixels keep their row-major order
        assert set(nonzero.tolist()) <= set(x[i, 0].flatten().tolist())
        assert torch.all(nonzero.diff() > 0)


@pytest.mark.parametrize("n,world", [(6, 4), (3, 4), (3, 2)])
def test_every_rank_gets_images_for_every_training_step(n: int, world: int) -> None:
    """One global batch of 8 over `world` ranks: an empty shard would leave the others waiting in DDP's all-reduce."""
    split = TensorSplit(
        torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4), torch.arange(n)
    )
    spec = EvalTransform(4, 1, (0.5,), (0.5,))
    shards = [
        list(Batches(split, spec, 8, torch.device("cpu"), shuffle=True, drop_last=True,
                     generator=torch.Generator().manual_seed(0), shard=(rank, world)))
        for rank in range(world)
    ]  # fmt: skip
    steps = {len(s) for s in shards}
    assert len(steps) == 1  # every rank takes the same number of steps
    if n >= world:
        assert steps == {1} and all(len(y) > 0 for s in shards for _, y in s)
        assert sorted(int(v) for s in shards for _, y in s for v in y) == list(range(n))
    else:
        assert steps == {0}  # too few images to give each rank one: the step is skipped by all
