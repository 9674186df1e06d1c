"""predict(checkpoint, inputs) -> rows: the checkpoint alone says how to build, transform and name.

An .onnx export goes to ONNX Runtime through `inference.onnx_session` (numpy, no torch); a checkpoint is
rebuilt in PyTorch and run through `inference.infer`, on images read by the same numpy code. A single-label
checkpoint gives each image its top-k classes; a multi-label one every class whose probability reaches that
class's threshold (tuned on validation, carried by the checkpoint), most probable first.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnn_train.data.preprocess import Preprocess
from cnn_train.inference import checkpoint
from cnn_train.inference.infer import infer
from cnn_train.inference.inputs import (
    Prediction,
    expand_inputs,
    labelled,
    newest_checkpoint,
    ranked,
    read_batch,
    write_predictions,
)
from cnn_train.inference.onnx_session import predict_onnx

__all__ = ["Prediction", "expand_inputs", "newest_checkpoint", "predict", "write_predictions"]


def predict(
    ckpt: str | Path,
    paths: list[Path],
    topk: int = 5,
    device: torch.device | None = None,
    batch_size: int = 64,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k (class, probability) per readable image (multi-label: every label predicted), plus (path,
    reason) for each unreadable one."""
    if Path(ckpt).suffix == ".onnx":  # an export from cnn-export carries classes and transform itself
        return predict_onnx(ckpt, paths, topk, batch_size)
    device = device or torch.device("cpu")
    payload = checkpoint.load(ckpt)
    model = checkpoint.inference_model(payload, device, ckpt)
    spec, classes = checkpoint.eval_transform(payload), payload["classes"]
    multi_label, thresholds = checkpoint.is_multi_label(payload), checkpoint.thresholds(payload)
    del payload  # the weights now live in the model alone
    preprocess = Preprocess(spec).to(device)
    k = max(1, min(topk, len(classes)))
    rows: list[Prediction] = []
    failed: list[tuple[str, str]] = []
    for start in range(0, len(paths), batch_size):
        batch, names, bad = read_batch(paths[start : start + batch_size], spec)
        failed += bad
        if not names:
            continue
        logits = infer(model, preprocess, torch.from_numpy(batch).to(device))
        if multi_label:
            rows += labelled(names, logits.sigmoid().cpu().numpy(), thresholds, classes)
            continue
        top_p, top_i = logits.softmax(dim=1).topk(k, dim=1)
        rows += ranked(names, top_p.tolist(), top_i.tolist(), classes)
    return rows, failed
