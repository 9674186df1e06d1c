"""data.permute_pixels: one shuffle of pixel positions, the same in training, cnn-predict and flip TTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_train.data.datasets import read_idx
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference import checkpoint
from cnn_train.inference.infer import infer
from cnn_train.inference.predict import predict
from cnn_train.training.fit import fit
from cnn_train.training.session import build
from tests.conftest import TINY, make_config

SEED = 7


def overrides(root: Path) -> list[str]:
    return ["model=lenet", "data=mnist", f"data.root={root}", "data.permute_pixels=true",
            f"data.permute_seed={SEED}", "trainer.device=cpu", *TINY]  # fmt: skip


@pytest.fixture(scope="module")
def trained(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("permuted_run")
    fit(make_config(*overrides(mnist_root)), run_dir)
    return run_dir / "best.pt"


@pytest.fixture(scope="module")
def images(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    """Four test images of the fixture data as PNG files, and their pixels."""
    folder = tmp_path_factory.mktemp("to_predict")
    x = read_idx(mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz")[:4].numpy()
    paths = [folder / f"{i}.png" for i in range(len(x))]
    for img, path in zip(x, paths, strict=True):
        Image.fromarray(img).save(path)
    return paths, x


def by_hand(pixels: np.ndarray, payload: dict, permute: bool) -> torch.Tensor:
    """Normalised N×1×28×28 model input, its positions shuffled as the recorded seed says."""
    spec = payload["eval_transform"]
    x = (pixels.astype(np.float32) / 255 - spec["mean"][0]) / spec["std"][0]
    if permute:
        order = torch.randperm(28 * 28, generator=torch.Generator().manual_seed(SEED)).numpy()
        assert (order != np.arange(28 * 28)).sum() > 700  # really a shuffle
        x = x.reshape(len(x), 28 * 28)[:, order]
    return torch.from_numpy(np.ascontiguousarray(x)).view(len(x), 1, 28, 28)


def predicted(ckpt: Path, paths: list[Path], classes: list[str]) -> torch.Tensor:
    rows, failed = predict(ckpt, paths, topk=len(classes))
    assert failed == []
    out = torch.zeros(len(rows), len(classes))
    for i, row in enumerate(rows):
        for name, prob in row.topk:
            out[i, classes.index(name)] = prob
    return out


@pytest.mark.numerics
def test_predict_applies_the_training_permutation(
    trained: Path, images: tuple[list[Path], np.ndarray]
) -> None:
    paths, pixels = images
    payload = checkpoint.load(trained)
    assert payload["eval_transform"]["permute_seed"] == SEED
    model = checkpoint.inference_model(payload, torch.device("cpu"))
    got = predicted(trained, paths, payload["classes"])
    with torch.no_grad():
        expected = model(by_hand(pixels, payload, permute=True)).softmax(1)
        unpermuted = model(by_hand(pixels, payload, permute=False)).softmax(1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (got - unpermuted).abs().max() > 1e-3


def test_training_batches_are_permuted_the_same_way(mnist_root: Path, images: tuple[list[Path], np.ndarray],
                                                    trained: Path) -> None:  # fmt: skip
    _, pixels = images
    session = build(make_config(*overrides(mnist_root)))
    x = torch.from_numpy(pixels).unsqueeze(1)
    expected = by_hand(pixels, checkpoint.load(trained), permute=True)
    torch.testing.assert_close(session.step.preprocess(x, session.augment), expected, atol=1e-6, rtol=0)


def test_checkpoint_without_the_field_loads_unpermuted(trained: Path, images: tuple[list[Path], np.ndarray],
                                                       tmp_path: Path) -> None:  # fmt: skip
    paths, pixels = images
    payload = checkpoint.load(trained)
    del payload["eval_transform"]["permute_seed"]  # as checkpoints were written before the experiment
    old = tmp_path / "old.pt"
    checkpoint.save(old, payload)
    model = checkpoint.inference_model(payload, torch.device("cpu"))
    with torch.no_grad():
        expected = model(by_hand(pixels, payload, permute=False)).softmax(1)
    torch.testing.assert_close(predicted(old, paths, payload["classes"]), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.numerics
def test_flip_tta_mirrors_the_real_image(trained: Path, images: tuple[list[Path], np.ndarray]) -> None:
    _, pixels = images
    payload = checkpoint.load(trained)
    model = checkpoint.inference_model(payload, torch.device("cpu"))
    preprocess = Preprocess(checkpoint.eval_transform(payload))
    got = infer(model, preprocess, torch.from_numpy(pixels).unsqueeze(1), tta=True).softmax(1)
    with torch.no_grad():
        plain = model(by_hand(pixels, payload, permute=True)).softmax(1)
        mirror = model(by_hand(pixels[:, :, ::-1], payload, permute=True)).softmax(1)
    torch.testing.assert_close(got, (plain + mirror) / 2, atol=1e-5, rtol=1e-4)


@pytest.mark.numerics
def test_cutmix_boxes_are_cut_from_the_real_image(
    images: tuple[list[Path], np.ndarray], trained: Path
) -> None:
    _, pixels = images
    payload = checkpoint.load(trained)
    preprocess = Preprocess(checkpoint.eval_transform(payload))

    def corner_box(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = x.clone()
        out[..., :10, :10] = 0.0  # what a cutmix box does to a region of the image
        return out, y

    x = torch.from_numpy(pixels).unsqueeze(1)
    got, _ = preprocess.on_real_image(corner_box, preprocess(x), torch.zeros(len(x)))
    boxed = by_hand(pixels, payload, permute=False)
    boxed[..., :10, :10] = 0.0
    order = torch.randperm(28 * 28, generator=torch.Generator().manual_seed(SEED))
    expected = boxed.flatten(2)[:, :, order].view_as(boxed)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
