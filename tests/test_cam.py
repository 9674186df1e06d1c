"""Grad-CAM for every model, cnn-predict/cnn-eval cam=true, and cnn-summary img=: what each layer sees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_train.analysis.cam import cam_dir, grad_cam, save_prediction_cams
from cnn_train.data.datasets import read_idx
from cnn_train.data.images import EvalTransform
from cnn_train.data.preprocess import Preprocess, read_image_tensor
from cnn_train.inference import checkpoint
from cnn_train.models import build_model, list_models, min_image_size
from cnn_train.runtime.errors import UserError
from cnn_train.training.fit import fit
from tests.conftest import cli, make_config

# The side of each model's last convolutional stage at 28 px (75 for inception_v3), worked out by hand from
# the architectures: a CAM taken one stage too early or too late (a 1×1 pool) has another side.
CAM_SIDE = {
    "lenet": 5,  # 28 → pool 14 → conv5 10 → pool 5
    "mlp": 28,  # no feature maps: explained at the input pixels
    "alexnet": 3,  # stride-2 stem 14 → pool 7 → pool 3 (conv 3–5) → pool 1
    "vgg11": 3,  # 28 → 14 → 7 → 3 (stage 4) → 1 (stage 5 is one pixel)
    "vgg16": 3,
    "googlenet": 4,  # 28 → 14 → 7 → 4 (inception 5b)
    "inception_v3": 3,  # 75 → 37 → 35 → 17 → 15 → 7 → 3 (Mixed_6e); Mixed_7c is 1×1
    "resnet9": 3,  # 28 → 14 → 7 → 3 (last residual)
    "mobilenet_v2": 2,  # stride-1 stem, four stride-2 stages: 28 → 14 → 7 → 4 → 2
    "mobilenet_v3_small": 2,
    **{name: 4 for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d")},
}


def fashion_images(root: Path, n: int) -> torch.Tensor:
    return read_idx(root / "t10k-images-idx3-ubyte.gz")[:n][:, None]


@pytest.fixture(scope="module")
def trained(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("cam_run")
    cfg = make_config(
        "model=lenet", "trainer.max_epochs=1", "trainer.limit_train_batches=20", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "data.batch_size=32", "optimizer.lr=0.003", "trainer.threads=1",
    )  # fmt: skip
    threads = torch.get_num_threads()
    fit(cfg, run_dir)  # one thread: LeNet at batch 32 gains nothing from two, and a busy machine spins them
    torch.set_num_threads(threads)
    return run_dir / "best.pt"


@pytest.fixture(scope="module")
def pictures(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real Fashion-MNIST test images as PNG files."""
    folder = tmp_path_factory.mktemp("pictures")
    for i, img in enumerate(fashion_images(fashion_root, 3)[:, 0].numpy()):
        Image.fromarray(img).save(folder / f"{'abc'[i]}.png")
    return folder


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Batch-1 passes at 28 px gain nothing from a second thread, and on a busy machine its spinning costs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        return np.asarray(im.convert("RGB"))


def red_minus_blue(rgb: np.ndarray) -> np.ndarray:
    """R − B per pixel: 0 on a grey picture; under the jet heat map (drawn at alpha 0.45) about −115 where
    the map is near 0, about +115 near its maximum, whatever the grey beneath."""
    return rgb[..., 0].astype(int) - rgb[..., 2].astype(int)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_cam_is_its_last_conv_stage_at_28_grey(
    name: str, fashion_root: Path, one_thread: None
) -> None:
    size = max(28, min_image_size(name))
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=size).eval()
    preprocess = Preprocess(EvalTransform(size, 1, (0.286,), (0.353,)))
    cams = grad_cam(model, preprocess, fashion_images(fashion_root, 1), torch.tensor([0]), rectify=False)
    assert (cams.layer is None) == (name == "mlp")
    side = CAM_SIDE[name]
    assert cams.maps.shape == (1, side, side)
    assert torch.isfinite(cams.maps).all()
    spread = cams.maps.max() - cams.maps.min()
    assert spread > 1e-3 * cams.maps.abs().max() > 0  # a map over space, not one value (or no gradient)


def test_cnn_predict_cam_writes_one_png_per_image(
    trained: Path, pictures: Path, tmp_path: Path, one_thread: None
) -> None:
    args = (f"img={pictures}", f"ckpt={trained}", "output=out/p.csv", "cam=true", "device=cpu")
    assert cli("cnn-predict", *args, cwd=tmp_path).returncode == 0
    written = sorted(p.name for p in (tmp_path / "out" / "p_cam").iterdir())
    assert written == ["0000_a.png", "0001_b.png", "0002_c.png"]
    for name in written:  # each grey picture under a heat map that runs from jet's blue half to its red
        heat = red_minus_blue(pixels(tmp_path / "out" / "p_cam" / name))
        assert heat.max() > 0 > heat.min(), name
    assert cam_dir(None) == Path("cam") and cam_dir("x/preds.json") == Path("x/preds_cam")
    with pytest.raises(UserError, match="cam: .*ONNX"):  # an export has no gradients to take
        save_prediction_cams(tmp_path / "best.onnx", [], tmp_path, torch.device("cpu"))
    # the trained net finds positive evidence for the class it predicts: a heat map, not a blank overlay
    payload = checkpoint.load(trained)
    model = checkpoint.inference_model(payload, torch.device("cpu"))
    spec = checkpoint.eval_transform(payload)
    images = torch.stack([read_image_tensor(pictures / f"{c}.png", spec) for c in "abc"])
    cams = grad_cam(model, Preprocess(spec), images)
    assert cams.layer == "5" and (cams.maps.flatten(1).amax(1) > 0).all()


def test_cnn_eval_cam_writes_the_misclassified_grid(trained: Path, tmp_path: Path, one_thread: None) -> None:
    args = (f"ckpt={trained}", "limit_batches=1", "batch_size=16", f"output_dir={tmp_path}", "cam=true")
    assert cli("cnn-eval", *args, cwd=tmp_path).returncode == 0
    # misclassified.png is the same grid without heat maps: same images, titles and layout, all grey.
    plain, cam = (
        pixels(tmp_path / name).astype(int) for name in ("misclassified.png", "misclassified_cam.png")
    )
    assert plain.shape == cam.shape and (plain.max(-1) == plain.min(-1)).all()
    changed = (cam != plain).any(-1)
    heat = red_minus_blue(cam)
    # The grids differ where the maps are drawn and nowhere else (titles, margins), every changed pixel
    # tinted; the maps are no uniform tint: each reaches its maximum (jet's red half) and the images hold
    # places without evidence (its blue half).
    assert changed.any() and (cam.max(-1) > cam.min(-1))[changed].all()
    assert heat[changed].max() > 0 > heat[changed].min()


def test_cnn_summary_img_draws_what_the_checkpoints_weights_see(
    trained: Path, pictures: Path, tmp_path: Path, one_thread: None
) -> None:
    payload = torch.load(trained, weights_only=True)
    payload["state_dict"]["0.weight"] = payload["state_dict"]["0.weight"].flip(-1)  # mirrored stem kernels
    torch.save(payload, tmp_path / "mirrored.pt")
    runs = {"a": trained, "again": trained, "mirrored": tmp_path / "mirrored.pt"}
    for folder, ckpt in runs.items():
        (tmp_path / folder).mkdir()
        args = (f"ckpt={ckpt}", f"img={pictures / 'a.png'}")
        assert cli("cnn-summary", *args, cwd=tmp_path / folder).returncode == 0
    for figure in ("filters.png", "feature_maps.png"):
        a, again, mirrored = (pixels(tmp_path / folder / figure) for folder in runs)
        assert np.array_equal(a, again)  # the same weights draw the same figure ...
        assert a.shape != mirrored.shape or not np.array_equal(a, mirrored)  # ... other weights another
