"""The data of a run's report.html, one dict per section, each from the run dir's own files (see run.py).

The page is templates/run.html.j2; each section is templates/run/<key>.html.j2 and reads the context key
of the same name, which the gatherer under that key in SECTIONS builds. To add a section, as `bench` (the
formats cnn-bench measured) was added:

1. write `bench(run_dir, results, extra) -> dict | None` here and add it to SECTIONS as "bench"
   (None where the run has nothing for the section; the template then says so or shows nothing);
2. write templates/run/bench.html.j2, reading `bench` (import macros.html.j2 for tables, facts, figures);
3. add `{% include "run/bench.html.j2" %}` to run.html.j2 where the section belongs on the page.

A gatherer returns plain values (numbers stay numbers, so tables sort them); the template words them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnn_train.reports.page import figure
from cnn_train.reports.rundata import (
    BENCH_COLUMNS,
    bench_rows,
    command,
    number,
    read_json,
    read_metrics,
    resolved_config,
)

SPEED = ("precision", "channels_last", "compile", "threads", "processes", "tta")
# Training settings results.json records when the run used them (shown only where present and set).
TRAINING = ("epochs_run", "stop_reason", "effective_batch_size", "ema_decay", "grad_clip_norm")
Gatherer = Callable[[Path, dict[str, Any], dict[str, Any]], "dict[str, Any] | None"]
# What results.json adds for a multi-label run (its test accuracy is the exact-match ratio).
MULTI_LABEL = {"test_map": "test mAP (macro)", "test_micro_f1": "test micro F1", "test_macro_f1": "test macro F1",
               "best_val_map": "best validation mAP"}  # fmt: skip


def summary(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    anatomy = extra.get("anatomy", {})
    shown = ("model", "data", "test_acc", "test_loss", "best_val_acc", "best_epoch", "epochs", "wall_seconds",
             "parameters", "trainable_parameters")  # fmt: skip
    return {
        **{k: results.get(k) for k in shown},
        "flops": anatomy.get("flops"),
        "input": anatomy.get("input"),
        "training": {k: results[k] for k in TRAINING if results.get(k) is not None},
        "speed": {k: results[k] for k in SPEED if k in results},
        "distill": results.get("distill"),
        "multi_label": bool(results.get("multi_label")),  # test_acc and best_val_acc are exact-match ratios
        "label_sets": {name: results.get(k) for k, name in MULTI_LABEL.items()},
        "inference": ", ".join(f"{k} {v}" for k, v in results.get("inference", {}).items()),
    }


def budget(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any] | None:
    """How a budgeted run spent its time, and the overrides that replay it (results.json's budget, replay)."""
    if not (b := results.get("budget")):
        return None
    return {
        **b,
        "epochs_run": results["epochs_run"],
        "replans": len(b["plan"]) - 1,
        "replay": results["replay"],
    }


def curves(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    rows = read_metrics(run_dir)
    headers = list(rows[0]) if rows else []
    return {
        "figure": figure(run_dir / "curves.png", "loss and accuracy per epoch"),
        "headers": headers,
        "rows": [[number(r[k]) for k in headers] for r in rows],
    }


def data(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """data_check.json (cnn-data) when the run dir has one, else the class counts the run recorded."""
    check = read_json(run_dir / "data_check.json") if (run_dir / "data_check.json").is_file() else None
    counts = (check or {}).get("class_counts", extra.get("class_counts", {}))
    splits = list(counts)
    classes = list(dict.fromkeys(c for split in counts.values() for c in split))
    return {
        "check": {str(k): v for k, v in check.get("summary", {}).items()} if check is not None else None,
        "splits": splits,
        "rows": [[c, *(counts[s].get(c) for s in splits)] for c in classes],
        "total": ["total", *(sum(counts[s].values()) for s in splits)],
        "samples": figure(run_dir / "samples.png", "first training images after augmentation"),
    }


def test_set(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any] | None:
    """Confusion matrix, per-class metrics and the misclassified grid (with CAMs when cam.py drew them)."""
    result = extra.get("test")
    if not result:
        return None
    if result.get("multi_label"):  # no confusion matrix: mAP, F1 and exact match, AP per class
        return {**result, "confusion": None, "misclassified": None}
    cam = run_dir / "misclassified_cam.png"
    grid = cam if cam.is_file() else run_dir / "misclassified.png"
    caption = "misclassified test images" + (" with class activation maps" if cam.is_file() else "")
    return {
        "images": result["images"],
        "accuracy": result["accuracy"],
        "per_class": result["per_class"],
        "confusion": figure(run_dir / "confusion_matrix.png",
                            "confusion matrix (rows: true class, columns: predicted)"),
        "misclassified": figure(grid, caption) if grid.is_file() else None,
    }  # fmt: skip


def bench(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any] | None:
    """cnn-bench's table (bench.json): the formats the best checkpoint ships as, on the CPU it was measured on."""
    if not (run_dir / "bench.json").is_file():
        return None
    where, rows = bench_rows(run_dir)
    return {"where": where, "columns": list(BENCH_COLUMNS), "rows": rows}


def reproduce(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {"command": command(run_dir), "config": resolved_config(run_dir)}


SECTIONS: dict[str, Gatherer] = {
    "summary": summary,
    "budget": budget,
    "curves": curves,
    "data": data,
    "test_set": test_set,
    "bench": bench,
    "reproduce": reproduce,
}


def gather(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The context of run.html.j2: every section's data under its key."""
    return {key: build(run_dir, results, extra) for key, build in SECTIONS.items()}
