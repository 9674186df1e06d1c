"""The numpy eval transform (what an ONNX export is fed without torch) gives the torch path's very bits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cnn_train.data.images import EvalTransform, image_array, normalise, read_image_array
from cnn_train.data.permute import pixel_permutation
from cnn_train.data.preprocess import Preprocess

# The built-in datasets' statistics: one grey channel and three colour ones.
STATS = {1: ((0.2860,), (0.3530,)), 3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}


def torchvision_eval(img: Image.Image, side: int) -> np.ndarray:
    """torchvision's own resize-short-side and centre crop on a PIL image: the reference."""
    return TF.pil_to_tensor(TF.center_crop(TF.resize(img, [side], antialias=True), [side, side])).numpy()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_resize_and_crop_equal_torchvisions(mode: str) -> None:
    """Down- and upscaling, portrait and landscape, odd remainders (the crop's half-to-even rounding),
    the long side's truncation (29×45 → 28×43.4) and sizes that already fit (no resize at all)."""
    rng = np.random.default_rng(0)
    sides = (1, 5, 27, 28, 29, 31, 32, 45, 57, 99, 224, 225, 301)
    checked = 0
    for h in sides:
        for w in sides[::2]:
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
            for side in (13, 28, 32, 224):
                expected = torchvision_eval(img, side)
                got = image_array(img, side)
                assert got.dtype == np.uint8 and np.array_equal(got, expected), (h, w, side)
                checked += 1
    assert checked == len(sides) * len(sides[::2]) * 4


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("permute", [False, True], ids=["plain", "permuted"])
def test_normalise_is_bit_equal_to_preprocess_for_every_byte(channels: int, permute: bool) -> None:
    """Every uint8 value in every channel: the numpy floats are Preprocess's floats, bit for bit."""
    mean, std = STATS[channels]
    x = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16), (2, channels, 16, 16)).copy()
    x[1] = x[1, :, ::-1]  # a second image, so batch and position both vary
    spec = EvalTransform(16, channels, mean, std, 7 if permute else None)
    expected = Preprocess(spec)(torch.from_numpy(x)).numpy()
    order = pixel_permutation(7, 16).numpy() if permute else None
    got = normalise(x, mean, std, order)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_files_give_the_torch_paths_input(tmp_path: Path) -> None:
    """Real files of odd sizes (PNG grey, JPEG colour, RGBA) through both whole paths: the same model input."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (37, 51), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (90, 41, 3), dtype=np.uint8)).save(tmp_path / "b.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8), "RGBA").save(tmp_path / "c.png")
    for channels in (1, 3):
        spec = EvalTransform(32, channels, *STATS[channels])
        for path in sorted(tmp_path.iterdir()):
            pil = Image.open(path).convert("L" if channels == 1 else "RGB") if path.name != "c.png" else None
            raw = read_image_array(path, spec)
            if pil is not None:  # RGBA is composited onto black first, which torchvision does not do
                assert np.array_equal(raw, torchvision_eval(pil, 32))
            expected = Preprocess(spec)(torch.from_numpy(raw)[None]).numpy()
            assert np.array_equal(normalise(raw[None], spec.mean, spec.std), expected)
