"""cnn-eval's work: a checkpoint or an ONNX export on a data split, as numbers (eval.json) and figures (PNG).

`score` is the one pass over a split that cnn-eval, the int8 export's accuracy check and cnn-bench share, so
the accuracies they report for the same file and batch size are the same number. A multi-label file is scored
by analysis.multilabel at the thresholds it carries: mAP, F1, exact match and each class's AP, with the
images whose predicted label set is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnn_train.analysis import plots
from cnn_train.analysis.multilabel import multilabel_metrics, set_titles
from cnn_train.config import TrainerConfig, with_defaults
from cnn_train.data.datasets import Split
from cnn_train.data.loaders import Batches
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference import checkpoint
from cnn_train.inference.artifact import Artifact, open_artifact
from cnn_train.inference.infer import INFERENCE, above_thresholds, infer
from cnn_train.runtime import files
from cnn_train.runtime.errors import UserError


def per_class(confusion: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class from a true×predicted count matrix."""
    tp = confusion.diag().double()
    predicted, actual = confusion.sum(0).double(), confusion.sum(1).double()
    precision = tp / predicted.clamp(min=1)
    recall = tp / actual.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return [
        {"class": c, "precision": p, "recall": r, "f1": f, "support": int(n)}
        for c, p, r, f, n in zip(
            classes, precision.tolist(), recall.tolist(), f1.tolist(), actual.tolist(), strict=True
        )
    ]


@dataclass
class Scores:
    """A split's confusion matrix, top-5 hits and summed loss, and the first misclassified images."""

    confusion: torch.Tensor
    top5_hits: int = 0
    seen: int = 0
    loss_sum: float = 0.0
    wrong_raw: list[torch.Tensor] = field(default_factory=list)  # uint8 images, as loaded
    wrong_pred: list[torch.Tensor] = field(default_factory=list)
    wrong_true: list[torch.Tensor] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.confusion.diag().sum().item() / max(self.seen, 1)

    @property
    def n_wrong(self) -> int:
        return sum(len(x) for x in self.wrong_raw)


def score(
    model: Any, preprocess: Preprocess, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n_classes: int,
    tta: bool = False, max_shown: int = 32,
) -> Scores:  # fmt: skip
    """Every batch through `inference.infer`: the counts cnn-eval reports, for any network it can run."""
    k = n_classes
    scores = Scores(torch.zeros(k, k, dtype=torch.long))
    loss_sum = None  # summed on the device as engine.evaluate sums it: the run's test_loss, exactly
    for x, y in batches:
        logits = infer(model, preprocess, x, tta=tta)
        pred = logits.argmax(1)
        batch_loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        scores.confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
        scores.top5_hits += (logits.topk(min(5, k), dim=1).indices == y[:, None]).any(1).sum().item()
        scores.seen += len(y)
        wrong = (pred != y).nonzero().flatten()[: max_shown - scores.n_wrong]
        if len(wrong):
            scores.wrong_raw.append(x[wrong])
            scores.wrong_pred.append(pred[wrong])
            scores.wrong_true.append(y[wrong])
    scores.loss_sum = 0.0 if loss_sum is None else loss_sum.double().item()
    return scores


def split_batches(
    art: Artifact, data: dict[str, Any] | None, split: str, device: torch.device, batch_size: int | None,
    limit_batches: int | None = None,
) -> tuple[Batches, dict[str, Any], int]:  # fmt: skip
    """The batches of `split` (of the file's own data, or `data`), the data config and the batch size.

    `batch_size` None: the batch size the file was trained (and tested) with, so that the test accuracy in
    its results.json is reproduced to the last digit.
    """
    if data is None and "data" not in art.config:
        raise UserError(f"{art.path}: records no training data (an older export); give data=<choice>")
    cfg = data or art.config["data"]
    batch_size = batch_size or int(cfg.get("batch_size", 128))
    dataset = checkpoint.dataset({"config": art.config}, cfg)
    if len(dataset.classes) != len(art.classes):
        raise UserError(
            f"data: {cfg['name']} has {len(dataset.classes)} classes, the checkpoint {len(art.classes)}"
        )
    if art.multi_label != dataset.multi_label:
        kinds = {True: "multi-label", False: "single-label"}
        raise UserError(f"data: {cfg['name']} is {kinds[dataset.multi_label]}, the checkpoint "
                        f"{kinds[art.multi_label]} (data.multi_label)")  # fmt: skip
    chosen: Split | None = dataset.test if split == "test" else dataset.val
    if chosen is None:
        raise UserError(f"split: {cfg['name']} at {cfg['root']} has no test split; use split=val")
    return Batches(chosen, art.spec, batch_size, device, limit=limit_batches), cfg, batch_size


def evaluate_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    data: dict[str, Any] | None = None,
    split: str = "test",
    device: torch.device | None = None,
    batch_size: int | None = None,
    limit_batches: int | None = None,
    max_shown: int = 32,
    tta: bool | None = None,
    cam: bool = False,
) -> dict[str, Any]:
    """Accuracy, top-5, per-class metrics and the confusion matrix; writes eval.json and two figures.

    `ckpt` is a .pt checkpoint or an .onnx export (run on ONNX Runtime). `tta` None: the run's own
    `trainer.tta`, so that (with the batch size it was tested at) its results.json's test accuracy is
    reproduced to the last digit. `cam` also draws misclassified_cam.png: the misclassified images under the
    Grad-CAM of the class they were mistaken for.
    """
    device = device or torch.device("cpu")
    if cam and Path(ckpt).suffix == ".onnx":
        raise UserError(f"cam: {ckpt} is an ONNX export; Grad-CAM needs the PyTorch checkpoint's gradients")
    art = open_artifact(ckpt, device)
    if tta is None:
        tta = bool(with_defaults(TrainerConfig, art.config.get("trainer", {})).tta)
    batches, cfg, batch_size = split_batches(art, data, split, device, batch_size, limit_batches)
    preprocess = Preprocess(art.spec).to(device)
    if art.multi_label:
        if cam:
            raise UserError("cam: Grad-CAMs of mistakes are drawn for single-label checkpoints; for label sets "
                            "cnn-predict cam=true draws one map per predicted label")  # fmt: skip
        head = {"checkpoint": str(ckpt), "data": cfg["name"], "split": split, "tta": tta, "batch_size": batch_size,
                "inference": {**INFERENCE, "runtime": "onnxruntime" if art.is_onnx else "pytorch"}}  # fmt: skip
        return evaluate_sets(art, preprocess, batches, head, Path(out_dir), tta, max_shown)
    scores = score(art.model, preprocess, batches, len(art.classes), tta, max_shown)
    seen = max(scores.seen, 1)
    report = {
        "checkpoint": str(ckpt), "data": cfg["name"], "split": split, "images": scores.seen, "tta": tta,
        "batch_size": batch_size, "inference": {**INFERENCE, "runtime": "onnxruntime" if art.is_onnx else "pytorch"},
        "accuracy": scores.accuracy, "top5_accuracy": scores.top5_hits / seen, "loss": scores.loss_sum / seen,
        "per_class": per_class(scores.confusion, art.classes), "confusion_matrix": scores.confusion.tolist(),
    }  # fmt: skip
    out = Path(out_dir)
    files.write_json(out / "eval.json", report)
    plots.plot_confusion(scores.confusion, art.classes, out / "confusion_matrix.png")
    if scores.wrong_raw:
        images, predicted = torch.cat(scores.wrong_raw), torch.cat(scores.wrong_pred)
        titles = [
            f"true {art.classes[t]}\npred {art.classes[p]}"
            for t, p in zip(torch.cat(scores.wrong_true).tolist(), predicted.tolist(), strict=True)
        ]
        plots.plot_grid(preprocess.unit(images).cpu(), titles, out / "misclassified.png")
        if cam:
            from cnn_train.analysis.cam import save_cam_grid

            save_cam_grid(art.model, preprocess, images, titles, out / "misclassified_cam.png", predicted)
    return report


def evaluate_sets(
    art: Artifact,
    preprocess: Preprocess,
    batches: Batches,
    head: dict[str, Any],
    out: Path,
    tta: bool = False,
    max_shown: int = 32,
) -> dict[str, Any]:
    """A multi-label checkpoint at its thresholds: eval.json (mAP, F1, exact match, per-class AP) and the
    images whose predicted set differs from their true set (misclassified.png)."""
    classes, thresholds = list(art.classes), art.thresholds
    probs, targets, loss_sum = [], [], 0.0
    wrong_images, wrong_titles = [], []
    for x, y in batches:
        logits = infer(art.model, preprocess, x, tta=tta, multi_label=True)
        loss_sum += (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum").double().item()
        )
        p = logits.sigmoid()
        probs.append(p.cpu())
        targets.append(y.cpu())
        pred = above_thresholds(p, thresholds)
        wrong = (pred != (y > 0.5)).any(1).nonzero().flatten()[: max_shown - len(wrong_images)]
        if len(wrong):
            wrong_images.extend(preprocess.unit(x[wrong]).cpu())
            true, guessed = set_titles(y[wrong], classes), set_titles(pred[wrong].float(), classes)
            wrong_titles.extend(f"true {t}\npred {g}" for t, g in zip(true, guessed, strict=True))
    scores, truth = torch.cat(probs), torch.cat(targets)
    metrics = multilabel_metrics(scores, truth, thresholds, classes)
    report = {**head, "multi_label": True, "images": len(truth), "loss": loss_sum / max(truth.numel(), 1),
              "accuracy": metrics["exact_match"], **metrics}  # fmt: skip
    files.write_json(out / "eval.json", report)
    if wrong_images:
        plots.plot_grid(torch.stack(wrong_images), wrong_titles, out / "misclassified.png")
    return report
