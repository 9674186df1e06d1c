"""Property: whatever bytes or small image reaches the predict input path, it loads or fails with UserError."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnn_train.data.images import EvalTransform
from cnn_train.data.preprocess import read_image_tensor
from cnn_train.runtime.errors import UserError

SPECS = [EvalTransform(16, 1, (0.5,), (0.5,)), EvalTransform(16, 3, (0.5,) * 3, (0.5,) * 3)]
EXTENSIONS = [".png", ".jpg", ".bmp", ".gif", ".tif", ".webp", ".txt"]
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif", "WEBP": ".webp"}


def check(data: bytes, ext: str, spec: EvalTransform) -> torch.Tensor | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"input{ext}"
        path.write_bytes(data)
        try:
            x = read_image_tensor(path, spec)
        except UserError as e:
            assert str(path) in str(e)
            return None
    assert x.dtype == torch.uint8 and x.shape == (spec.channels, spec.image_size, spec.image_size)
    return x


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048), ext=st.sampled_from(EXTENSIONS), spec=st.sampled_from(SPECS))
def test_random_bytes_load_or_raise_user_error(data: bytes, ext: str, spec: EvalTransform) -> None:
    check(data, ext, spec)


@st.composite
def small_images(draw: st.DrawFn) -> tuple[bytes, str]:
    """A real encoded image: any mode, 1–24 px a side, in any format PIL can write that mode to."""
    mode = draw(st.sampled_from(MODES))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    rgba = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    img = rgba.convert("L").convert(mode) if mode in ("I;16", "I", "F") else rgba.convert(mode)
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        img.convert("RGB").save(buf := io.BytesIO(), format=fmt)  # this format cannot hold that mode
    return buf.getvalue(), FORMATS[fmt]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=small_images(), spec=st.sampled_from(SPECS))
def test_every_small_image_loads(image: tuple[bytes, str], spec: EvalTransform) -> None:
    data, ext = image
    assert check(data, ext, spec) is not None
