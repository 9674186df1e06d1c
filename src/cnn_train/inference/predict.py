"""predict(checkpoint, inputs) -> rows: the checkpoint alone says how to build, transform and name."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnn_train.data.transforms import Preprocess, read_image_tensor
from cnn_train.inference import checkpoint
from cnn_train.inference.export import OnnxModel
from cnn_train.inference.infer import infer
from cnn_train.runtime import files
from cnn_train.runtime.errors import UserError


@dataclass
class Prediction:
    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)


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
    """Top-k (class, probability) per readable image, plus (path, reason) for each unreadable one."""
    device = device or torch.device("cpu")
    if Path(ckpt).suffix == ".onnx":  # an export from cnn-export carries classes and transform itself
        model: Any = OnnxModel(ckpt)
        spec, classes = model.spec, model.classes
    else:
        payload = checkpoint.load(ckpt)
        model = checkpoint.inference_model(payload, device, ckpt)
        spec, classes = checkpoint.eval_transform(payload), payload["classes"]
    preprocess = Preprocess(spec).to(device)
    k = max(1, min(topk, len(classes)))
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
        probs = infer(model, preprocess, torch.stack(batch).to(device)).softmax(dim=1)
        top_p, top_i = probs.topk(k, dim=1)
        for name, ps, idx in zip(names, top_p.tolist(), top_i.tolist(), strict=True):
            rows.append(Prediction(name, [(classes[i], p) for i, p in zip(idx, ps, strict=True)]))
    return rows, failed


def write_predictions(path: str | Path, rows: list[Prediction]) -> None:
    """One row per image: .json as a list of objects, .csv with class_i/prob_i columns."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        files.write_json(
            path, [{"path": r.path, "topk": [{"class": c, "prob": p} for c, p in r.topk]} for r in rows]
        )
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
