"""The analyses the textbook does by hand: plots in every run dir, cnn-summary, cnn-eval, annotated predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_train.analysis.anatomy import summarize
from cnn_train.analysis.evaluation import per_class
from cnn_train.data.datasets import read_idx
from cnn_train.models import build_model, list_models, min_image_size
from tests.conftest import cli, only_run


def is_png(path: Path) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and im.width > 100 and im.height > 100


@pytest.mark.slow
def test_run_dir_holds_curves_and_samples(workdir: Path) -> None:
    run_dir = only_run(workdir)
    assert is_png(run_dir / "curves.png") and is_png(run_dir / "samples.png")


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_summary_totals_match_the_model(name: str) -> None:
    size = max(32, min_image_size(name))
    model = build_model(name, num_classes=10, in_channels=3, image_size=size)
    report = summarize(model, 3, size)
    assert report["total_params"] == sum(p.numel() for p in model.parameters())
    assert sum(lay["params"] for lay in report["layers"]) == report["total_params"]
    assert report["layers"][-1]["output_shape"] == [10] or name in {"googlenet", "inception_v3"}
    split = report["split"]
    assert 0 < split["conv"]["flops"] + split["fc"]["flops"] <= report["total_flops"]


def test_summary_flops_of_a_convolution_follow_the_formula() -> None:
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    conv = summarize(model, 1, 28)["layers"][0]
    assert conv["type"] == "Conv2d" and conv["output_shape"] == [6, 28, 28]
    # 2 FLOPs per multiply-add: output pixels × output channels × (input channels × 5 × 5)
    assert conv["flops"] == 2 * 28 * 28 * 6 * (1 * 5 * 5)
    assert conv["params"] == 6 * 1 * 5 * 5 + 6
    assert conv["activation_bytes"] == 6 * 28 * 28 * 4


def test_alexnet_at_224_puts_params_in_fc_and_compute_in_conv() -> None:
    report = summarize(build_model("alexnet", num_classes=1000, in_channels=3, image_size=224), 3, 224)
    assert report["split"]["conv"]["params_share"] < 0.10  # the textbook: ~6% of the parameters
    assert report["split"]["conv"]["flops_share"] > 0.85  # ... but ~95% of the compute


@pytest.mark.slow
def test_cnn_summary_prints_and_writes_json(tmp_path: Path) -> None:
    proc = cli("cnn-summary", "model=lenet", "data=cifar10", "json=s.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "lenet, input 3×32×32" in proc.stdout and "fully connected" in proc.stdout
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["model"] == "lenet" and saved["input"] == [3, 32, 32]
    printed = cli("cnn-summary", "model=lenet", "--json", cwd=tmp_path)
    fashion_lenet = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    assert json.loads(printed.stdout)["total_params"] == sum(p.numel() for p in fashion_lenet.parameters())


def test_per_class_metrics_by_hand() -> None:
    confusion = torch.tensor([[3, 1], [2, 4]])  # rows true, columns predicted
    a, b = per_class(confusion, ["a", "b"])
    assert a["precision"] == pytest.approx(3 / 5) and a["recall"] == pytest.approx(3 / 4)
    assert b["precision"] == pytest.approx(4 / 5) and b["recall"] == pytest.approx(4 / 6)
    assert a["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35) and b["support"] == 6


@pytest.mark.slow
@pytest.mark.numerics
def test_cnn_eval_matches_the_run_and_writes_figures(workdir: Path) -> None:
    run_dir = only_run(workdir)
    # the run tested best.pt on 20 batches of 128 (its batch size, cnn-eval's default): the same accuracy
    proc = cli("cnn-eval", f"ckpt={run_dir / 'best.pt'}", "limit_batches=20", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    assert report["images"] == 2560 and report["accuracy"] == results["test_acc"]
    assert report["loss"] == results["test_loss"]
    assert report["accuracy"] <= report["top5_accuracy"] <= 1
    assert len(report["per_class"]) == 10 and sum(r["support"] for r in report["per_class"]) == 2560
    assert is_png(run_dir / "eval" / "confusion_matrix.png") and is_png(
        run_dir / "eval" / "misclassified.png"
    )
    assert "Ankle boot" in proc.stdout


def drawn_picture(path: Path) -> np.ndarray:
    """The picture in a titled figure: the longest block of rows holding ink (the title is a shorter block
    above it, with white rows between), cut to its inked columns and averaged back to 28×28 grey levels."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        grey = np.asarray(im.convert("L"))
    rows = np.flatnonzero((grey < 250).any(1))
    gaps = np.flatnonzero(np.diff(rows) > 1)
    starts, ends = np.r_[rows[0], rows[gaps + 1]], np.r_[rows[gaps], rows[-1]]
    top, bottom = max(zip(starts, ends, strict=True), key=lambda b: b[1] - b[0])
    cols = np.flatnonzero((grey[top : bottom + 1] < 250).any(0))
    block = Image.fromarray(grey[top : bottom + 1, cols[0] : cols[-1] + 1])
    return np.asarray(block.resize((28, 28), Image.Resampling.BOX)).astype(int)


@pytest.mark.slow
def test_predict_save_annotated(workdir: Path, fashion_root: Path) -> None:
    img = read_idx(fashion_root / "t10k-images-idx3-ubyte.gz")[1].numpy()  # a pullover; its edges are black
    Image.fromarray(img).save(workdir / "pullover.png")
    proc = cli("cnn-predict", "img=pullover.png", "output=out/p.csv", "save_annotated=true", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    # The figure draws each pixel as a block: averaged back, a block gives its pixel, up to its edges' blend
    # with the neighbours; a blank or another picture is off by tens of grey levels on average.
    shown = drawn_picture(workdir / "out" / "p_annotated" / "0000_pullover.png")
    assert np.abs(shown - img.astype(int)).mean() < 8


@pytest.mark.slow
def test_cnn_eval_refuses_data_with_another_class_count(workdir: Path, folder_root: Path) -> None:
    ckpt = only_run(workdir) / "best.pt"
    proc = cli("cnn-eval", f"ckpt={ckpt}", "data=image_folder", f"data.root={folder_root}", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: data: image_folder has 3 classes, the checkpoint 10"
