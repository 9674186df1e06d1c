"""int8 ONNX: ONNX Runtime's static quantization, calibrated on the checkpoint's own training images.

QDQ format (QuantizeLinear/DequantizeLinear pairs ONNX Runtime fuses into int8 kernels), int8 weights with
one scale per output channel, uint8 activations with one scale per tensor from the min/max the calibration
images reach (MinMax). `quant_pre_process` first folds BatchNorm into the convolutions and infers shapes, so
the folded weights are what is quantized.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnn_train.data.loaders import Batches
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference import checkpoint
from cnn_train.inference.artifact import Artifact
from cnn_train.inference.onnx_session import META_KEY, needs_extra
from cnn_train.runtime.errors import UserError

CALIBRATION_BATCH = 32


def calibration_batches(art: Artifact, n: int, seed: int) -> list[np.ndarray]:
    """`n` training images drawn at random (seeded), as the normalised float32 batches the network takes.

    At random, not the first `n`: an image folder's training split is sorted by class.
    """
    if n < 1:
        raise UserError(f"calibration_images: {n} must be ≥ 1")
    train = checkpoint.dataset({"config": art.config}).train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    preprocess = Preprocess(art.spec)
    batches = Batches(train.subset(order.sort().values), art.spec, CALIBRATION_BATCH, torch.device("cpu"))
    with torch.inference_mode():
        return [preprocess(x).numpy() for x, _ in batches]


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: one input dict per call, None at the end."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.items = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def quantize_int8(fp32: Path, out: Path, calibration: list[np.ndarray]) -> dict[str, Any]:
    """Write the int8 model of the fp32 export `fp32` to `out`; returns how it was quantized."""
    try:
        import onnxruntime
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise needs_extra(e) from e
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        name = (
            onnxruntime.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
            .get_inputs()[0]
            .name
        )
        quantize_static(
            str(prepared), str(out), _Reader(name, calibration), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
    return {
        "format": "QDQ", "weights": "int8, per output channel", "activations": "uint8, per tensor",
        "calibration": "MinMax", "calibration_images": sum(len(b) for b in calibration),
        "onnxruntime": onnxruntime.__version__,
    }  # fmt: skip


def write_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Set the cnn_train metadata entry of an ONNX file (quantization writes a model without it)."""
    import onnx

    proto = onnx.load(str(path))
    for prop in [p for p in proto.metadata_props if p.key == META_KEY]:
        proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    onnx.save(proto, str(path))
