"""cnn-export writes files that reproduce PyTorch, and cnn-predict reads the ONNX one like a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnn_train.data.datasets import read_idx
from cnn_train.inference.export import META_KEY, OnnxModel
from cnn_train.inference.predict import predict
from cnn_train.runtime.errors import UserError
from tests.conftest import cli, only_run


@pytest.fixture(scope="module")
def images(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("export_images")
    x = read_idx(fashion_root / "t10k-images-idx3-ubyte.gz")[:24]
    paths = [folder / f"{i:02d}.png" for i in range(len(x))]
    for img, path in zip(x, paths, strict=True):
        Image.fromarray(img.numpy()).save(path)
    return paths


@pytest.mark.slow
def test_onnx_export_predicts_like_the_checkpoint(workdir: Path, images: list[Path]) -> None:
    ckpt = only_run(workdir) / "best.pt"
    proc = cli("cnn-export", f"ckpt={ckpt}", "format=onnx", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "max |difference| from PyTorch on a real batch" in proc.stderr
    onnx_file = ckpt.with_suffix(".onnx")
    torch_rows, _ = predict(ckpt, images, topk=3)
    onnx_rows, _ = predict(onnx_file, images, topk=3)
    assert [r.topk[0][0] for r in onnx_rows] == [r.topk[0][0] for r in torch_rows]
    for a, b in zip(onnx_rows, torch_rows, strict=True):
        assert a.topk[0][1] == pytest.approx(b.topk[0][1], abs=1e-4)
    proc = cli("cnn-predict", f"ckpt={onnx_file}", f"img={images[0]}", "topk=1", cwd=workdir)
    assert proc.returncode == 0 and torch_rows[0].topk[0][0] in proc.stdout


@pytest.mark.slow
def test_torchscript_export_carries_classes(workdir: Path) -> None:
    ckpt = only_run(workdir) / "best.pt"
    proc = cli("cnn-export", f"ckpt={ckpt}", "format=torchscript", f"output={workdir / 'm.ts'}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    extra = {f"{META_KEY}.json": ""}
    module = torch.jit.load(str(workdir / "m.ts"), _extra_files=extra)
    meta = json.loads(extra[f"{META_KEY}.json"])
    assert meta["classes"][0] == "T-shirt/top" and module(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.slow
def test_bad_export_inputs_are_one_line(workdir: Path, tmp_path: Path) -> None:
    proc = cli("cnn-export", f"ckpt={only_run(workdir) / 'best.pt'}", "format=tflite", cwd=workdir)
    assert proc.returncode == 2 and "format: 'tflite' is not onnx or torchscript" in proc.stderr
    (tmp_path / "fake.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="fake.onnx: not a readable ONNX model"):
        OnnxModel(tmp_path / "fake.onnx")
