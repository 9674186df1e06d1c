"""An .onnx export on ONNX Runtime, with numpy alone: cnn-predict with an export never imports torch.

The export carries what the checkpoint knew (classes, eval transform, the pixel order of a permuted run,
the training config) as ONNX metadata, read here through ONNX Runtime itself (the `onnx` package costs a
second to import). Its input is the normalised image batch, computed by `data.images.normalise`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cnn_train.data.images import EvalTransform, normalise
from cnn_train.inference.inputs import DEFAULT_THRESHOLD, Prediction, labelled, ranked, read_batch
from cnn_train.runtime.errors import UserError

META_KEY = "cnn_train"  # the metadata entry every cnn-export ONNX file has: JSON of what the checkpoint said


def needs_extra(e: ImportError) -> UserError:
    return UserError(f"ONNX needs the export extra: pip install 'cnn-train[export]' ({e})")


class OnnxSession:
    """An exported network, its classes and eval transform: `run` maps float32 input to float32 logits."""

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        spin: bool = False,
    ) -> None:
        """`spin`: ONNX Runtime's threads busy-wait for the next run (its default: the fastest back-to-back
        runs); off unless asked, because between runs torch preprocesses the next batch on the same cores."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise needs_extra(e) from e
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers or ["CPUExecutionProvider"]
            )
            props = self.session.get_modelmeta().custom_metadata_map
        except Exception as e:  # onnxruntime raises its own types for files it cannot read
            raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__})") from e
        if META_KEY not in props:
            raise UserError(f"{path}: not exported by cnn-export (no {META_KEY} metadata)")
        self.meta: dict[str, Any] = json.loads(props[META_KEY])
        self.classes: list[str] = self.meta["classes"]
        self.spec = EvalTransform.from_dict(self.meta["eval_transform"])
        self.multi_label: bool = bool(self.meta.get("multi_label", False))
        self.thresholds: list[float] = self.meta.get("thresholds") or [DEFAULT_THRESHOLD] * len(self.classes)
        self.input = self.session.get_inputs()[0].name
        self.order: np.ndarray | None = None
        if self.spec.permute_seed is not None:
            if "pixel_order" not in self.meta:
                raise UserError(f"{path}: exported without its pixel order; export it again with cnn-export")
            self.order = np.asarray(self.meta["pixel_order"], dtype=np.int64)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits of a normalised float32 N×C×H×W batch."""
        (logits,) = self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})
        return logits

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        """A uint8 batch at the export's input side as the float32 input the network takes."""
        return normalise(batch, self.spec.mean, self.spec.std, self.order)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def predict_onnx(
    path: str | Path, paths: list[Path], topk: int = 5, batch_size: int = 64
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k (class, probability) per readable image (multi-label: every label at or above its threshold),
    plus (path, reason) for each unreadable one."""
    model = OnnxSession(path)
    k = max(1, min(topk, len(model.classes)))
    rows: list[Prediction] = []
    failed: list[tuple[str, str]] = []
    for start in range(0, len(paths), batch_size):
        batch, names, bad = read_batch(paths[start : start + batch_size], model.spec)
        failed += bad
        if not names:
            continue
        logits = model.run(model.preprocess(batch))
        if model.multi_label:
            rows += labelled(names, sigmoid(logits), model.thresholds, model.classes)
            continue
        probs = softmax(logits)
        top_i = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        rows += ranked(names, np.take_along_axis(probs, top_i, 1).tolist(), top_i.tolist(), model.classes)
    return rows, failed
