"""predict() uses only the checkpoint; odd, broken and hostile files get clear answers."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_train.data.datasets import read_idx
from cnn_train.inference import checkpoint
from cnn_train.inference.predict import expand_inputs, predict, write_predictions
from cnn_train.runtime.errors import UserError
from cnn_train.training.fit import fit
from tests.conftest import make_config


@pytest.fixture(scope="module")
def trained(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("predict_run")
    cfg = make_config(
        "model=lenet", "trainer.max_epochs=1", "trainer.limit_train_batches=150", "optimizer.lr=0.003"
    )
    fit(cfg, run_dir)
    return run_dir / "best.pt"


@pytest.fixture(scope="module")
def test_images(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """Real Fashion-MNIST test images saved as grayscale, RGB JPEG, RGBA and palette files."""
    folder = tmp_path_factory.mktemp("images")
    x = read_idx(fashion_root / "t10k-images-idx3-ubyte.gz")[:40].numpy()
    y = read_idx(fashion_root / "t10k-labels-idx1-ubyte.gz")[:40].tolist()
    (folder / "nested").mkdir()
    for i, img in enumerate(x):
        gray = Image.fromarray(img)
        kind = i % 4
        if kind == 0:
            gray.save(folder / f"{i:02d}_gray.png")
        elif kind == 1:
            gray.convert("RGB").save(folder / f"{i:02d}_rgb.jpg", quality=95)
        elif kind == 2:
            rgba = np.stack([img, img, img, np.full_like(img, 255)], axis=-1)
            Image.fromarray(rgba, "RGBA").save(folder / "nested" / f"{i:02d}_rgba.png")
        else:
            gray.convert("P").save(folder / f"{i:02d}_palette.png")
    return folder, y


@pytest.mark.slow
def test_predict_a_folder_of_mixed_modes(trained: Path, test_images: tuple[Path, list[int]]) -> None:
    folder, labels = test_images
    paths = expand_inputs(str(folder))
    assert len(paths) == 40 and any("nested" in str(p) for p in paths)
    rows, failed = predict(trained, paths, topk=3)
    assert failed == [] and len(rows) == 40
    classes = checkpoint.load(trained)["classes"]
    hits = sum(r.topk[0][0] == classes[labels[int(Path(r.path).name[:2])]] for r in rows)
    assert hits / len(rows) > 0.6
    for r in rows:
        assert len(r.topk) == 3 and r.topk[0][1] >= r.topk[1][1] >= r.topk[2][1]


def test_topk_is_capped_and_probabilities_sum_to_one(
    trained: Path, test_images: tuple[Path, list[int]]
) -> None:
    rows, _ = predict(trained, expand_inputs(str(test_images[0] / "00_gray.png")), topk=50)
    assert len(rows[0].topk) == 10
    assert abs(sum(p for _, p in rows[0].topk) - 1) < 1e-4


def test_unreadable_files_are_reported_and_others_predicted(trained: Path, tmp_path: Path) -> None:
    Image.new("L", (28, 28), 200).save(tmp_path / "ok.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    rows, failed = predict(trained, sorted(tmp_path.iterdir()), topk=1)
    assert [Path(r.path).name for r in rows] == ["ok.png"]
    assert sorted(Path(p).name for p, _ in failed) == ["empty.png", "text.jpg"]
    assert all("not a readable image" in why for _, why in failed)


def test_glob_and_missing_inputs(test_images: tuple[Path, list[int]]) -> None:
    assert len(expand_inputs(str(test_images[0] / "*_gray.png"))) == 10
    with pytest.raises(UserError, match="img: .*nothing\\*.png matches no file"):
        expand_inputs(str(test_images[0] / "nothing*.png"))


def test_outputs_csv_and_json(trained: Path, test_images: tuple[Path, list[int]], tmp_path: Path) -> None:
    rows, _ = predict(trained, expand_inputs(str(test_images[0] / "*_gray.png")), topk=2)
    write_predictions(tmp_path / "p.csv", rows)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "path,class_1,prob_1,class_2,prob_2" and len(lines) == 11
    write_predictions(tmp_path / "p.json", rows)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data[0]["topk"][0]["class"] == rows[0].topk[0][0]


def test_malicious_checkpoint_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "bad.pt"
    torch.save({"format": checkpoint.FORMAT, "state_dict": Payload()}, bad)
    with pytest.raises(UserError, match="bad.pt: refused to load"):
        checkpoint.load(bad)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content", [b"", b"garbage", pickle.dumps([1, 2])], ids=["empty", "garbage", "pickle"]
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(UserError, match="x.pt: "):
        checkpoint.load(tmp_path / "x.pt")


def test_foreign_state_dict_is_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="plain.pt: not a cnn-train checkpoint"):
        checkpoint.load(tmp_path / "plain.pt")
    assert zipfile.is_zipfile(tmp_path / "plain.pt")
