"""cnn-export quantize=int8: the int8 ONNX file, kept only if its accuracy stays near fp32's.

Both exports are scored on the test split (the validation split where there is none) by `evaluation.score`,
the pass cnn-eval runs, at the batch size the checkpoint was trained with: cnn-eval on either file prints
the accuracy recorded here. The record goes into the file's metadata and into `<name>.json` beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cnn_train.analysis.evaluation import score, split_batches
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference.artifact import Artifact, open_artifact
from cnn_train.inference.export import export
from cnn_train.inference.quantize import calibration_batches, quantize_int8, write_metadata
from cnn_train.runtime import files
from cnn_train.runtime.cpu import cpu_description
from cnn_train.runtime.errors import UserError


def int8_path(ckpt: str | Path) -> Path:
    """best.pt → best.int8.onnx: the int8 file's default name, next to the checkpoint."""
    return Path(ckpt).with_suffix(".int8.onnx")


def accuracy(art: Artifact) -> tuple[float, str, int]:
    """(accuracy, split, images) of the file on its own test split, else its validation split."""
    if art.multi_label:
        raise UserError(
            f"quantize: {art.path} is a multi-label checkpoint, and the int8 gate compares single-label test "
            "accuracy; export it without quantize"
        )
    cpu = torch.device("cpu")
    for split in ("test", "val"):
        try:
            batches, _, _ = split_batches(art, None, split, cpu, None)
        except UserError:
            if split == "test":
                continue  # an image folder without test/: the validation split stands in
            raise
        scores = score(art.model, Preprocess(art.spec), batches, len(art.classes))
        return scores.accuracy, split, scores.seen
    raise AssertionError("unreachable")


def check_drop(fp32_acc: float, int8_acc: float, max_drop: float | None, split: str = "test") -> float:
    """The accuracy int8 costs, in points; over `max_drop` (None: no bound) it is a one-line error."""
    drop = (fp32_acc - int8_acc) * 100
    if max_drop is not None and drop > max_drop:
        raise UserError(
            f"max_accuracy_drop: int8 {split} accuracy {int8_acc:.2%} is {drop:.2f} points below fp32's "
            f"{fp32_acc:.2%} (allowed {max_drop:g}); no int8 file written"
        )
    return drop


def export_int8(
    ckpt: str | Path, out: str | Path | None = None, images: int = 512, max_drop: float | None = 1.0,
    tolerance: float = 1e-3,
) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Export fp32 ONNX (checked against PyTorch), quantize it, score both; refuse a drop over `max_drop`.

    Returns the int8 file and its record. The fp32 export stays next to the checkpoint (`<name>.onnx`).
    """
    fp32, _ = export(ckpt, "onnx", None, tolerance)
    out = Path(out) if out else int8_path(ckpt)
    tmp = out.with_name(f".{out.stem}.partial.onnx")  # the int8 file appears under its name once accepted
    try:
        fp32_art = open_artifact(fp32, torch.device("cpu"))
        seed = int(fp32_art.config.get("trainer", {}).get("seed", 42))
        how = quantize_int8(fp32, tmp, calibration_batches(fp32_art, images, seed))
        fp32_acc, split, seen = accuracy(fp32_art)
        int8_acc, _, _ = accuracy(open_artifact(tmp, torch.device("cpu")))
        drop = check_drop(fp32_acc, int8_acc, max_drop, split)
        record = {
            "file": out.name, "fp32_file": fp32.name, "split": split, "images": seen,
            "fp32_accuracy": fp32_acc, "int8_accuracy": int8_acc, "drop_points": round(drop, 4),
            "max_accuracy_drop": max_drop, "quantization": how, "cpu": cpu_description(),
        }  # fmt: skip
        write_metadata(tmp, {**fp32_art.model.meta, "int8": record})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    files.write_json(out.with_suffix(".json"), record)
    return out, record
