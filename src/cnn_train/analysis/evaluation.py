"""cnn-eval's work: a checkpoint on a data split, as numbers (eval.json) and figures (PNG).

A multi-label checkpoint is scored by analysis.multilabel at the thresholds it carries: mAP, F1, exact match
and each class's AP, with the images whose predicted label set is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnn_train.analysis import plots
from cnn_train.analysis.cam import save_cam_grid
from cnn_train.analysis.multilabel import multilabel_metrics, set_titles
from cnn_train.data.loaders import Batches
from cnn_train.data.transforms import Preprocess
from cnn_train.inference import checkpoint
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


def evaluate_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    data: dict[str, Any] | None = None,
    split: str = "test",
    device: torch.device | None = None,
    batch_size: int | None = None,
    limit_batches: int | None = None,
    max_shown: int = 32,
    tta: bool = False,
    cam: bool = False,
) -> dict[str, Any]:
    """Accuracy, top-5, per-class metrics and the confusion matrix; writes eval.json and two figures.

    `batch_size` None: the batch size the checkpoint was trained (and tested) with, so that the test accuracy
    in its results.json is reproduced to the last digit. `cam` also draws misclassified_cam.png: the
    misclassified images under the Grad-CAM of the class they were mistaken for.
    """
    device = device or torch.device("cpu")
    payload = checkpoint.load(ckpt)
    model = checkpoint.inference_model(payload, device, ckpt)
    batch_size = batch_size or int(payload["config"]["data"]["batch_size"])
    spec = checkpoint.eval_transform(payload)
    classes: list[str] = payload["classes"]
    cfg = data or payload["config"]["data"]
    dataset = checkpoint.dataset(payload, cfg)
    if len(dataset.classes) != len(classes):
        raise UserError(
            f"data: {cfg['name']} has {len(dataset.classes)} classes, the checkpoint {len(classes)}"
        )
    chosen = dataset.test if split == "test" else dataset.val
    if chosen is None:
        raise UserError(f"split: {cfg['name']} at {cfg['root']} has no test split; use split=val")
    if checkpoint.is_multi_label(payload) != dataset.multi_label:
        kinds = {True: "multi-label", False: "single-label"}
        raise UserError(f"data: {cfg['name']} is {kinds[dataset.multi_label]}, the checkpoint "
                        f"{kinds[checkpoint.is_multi_label(payload)]} (data.multi_label)")  # fmt: skip
    preprocess = Preprocess(spec).to(device)
    if dataset.multi_label:
        if cam:
            raise UserError("cam: Grad-CAMs of mistakes are drawn for single-label checkpoints; for label sets "
                            "cnn-predict cam=true draws one map per predicted label")  # fmt: skip
        batches = Batches(chosen, spec, batch_size, device, limit=limit_batches)
        head = {"checkpoint": str(ckpt), "data": cfg["name"], "split": split, "tta": tta, "batch_size": batch_size,
                "inference": INFERENCE}  # fmt: skip
        return evaluate_sets(model, preprocess, batches, payload, head, Path(out_dir), tta, max_shown)
    k = len(classes)
    confusion = torch.zeros(k, k, dtype=torch.long)
    top5_hits, seen = 0, 0
    loss_sum = torch.zeros(
        (), device=device
    )  # summed as engine.evaluate sums it: the run's test_loss, exactly
    wrong_images, wrong_titles, wrong_raw, wrong_pred = [], [], [], []
    for x, y in Batches(chosen, spec, batch_size, device, limit=limit_batches):
        logits = infer(model, preprocess, x, tta=tta)
        pred = logits.argmax(1)
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
        top5_hits += (logits.topk(min(5, k), dim=1).indices == y[:, None]).any(1).sum().item()
        seen += len(y)
        wrong = (pred != y).nonzero().flatten()[: max_shown - len(wrong_images)]
        if len(wrong):
            wrong_images.extend(preprocess.unit(x[wrong]).cpu())
            wrong_raw.append(x[wrong])
            wrong_pred.append(pred[wrong])
            wrong_titles.extend(
                f"true {classes[t]}\npred {classes[p]}"
                for t, p in zip(y[wrong].tolist(), pred[wrong].tolist(), strict=True)
            )
    out = Path(out_dir)
    report = {
        "checkpoint": str(ckpt), "data": cfg["name"], "split": split, "images": seen, "tta": tta,
        "batch_size": batch_size, "inference": INFERENCE,
        "accuracy": confusion.diag().sum().item() / max(seen, 1), "top5_accuracy": top5_hits / max(seen, 1),
        "loss": loss_sum.double().item() / max(seen, 1),
        "per_class": per_class(confusion, classes), "confusion_matrix": confusion.tolist(),
    }  # fmt: skip
    files.write_json(out / "eval.json", report)
    plots.plot_confusion(confusion, classes, out / "confusion_matrix.png")
    if wrong_images:
        plots.plot_grid(torch.stack(wrong_images), wrong_titles, out / "misclassified.png")
    if wrong_images and cam:
        images, targets = torch.cat(wrong_raw), torch.cat(wrong_pred)
        save_cam_grid(model, preprocess, images, wrong_titles, out / "misclassified_cam.png", targets)
    return report


def evaluate_sets(
    model: torch.nn.Module,
    preprocess: Preprocess,
    batches: Batches,
    payload: dict[str, Any],
    head: dict[str, Any],
    out: Path,
    tta: bool = False,
    max_shown: int = 32,
) -> dict[str, Any]:
    """A multi-label checkpoint at its thresholds: eval.json (mAP, F1, exact match, per-class AP) and the
    images whose predicted set differs from their true set (misclassified.png)."""
    classes, thresholds = list(payload["classes"]), checkpoint.thresholds(payload)
    probs, targets, loss_sum = [], [], 0.0
    wrong_images, wrong_titles = [], []
    for x, y in batches:
        logits = infer(model, preprocess, x, tta=tta, multi_label=True)
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
