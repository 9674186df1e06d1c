"""report.html of a run: what trained, how well, on what, and how to run it again, in one file.

At the end of a run `after_run` writes what the report needs and the run does not already have (the test
pass's confusion matrix and misclassified images, collected by `TestRecord` inside the one test pass; class
counts; FLOPs) into report.json and two PNGs, then `write_run_report` renders the run dir into report.html
through templates/run.html.j2 (sections.py gathers each section's data; its docstring says how to add one).
`cnn-report RUN_DIR` re-renders from those files alone, without data or a device.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnn_train.analysis import plots
from cnn_train.analysis.cam import save_cam_grid
from cnn_train.analysis.evaluation import per_class
from cnn_train.data.datasets import Dataset, label_rows
from cnn_train.data.images import EvalTransform
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference import checkpoint
from cnn_train.reports.page import render
from cnn_train.reports.rundata import read_json
from cnn_train.reports.sections import gather
from cnn_train.runtime import distributed, files
from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)
MAX_SHOWN = 32  # misclassified images in the grid
KEPT_IMAGES = 512  # test images held back to find them in: no look at the device inside the test loop
MULTI_LABEL_TEST = ("images", "map", "micro_f1", "macro_f1", "exact_match", "per_class")  # report.json "test"


class TestRecord:
    """Called by engine.evaluate with every test batch: the confusion matrix and the first test images."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = classes
        self.confusion: torch.Tensor | None = None
        self.kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.n_kept = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        k = len(self.classes)
        pred = logits.argmax(1)
        counts = torch.bincount(y * k + pred, minlength=k * k).view(k, k)
        self.confusion = counts if self.confusion is None else self.confusion + counts
        if self.n_kept < KEPT_IMAGES:  # cloned: a loader may reuse its buffers
            self.kept.append((x.clone(), y.clone(), pred.clone()))
            self.n_kept += len(y)

    def gather(self, device: torch.device) -> torch.Tensor:
        """The confusion matrix over every process (a collective: every rank calls it)."""
        k = len(self.classes)
        local = self.confusion if self.confusion is not None else torch.zeros(k, k, dtype=torch.long)
        return distributed.all_sum(local.to(device)).cpu()

    def misclassified(self, limit: int = MAX_SHOWN) -> tuple[torch.Tensor, list[str], list[int]]:
        """uint8 images the model got wrong, their 'true/pred' titles and predicted classes (for CAMs)."""
        if not self.kept:
            return torch.empty(0, dtype=torch.uint8), [], []
        x, y, pred = (torch.cat(parts) for parts in zip(*self.kept, strict=True))
        wrong = (pred != y).nonzero().flatten()[:limit]
        true, guessed = y[wrong].tolist(), pred[wrong].tolist()
        titles = [
            f"true {self.classes[t]}\npred {self.classes[p]}" for t, p in zip(true, guessed, strict=True)
        ]
        return x[wrong], titles, guessed


def class_counts(data: Dataset) -> dict[str, dict[str, int]]:
    """{split: {class: images}} from the labels already in memory (no image is read); multi-label: the images
    each class is in."""
    out = {}
    for name, split in data.splits().items():
        counts = label_rows(split, len(data.classes)).sum(0).long().tolist()
        out[name] = dict(zip(data.classes, counts, strict=True))
    return out


def anatomy(model: nn.Module, spec: EvalTransform) -> dict[str, Any]:
    """Parameters and forward FLOPs for one image, counted on a CPU copy of the inference model."""
    from cnn_train.analysis.anatomy import summarize

    report = summarize(copy.deepcopy(model).cpu(), spec.channels, spec.image_size)
    return {"input": report["input"], "flops": report["total_flops"], "parameters": report["total_params"]}


def after_run(
    run_dir: Path,
    main: bool,
    data: Dataset,
    spec: EvalTransform,
    model: nn.Module,
    record: TestRecord | None,
    test: dict[str, Any] | None = None,
) -> None:
    """report.json, confusion_matrix.png, misclassified.png and report.html; a failure here only warns.

    `model` is the run's inference network (its FLOPs are counted; its device is where the test pass ran).
    A multi-label run has no confusion matrix: its test section is `test`'s metrics and per-class rows.
    """
    device = next(model.parameters()).device
    confusion = record.gather(device) if record is not None and data.test is not None else None
    if not main:
        return
    try:
        extra: dict[str, Any] = {"class_counts": class_counts(data)}
        try:
            extra["anatomy"] = anatomy(model, spec)
        except Exception as e:  # FLOPs are a nicety; an exotic layer must not cost the report
            log.warning("FLOPs not counted for the report: %s", e)
        if confusion is not None and record is not None:
            extra["test"] = test_section_data(run_dir, data.classes, spec, record, confusion)
        elif data.multi_label and test is not None:
            extra["test"] = {"multi_label": True, **{k: test[k] for k in MULTI_LABEL_TEST}}
        files.write_json(run_dir / "report.json", extra)
        path = write_run_report(run_dir)
        log.info("wrote %s", path)
    except Exception as e:  # the run finished and its checkpoints are safe: a figure must not fail it
        log.warning("report.html not written: %s", e, exc_info=log.isEnabledFor(logging.DEBUG))


def test_section_data(
    run_dir: Path, classes: list[str], spec: EvalTransform, record: TestRecord, confusion: torch.Tensor
) -> dict[str, Any]:
    """Per-class metrics and the two figures of the test pass."""
    plots.plot_confusion(confusion, classes, run_dir / "confusion_matrix.png")
    images, titles, predicted = record.misclassified()
    if len(images):
        preprocess = Preprocess(spec).to(images.device)
        try:  # each image under the Grad-CAM of the class it was mistaken for, from best.pt as tested
            model = checkpoint.inference_model(checkpoint.load(run_dir / "best.pt"), images.device)
            targets = torch.tensor(predicted, device=images.device)
            save_cam_grid(model, preprocess, images, titles, run_dir / "misclassified_cam.png", targets)
        except Exception as e:  # the plain grid still shows them
            log.warning("misclassified_cam.png not drawn: %s", e)
            plots.plot_grid(preprocess.unit(images), titles, run_dir / "misclassified.png")
    seen = int(confusion.sum())
    return {
        "images": seen,
        "accuracy": confusion.diag().sum().item() / max(seen, 1),
        "per_class": per_class(confusion, classes),
        "confusion_matrix": confusion.tolist(),
    }


def write_run_report(run_dir: Path) -> Path:
    """Render report.html (templates/run.html.j2) from the files in `run_dir` (results.json must be there)."""
    results = read_json(run_dir / "results.json")
    if not results:
        raise UserError(f"{run_dir}: no results.json (the run has not finished)")
    extra = read_json(run_dir / "report.json")
    context = gather(run_dir, results, extra)
    path = run_dir / "report.html"
    files.write_text(path, render("run.html.j2", run_dir=run_dir.resolve(), **context))
    return path


def build_report(path: Path) -> Path:
    """cnn-report: a run dir's or a sweep dir's report.html, rebuilt from what the dir holds."""
    if not path.is_dir():
        raise UserError(f"{path}: not a directory (give a run dir or a sweep dir)")
    if (path / "results.json").is_file():
        return write_run_report(path)
    if any(path.glob("*/.hydra/overrides.yaml")):
        from cnn_train.reports.sweep import write_sweep_report

        return write_sweep_report(path)
    raise UserError(f"{path}: neither a finished run dir (results.json) nor a sweep dir (job folders)")
