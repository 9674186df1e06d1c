"""An image file as model input with numpy and PIL alone: the eval transform every caller shares.

Predicting with an ONNX export must not pay PyTorch's start-up and memory, so the eval transform is written
here without torch, and the torch path (`data.preprocess.Preprocess`) computes the very same floats: PIL's
antialiased bilinear resize of the short side (torchvision's size rule), a centre crop (torchvision's
rounding), uint8 → float32 / 255, then (x − mean) / std per channel, then the pixel permutation when the
checkpoint has one. tests/test_images.py proves the two paths bit-equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from cnn_train.runtime.errors import UserError


@dataclass(frozen=True)
class EvalTransform:
    """How an image becomes model input; stored in every checkpoint so predict needs no config."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    permute_seed: int | None = None  # data.permute_pixels: shuffle pixel positions with this seed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalTransform:
        seed = d.get("permute_seed")  # absent in checkpoints written before the permutation experiment
        return cls(
            int(d["image_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]),
            None if seed is None else int(seed),
        )  # fmt: skip


def load_image(path: str | Path, channels: int) -> Image.Image:
    """Open any PIL-readable image as 'L' or 'RGB'; transparency is composited onto black.

    Black, because the built-in datasets have black backgrounds; 16-bit images are scaled, not clipped.
    Files come from the wild, so any failure to decode one is reported as this file's UserError.
    """
    try:
        with Image.open(path) as im:
            im.load()
            img = ImageOps.exif_transpose(im) or im
            return _convert(img, channels)
    except Exception as e:  # PIL raises many types (SyntaxError, struct.error, ...) for hostile bytes
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def _convert(img: Image.Image, channels: int) -> Image.Image:
    if img.width < 1 or img.height < 1:
        raise ValueError(f"empty image {img.size}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L" if channels == 1 else "RGB")


def resized_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to `side`: torchvision's rule, long side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(side * long / short)
    return (new_long, side) if width <= height else (side, new_long)


def image_array(img: Image.Image, image_size: int) -> np.ndarray:
    """Resize the short side to `image_size` (bilinear, antialiased), centre-crop a square: uint8 C×H×W.

    As torchvision's `resize(img, [size], antialias=True)` and `center_crop(img, [size, size])` do on a PIL
    image: the resize is skipped when the size already fits, and the crop's corner is rounded half to even.
    """
    height, width = resized_size(img.height, img.width, image_size)
    if (height, width) != (img.height, img.width):
        img = img.resize((width, height), resample=Image.BILINEAR)
    top, left = round((height - image_size) / 2.0), round((width - image_size) / 2.0)
    img = img.crop((left, top, left + image_size, top + image_size))
    pixels = np.array(img, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1).copy()


def read_image_array(path: str | Path, spec: EvalTransform) -> np.ndarray:
    """A file on disk as the uint8 C×H×W array the eval transform takes."""
    return image_array(load_image(path, spec.channels), spec.image_size)


def normalise(
    batch: np.ndarray, mean: Sequence[float], std: Sequence[float], order: np.ndarray | None = None
) -> np.ndarray:
    """A uint8 N×C×H×W batch as float32 model input: / 255, (x − mean) / std, then the pixel permutation.

    Each step is one IEEE float32 operation per element, as in `Preprocess`, so both give the same bits.
    """
    x = batch.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(mean, np.float32).reshape(1, -1, 1, 1)) / np.asarray(std, np.float32).reshape(
        1, -1, 1, 1
    )
    if order is not None:  # output position k takes the pixel at flat input position order[k]
        n, c, h, w = x.shape
        x = x.reshape(n, c, h * w)[:, :, order].reshape(n, c, h, w)
    return np.ascontiguousarray(x)
