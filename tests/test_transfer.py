"""Fine-tuning from a checkpoint the test trains itself: weights, channel conversion, frozen layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnn_train.inference import checkpoint
from cnn_train.models import build_model
from cnn_train.runtime.errors import UserError
from cnn_train.training import transfer
from cnn_train.training.fit import fit
from tests.conftest import TINY, make_config


@pytest.fixture(scope="module")
def fashion_resnet(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-18 trained a few steps on grey 28 px Fashion-MNIST."""
    run_dir = tmp_path_factory.mktemp("fashion_resnet")
    fit(make_config("model=resnet18", *TINY, "trainer.limit_train_batches=4"), run_dir)
    return run_dir / "best.pt"


def folder_overrides(folder_root: Path, weights: Path, *extra: str) -> list[str]:
    return [
        "model=resnet18", "data=image_folder", f"data.root={folder_root}", "data.image_size=32",
        f"model.weights={weights}", *TINY, "trainer.max_epochs=2", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_head_finetune_changes_no_backbone_weight(
    fashion_resnet: Path, folder_root: Path, tmp_path: Path
) -> None:
    results = fit(
        make_config(*folder_overrides(folder_root, fashion_resnet, "model.finetune=head")), tmp_path
    )
    assert results["trainable_parameters"] == 512 * 3 + 3  # only the new 3-class head trains
    before = checkpoint.load(fashion_resnet)["state_dict"]
    after = checkpoint.load(tmp_path / "last.pt")
    assert after["model"]["kwargs"]["in_channels"] == 1  # RGB photos converted for the grey checkpoint
    assert after["eval_transform"]["mean"] == [0.286]  # the checkpoint's normalisation, recorded
    changed = [k for k, v in after["state_dict"].items() if not torch.equal(v, before[k])]
    assert changed == ["fc.weight", "fc.bias"]  # BatchNorm running statistics untouched too


@pytest.mark.slow
def test_full_finetune_reports_and_skips_the_old_head(
    fashion_resnet: Path, folder_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    fit(make_config(*folder_overrides(folder_root, fashion_resnet)), tmp_path)
    log = caplog.text
    assert "loaded 120 of 122 tensors" in log and "fc.weight (10, 512)→(3, 512)" in log


def test_last_n_trains_the_last_layers(fashion_resnet: Path, folder_root: Path, tmp_path: Path) -> None:
    cfg = make_config(
        *folder_overrides(folder_root, fashion_resnet, "model.finetune=last_n", "model.trainable_layers=2")
    )
    results = fit(cfg, tmp_path)
    # the last two layers with parameters: layer4's final BatchNorm (2×512) and the head (512×3+3)
    assert results["trainable_parameters"] == 2 * 512 + 512 * 3 + 3


@pytest.mark.numerics
def test_grey_into_rgb_weights_equals_tripling_the_input(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rgb = build_model("resnet18", num_classes=5, in_channels=3, image_size=32).eval()
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    grey = build_model("resnet18", num_classes=5, in_channels=1, image_size=32)
    transfer.load_source(grey, transfer.file_source(tmp_path / "rgb.pt"))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey.eval()(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_weights_of_another_architecture_are_refused(fashion_resnet: Path) -> None:
    with pytest.raises(UserError, match="model.weights: nothing in .*best.pt fits this Sequential"):
        transfer.load_source(build_model("lenet", 10, 1, 28), transfer.file_source(fashion_resnet))


def test_weights_file_problems_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model.weights: .*missing.pt does not exist"):
        transfer.file_source(tmp_path / "missing.pt")
    torch.save({"not": "tensors"}, tmp_path / "odd.pt")
    with pytest.raises(UserError, match="neither a cnn-train checkpoint nor a state dict"):
        transfer.file_source(tmp_path / "odd.pt")
    with pytest.raises(UserError, match="model.pretrained: torchvision has no ImageNet weights for lenet"):
        transfer.imagenet_source("lenet")


def test_unknown_finetune_mode(fashion_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model.finetune: 'some' is not one of full, head, last_n"):
        fit(make_config(*TINY, "model.finetune=some"), tmp_path)
