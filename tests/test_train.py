"""fit() on real-format data: the run dir, the checkpoint, resume, and every model on every data format."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from cnn_train.analysis.evaluation import evaluate_checkpoint
from cnn_train.inference import checkpoint
from cnn_train.models import min_image_size
from cnn_train.runtime.errors import UserError
from cnn_train.training.fit import fit
from tests.conftest import TINY, make_config

RUN_FILES = ["best.pt", "last.pt", "class_indices.json", "metrics.csv", "results.json"]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def lenet_run(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("lenet_run")
    cfg = make_config(
        "model=lenet", "trainer.max_epochs=2", "trainer.limit_train_batches=60", "trainer.limit_val_batches=10",
        "trainer.limit_test_batches=20", "optimizer.lr=0.003",
    )  # fmt: skip
    fit(cfg, run_dir)
    return run_dir


@pytest.mark.slow
def test_run_dir_holds_every_file(lenet_run: Path) -> None:
    for name in RUN_FILES:
        assert (lenet_run / name).is_file(), name
    classes = json.loads((lenet_run / "class_indices.json").read_text())
    assert classes["0"] == "T-shirt/top" and len(classes) == 10
    rows = read_metrics(lenet_run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    results = json.loads((lenet_run / "results.json").read_text())
    assert results["test_acc"] > 0.5  # 2×60 batches of LeNet: far above the 0.1 of chance
    assert round(results["best_val_acc"], 5) == max(float(r["val_acc"]) for r in rows)  # the CSV rounds
    assert results["best_epoch"] in (1, 2) and results["wall_seconds"] > 0


def test_checkpoint_describes_itself(lenet_run: Path) -> None:
    raw = torch.load(lenet_run / "best.pt", weights_only=True)
    assert raw["model"]["name"] == "lenet"
    assert raw["model"]["kwargs"] == {"num_classes": 10, "in_channels": 1, "image_size": 28, "dropout": 0.0}
    assert raw["classes"][9] == "Ankle boot"
    assert raw["eval_transform"] == {
        "image_size": 28,
        "channels": 1,
        "mean": [0.286],
        "std": [0.353],
        "permute_seed": None,
    }
    assert raw["config"]["optimizer"]["lr"] == 0.003 and raw["metrics"]["val_acc"] > 0.5
    model = checkpoint.restore_model(checkpoint.load(lenet_run / "best.pt"))
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_resume_continues_at_next_epoch(lenet_run: Path, tmp_path: Path) -> None:
    cfg = make_config(
        "model=lenet", "trainer.max_epochs=3", "trainer.limit_train_batches=60", "trainer.limit_val_batches=10",
        "trainer.limit_test_batches=20", "optimizer.lr=0.003", f"trainer.resume={lenet_run / 'last.pt'}",
    )  # fmt: skip
    fit(cfg, tmp_path)
    before, after = read_metrics(lenet_run), read_metrics(tmp_path)
    assert [r["epoch"] for r in after] == ["1", "2", "3"]
    assert after[:2] == before  # history carried over unchanged
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 3
    assert (tmp_path / "best.pt").is_file()


def assert_saved_model_gives_the_results(run_dir: Path, results: dict) -> None:
    """best.pt rebuilds from its own description and gives, through cnn-eval's code, the run's test numbers."""
    # finite, but not small: after 2 steps BatchNorm's running statistics can make the loss large
    assert math.isfinite(results["test_loss"])
    report = evaluate_checkpoint(run_dir / "best.pt", run_dir / "eval", limit_batches=1)
    assert (report["accuracy"], report["loss"]) == (results["test_acc"], results["test_loss"])


# One model per family and stem: test_models steps every registered model at 1×28, 3×32 and 3×224, and the
# checkpoint and evaluation code is the same for all; the deeper siblings (resnet34/50/101, vgg16) share
# their family's stem and head code and would only add minutes to the suite.
FAMILIES = ["lenet", "mlp", "alexnet", "vgg11", "resnet9", "resnet18", "resnext50_32x4d", "googlenet",
            "inception_v3", "mobilenet_v2", "mobilenet_v3_small"]  # fmt: skip
# The RGB data formats (CIFAR batches, image folders) are the same code for every model: the families whose
# stem changes with the input (small-image stems below 64 px, ImageNet stems above), without the heaviest
# (AlexNet, VGG and ResNeXt carry 4096-wide or 23M-parameter heads that take seconds to save and load).
RGB_FAMILIES = ["lenet", "mlp", "resnet9", "resnet18", "googlenet", "inception_v3", "mobilenet_v2",
                "mobilenet_v3_small"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_every_model_trains_on_fashion_mnist(name: str, fashion_root: Path, tmp_path: Path) -> None:
    results = fit(make_config(f"model={name}", "data=fashion_mnist", *TINY), tmp_path)
    assert_saved_model_gives_the_results(tmp_path, results)


@pytest.mark.slow
@pytest.mark.parametrize("name", RGB_FAMILIES)
def test_every_model_trains_on_cifar10_files(name: str, cifar_root: Path, tmp_path: Path) -> None:
    results = fit(make_config(f"model={name}", "data=cifar10", f"data.root={cifar_root}", *TINY), tmp_path)
    assert_saved_model_gives_the_results(tmp_path, results)
    assert checkpoint.load(tmp_path / "best.pt")["eval_transform"]["channels"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", RGB_FAMILIES)
def test_every_model_trains_on_image_folder(name: str, folder_root: Path, tmp_path: Path) -> None:
    cfg = make_config(
        f"model={name}",
        "data=image_folder",
        f"data.root={folder_root}",
        f"data.image_size={max(64, min_image_size(name))}",
        *TINY,
    )
    results = fit(cfg, tmp_path)
    assert_saved_model_gives_the_results(tmp_path, results)
    assert json.loads((tmp_path / "class_indices.json").read_text()) == {
        "0": "blue",
        "1": "green",
        "2": "red",
    }


@pytest.mark.slow
def test_image_folder_at_224_with_imagenet_augmentation(folder_root: Path, tmp_path: Path) -> None:
    cfg = make_config(
        "model=resnet18", "data=image_folder", f"data.root={folder_root}", "augmentation=imagenet",
        "optimizer=adamw", "scheduler=onecycle", "trainer.max_epochs=2", "data.batch_size=12",
    )  # fmt: skip
    results = fit(cfg, tmp_path)
    assert checkpoint.load(tmp_path / "best.pt")["eval_transform"]["image_size"] == 224
    # red, green and blue photos: 6 steps of a ResNet-18 tell them apart
    assert results["test_acc"] > 0.5 and results["best_val_acc"] > 0.5


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=0", "optimizer.lr: 0 must be > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr: -0.1 must be > 0"),
        ("data.batch_size=0", "data.batch_size: 0 must be an integer"),
        ("data.val_split=1.5", "data.val_split: 1.5 must lie strictly between 0 and 1"),
        ("data.val_split=0", "data.val_split: 0.0 must lie strictly between 0 and 1"),  # a float key
        ("model.name=resnet7", "model.name: unknown model 'resnet7'; choose one of: alexnet"),
        ("model=inception_v3 data.image_size=32", "data.image_size: 32 is too small for inception_v3"),
        ("trainer.precision=8", "trainer.precision: 8 is not one of"),
        ("trainer.channels_last=sometimes", "trainer.channels_last: 'sometimes' must be auto, true or false"),
        ("optimized_metric=train_acc", "optimized_metric: 'train_acc' is not one of best_val_acc"),
        ("trainer.resume=/nowhere/last.pt", "trainer.resume: /nowhere/last.pt does not exist"),
    ],
)
def test_bad_values_fail_before_work(override: str, message: str, mnist_root: Path, tmp_path: Path) -> None:
    cfg = make_config("data=mnist", f"data.root={mnist_root}", *TINY, *override.split())
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        fit(cfg, tmp_path)
    assert not (tmp_path / "best.pt").exists()


def test_image_folder_root_must_exist(tmp_path: Path) -> None:
    cfg = make_config("data=image_folder", f"data.root={tmp_path / 'flowers'}", *TINY)
    with pytest.raises(UserError, match="data.root: .*flowers does not exist"):
        fit(cfg, tmp_path)


def test_resume_auto_takes_the_newest_unfinished_run(
    fashion_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outputs = tmp_path / "outputs"
    over = ["model=lenet", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", f"output_root={outputs}"]  # fmt: skip
    for age, name in enumerate(("old", "new", "finished")):
        fit(make_config(*over, "trainer.max_epochs=1"), outputs / name)
        os.utime(outputs / name / "last.pt", (1e9 + age, 1e9 + age))
    for name in ("old", "new"):  # interrupted before the end: no results.json
        (outputs / name / "results.json").unlink()
    caplog.set_level("INFO")
    fit(make_config(*over, "trainer.max_epochs=2", "trainer.resume=auto"), tmp_path / "later")
    assert f"resumed from {outputs / 'new' / 'last.pt'} at epoch 2" in caplog.text
    rows = read_metrics(tmp_path / "later")
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0] == read_metrics(outputs / "new")[0]
