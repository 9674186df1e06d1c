"""A checkpoint (.pt) or an ONNX export (.onnx), opened for inference the same way.

cnn-eval, the int8 export's accuracy check and cnn-bench take either: the network `inference.infer` runs,
its eval transform and classes, and the training config it recorded (its data, batch size and seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnn_train.data.images import EvalTransform
from cnn_train.inference import checkpoint
from cnn_train.inference.export import OnnxModel


@dataclass
class Artifact:
    path: Path
    model: Any  # a contiguous fp32 nn.Module in eval mode, or an OnnxModel: what `infer` runs
    spec: EvalTransform
    classes: list[str]
    config: dict[str, Any] = field(default_factory=dict)  # the training config; {} if the file has none
    multi_label: bool = False  # labels are sets: sigmoid per class, decided at `thresholds`
    thresholds: list[float] = field(default_factory=list)  # multi-label: per class, tuned on validation

    @property
    def is_onnx(self) -> bool:
        return isinstance(self.model, OnnxModel)


def open_artifact(path: str | Path, device: torch.device, threads: int | None = None) -> Artifact:
    """A .pt checkpoint rebuilt on `device`, or an .onnx export on ONNX Runtime's CPU provider."""
    path = Path(path)
    if path.suffix == ".onnx":
        model = OnnxModel(path, threads=threads)
        runner = model.runner
        return Artifact(path, model, model.spec, model.classes, model.meta.get("config", {}), runner.multi_label,
                        runner.thresholds)  # fmt: skip
    payload = checkpoint.load(path)
    model = checkpoint.inference_model(payload, device, path)
    return Artifact(path, model, checkpoint.eval_transform(payload), payload["classes"], payload["config"],
                    checkpoint.is_multi_label(payload), checkpoint.thresholds(payload))  # fmt: skip
