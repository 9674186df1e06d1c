"""predict(checkpoint, inputs) -> rows: the checkpoint alone says how to build, transform and name.

A single-label checkpoint gives each image its top-k classes; a multi-label one every class whose probability
reaches that class's threshold (tuned on validation, carried by the checkpoint), most probable first.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnn_train.data.transforms import EvalTransform, Preprocess, read_image_tensor
from cnn_train.inference import checkpoint
from cnn_train.inference.export import OnnxModel
from cnn_train.inference.infer import DEFAULT_THRESHOLD, above_thresholds, infer, probabilities
from cnn_train.runtime import files
from cnn_train.runtime.errors import UserError


@dataclass
class Prediction:
    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)  # multi-label: every label predicted
    multi_label: bool = False


@dataclass
class Predictor:
    """What a checkpoint or an .onnx export says about using it: network, transform, classes, thresholds."""

    model: Any  # the inference network, or an OnnxModel
    spec: EvalTransform
    classes: list[str]
    multi_label: bool = False
    thresholds: list[float] = field(default_factory=list)

    @classmethod
    def load(cls, ckpt: str | Path, device: torch.device) -> Predictor:
        """From the file alone; thresholds 0.5 where a multi-label file carries none."""
        if Path(ckpt).suffix == ".onnx":  # an export from cnn-export carries classes and transform itself
            model = OnnxModel(ckpt)
            k = len(model.classes)
            return cls(model, model.spec, model.classes, model.multi_label,
                       model.thresholds or [DEFAULT_THRESHOLD] * k)  # fmt: skip
        payload = checkpoint.load(ckpt)
        return cls(
            checkpoint.inference_model(payload, device, ckpt), checkpoint.eval_transform(payload),
            payload["classes"], checkpoint.is_multi_label(payload), checkpoint.thresholds(payload),
        )  # fmt: skip

    def rows(self, names: list[str], logits: torch.Tensor, topk: int) -> list[Prediction]:
        """Top-k (class, probability) per image; multi-label: every class at or above its threshold."""
        probs = probabilities(logits, self.multi_label)
        if not self.multi_label:
            top_p, top_i = probs.topk(max(1, min(topk, len(self.classes))), dim=1)
            return [Prediction(name, [(self.classes[i], p) for i, p in zip(idx, ps, strict=True)])
                    for name, ps, idx in zip(names, top_p.tolist(), top_i.tolist(), strict=True)]  # fmt: skip
        chosen = above_thresholds(probs, self.thresholds)
        rows = []
        for name, p, keep in zip(names, probs.tolist(), chosen.tolist(), strict=True):
            labels = sorted(((self.classes[i], p[i]) for i, k in enumerate(keep) if k), key=lambda t: -t[1])
            rows.append(Prediction(name, labels, multi_label=True))
        return rows


def expand_inputs(spec: str) -> list[Path]:
    """A file, a folder (recursively, image extensions only) or a glob, in sorted order."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
        if not found:
            raise UserError(f"img: no image files under {path}")
        return found
    matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
    if not matches:
        raise UserError(f"img: {spec} matches no file")
    return matches


def newest_checkpoint(root: str | Path) -> Path:
    """The most recently written best.pt under `root` (outputs/ by default)."""
    found = list(Path(root).rglob("best.pt")) if Path(root).is_dir() else []
    if not found:
        raise UserError(f"ckpt: no best.pt under {root}/; train first or pass ckpt=path/to/best.pt")
    return max(found, key=lambda p: p.stat().st_mtime)


def predict(
    ckpt: str | Path,
    paths: list[Path],
    topk: int = 5,
    device: torch.device | None = None,
    batch_size: int = 64,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k (class, probability) per readable image (multi-label: every label predicted), plus (path,
    reason) for each unreadable one."""
    device = device or torch.device("cpu")
    predictor = Predictor.load(ckpt, device)
    spec = predictor.spec
    preprocess = Preprocess(spec).to(device)
    rows: list[Prediction] = []
    failed: list[tuple[str, str]] = []
    for start in range(0, len(paths), batch_size):
        batch, names = [], []
        for p in paths[start : start + batch_size]:
            try:
                batch.append(read_image_tensor(p, spec))
                names.append(str(p))
            except UserError as e:
                failed.append((str(p), str(e)))
        if not batch:
            continue
        logits = infer(predictor.model, preprocess, torch.stack(batch).to(device))
        rows += predictor.rows(names, logits, topk)
    return rows, failed


def write_predictions(path: str | Path, rows: list[Prediction]) -> None:
    """One row per image: .json as a list of objects, .csv with class_i/prob_i columns.

    Multi-label rows list the predicted labels (under "labels" in JSON; as many columns as the most labels).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        files.write_json(
            path,
            [{"path": r.path, "labels" if r.multi_label else "topk": [{"class": c, "prob": p} for c, p in r.topk]}
             for r in rows],
        )  # fmt: skip
    elif path.suffix.lower() == ".csv":
        table: list[dict[str, Any]] = []
        for r in rows:
            row: dict[str, Any] = {"path": r.path}
            for i, (c, p) in enumerate(r.topk, start=1):
                row[f"class_{i}"], row[f"prob_{i}"] = c, round(p, 6)
            table.append(row)
        files.write_csv(path, table)
    else:
        raise UserError(f"output: {path} must end in .csv or .json")
