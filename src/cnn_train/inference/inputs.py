"""What predict reads and writes, without torch: the inputs, the checkpoint it finds, top-k rows, CSV/JSON.

cnn-predict checks every argument and file with these before it imports a framework, and the ONNX path
(`inference.onnx_session`) never imports one. numpy and PIL are imported only to read images, so a mistake
in the arguments is answered before them too.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnn_train.runtime import files
from cnn_train.runtime.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from cnn_train.data.images import EvalTransform

OUTPUT_SUFFIXES = (".csv", ".json")
DEFAULT_THRESHOLD = 0.5  # multi-label: a class validation had no positive of, or a file without thresholds
# The suffixes a folder of images is searched for (torchvision's IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Prediction:
    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)  # multi-label: every label predicted
    multi_label: bool = False


def expand_inputs(spec: str) -> list[Path]:
    """A file, a folder (recursively, image extensions only) or a glob, in sorted order."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
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


def check_model_file(path: Path) -> None:
    """The checkpoint or export exists; its contents are read (and judged) by whoever loads it."""
    if not path.is_file():
        kind = "ONNX file" if path.suffix == ".onnx" else "checkpoint file"
        raise UserError(f"{path}: no such {kind}")


def check_output(path: str | Path) -> None:
    if Path(path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"output: {path} must end in .csv or .json")


def read_batch(
    paths: Sequence[Path], spec: EvalTransform
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """The readable images as one uint8 N×C×H×W batch, their paths, and (path, reason) for the others."""
    import numpy as np

    from cnn_train.data.images import read_image_array

    arrays, names, failed = [], [], []
    for p in paths:
        try:
            arrays.append(read_image_array(p, spec))
            names.append(str(p))
        except UserError as e:
            failed.append((str(p), str(e)))
    batch = (
        np.stack(arrays)
        if arrays
        else np.zeros((0, spec.channels, spec.image_size, spec.image_size), np.uint8)
    )
    return batch, names, failed


def ranked(names: list[str], top_p: Sequence[Sequence[float]], top_i: Sequence[Sequence[int]],
           classes: list[str]) -> list[Prediction]:  # fmt: skip
    """One Prediction per image from its k highest probabilities and their class indices."""
    return [
        Prediction(name, [(classes[i], float(p)) for i, p in zip(idx, ps, strict=True)])
        for name, ps, idx in zip(names, top_p, top_i, strict=True)
    ]


def labelled(
    names: list[str], probs: np.ndarray, thresholds: Sequence[float], classes: list[str]
) -> list[Prediction]:
    """Multi-label rows: every class whose probability reaches its own threshold, most probable first.

    Compared in float64, where the thresholds were tuned: a threshold halfway between two fp32 scores stays
    strictly between them.
    """
    import numpy as np

    scores = np.asarray(probs, dtype=np.float64)
    keep = scores >= np.asarray(thresholds, dtype=np.float64)
    rows = []
    for name, p, chosen in zip(names, scores.tolist(), keep, strict=True):
        labels = sorted(((classes[i], p[i]) for i in np.flatnonzero(chosen)), key=lambda t: -t[1])
        rows.append(Prediction(name, labels, multi_label=True))
    return rows


def write_predictions(path: str | Path, rows: list[Prediction]) -> None:
    """One row per image: .json as a list of objects, .csv with class_i/prob_i columns.

    Multi-label rows list the predicted labels (under "labels" in JSON; as many columns as the most labels).
    """
    check_output(path)
    path = Path(path)
    if path.suffix.lower() == ".json":
        files.write_json(path, [
            {"path": r.path, "labels" if r.multi_label else "topk": [{"class": c, "prob": p} for c, p in r.topk]}
            for r in rows
        ])  # fmt: skip
        return
    table: list[dict[str, Any]] = []
    for r in rows:
        row: dict[str, Any] = {"path": r.path}
        for i, (c, p) in enumerate(r.topk, start=1):
            row[f"class_{i}"], row[f"prob_{i}"] = c, round(p, 6)
        table.append(row)
    files.write_csv(path, table)
