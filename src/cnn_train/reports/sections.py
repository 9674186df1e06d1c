"""The sections of a run's report.html, each from the run dir's own files (see report.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnn_train.reports import page as h
from cnn_train.reports.rundata import command, number, read_metrics, resolved_config

SPEED = ("precision", "channels_last", "compile", "threads", "processes", "tta")
# Training settings results.json records when the run used them (shown only where present and set).
TRAINING = ("epochs_run", "stop_reason", "effective_batch_size", "ema_decay", "grad_clip_norm")
# What results.json adds for a multi-label run (its test accuracy is the exact-match ratio).
MULTI_LABEL = {"test_map": "test mAP (macro)", "test_micro_f1": "test micro F1", "test_macro_f1": "test macro F1",
               "best_val_map": "best validation mAP"}  # fmt: skip


def run_sections(run_dir: Path, results: dict[str, Any], extra: dict[str, Any]) -> list[str]:
    return [
        overview(results, extra),
        curves(run_dir),
        data(run_dir, extra),
        test(run_dir, extra),
        reproduce(run_dir),
    ]


def overview(results: dict[str, Any], extra: dict[str, Any]) -> str:
    anatomy = extra.get("anatomy", {})
    size = "×".join(map(str, anatomy["input"])) if "input" in anatomy else ""
    flops = anatomy.get("flops")
    minutes, seconds = divmod(float(results["wall_seconds"]), 60)
    items = [
        ("model", results["model"]),
        ("data", results["data"]),
        ("test accuracy", results.get("test_acc")),
        ("test loss", results.get("test_loss")),
        ("best validation accuracy", results["best_val_acc"]),
        ("best epoch", f"{results['best_epoch']} of {results['epochs']}"),
        ("wall time", f"{int(minutes)} min {seconds:.1f} s"),
        ("parameters", results["parameters"]),
        ("trainable parameters", results["trainable_parameters"]),
        (
            "FLOPs per image (forward)",
            h.si(flops) + (f" at {size}" if size else "") if flops else "not counted",
        ),
    ]
    training = [(k.replace("_", " "), results[k]) for k in TRAINING if results.get(k) is not None]
    if results.get("multi_label"):
        items[2] = ("test exact-match ratio", results.get("test_acc"))
        items[4] = ("validation exact-match ratio (best epoch)", results["best_val_acc"])
        items[2:2] = [(name, results.get(k)) for k, name in MULTI_LABEL.items()]
    speed = [(f"speed: {k}", results[k]) for k in SPEED if k in results]
    numerics = ", ".join(f"{k} {v}" for k, v in results.get("inference", {}).items())
    return h.section("Summary", h.facts([*items, *training, *speed, ("inference numerics", numerics)]))


def curves(run_dir: Path) -> str:
    rows = read_metrics(run_dir)
    headers = list(rows[0]) if rows else []
    table = h.table(headers, [[number(r[k]) for k in headers] for r in rows]) if rows else ""
    return h.section(
        "Training curves", h.figure(run_dir / "curves.png", "loss and accuracy per epoch"),
        "<h3>Per epoch (metrics.csv)</h3>", table or h.note("metrics.csv is missing"),
    )  # fmt: skip


def data(run_dir: Path, extra: dict[str, Any]) -> str:
    """data_check.json (cnn-data) when the run dir has one, else the class counts the run recorded."""
    parts = []
    check = run_dir / "data_check.json"
    counts = extra.get("class_counts", {})
    if check.is_file():
        report = json.loads(check.read_text())
        summary = report.get("summary", {})
        parts += ["<h3>Data check (data_check.json)</h3>", h.facts((str(k), v) for k, v in summary.items())]
        counts = report.get("class_counts", counts)
    if counts:
        splits = list(counts)
        classes = list(dict.fromkeys(c for split in counts.values() for c in split))
        rows = [[c, *(counts[s].get(c) for s in splits)] for c in classes]
        total = ["total", *(sum(counts[s].values()) for s in splits)]
        parts += ["<h3>Images per class</h3>", h.table(["class", *splits], rows, foot=total)]
    else:
        parts.append(h.note("no class counts recorded"))
    parts.append(h.figure(run_dir / "samples.png", "first training images after augmentation"))
    return h.section("Data", *parts)


def test(run_dir: Path, extra: dict[str, Any]) -> str:
    """Confusion matrix, per-class table and the misclassified grid (with CAMs when cam.py drew them)."""
    result = extra.get("test")
    if not result:
        return h.section("Test set", h.note("no test predictions recorded (no test split, or an older run)"))
    if result.get("multi_label"):
        return test_sets(result)
    rows = [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in result["per_class"]]
    cam = run_dir / "misclassified_cam.png"
    grid = cam if cam.is_file() else run_dir / "misclassified.png"
    caption = "misclassified test images" + (" with class activation maps" if cam.is_file() else "")
    return h.section(
        "Test set",
        f"<p>{result['images']:,} test images, accuracy {result['accuracy']:.4f}.</p>",
        h.figure(run_dir / "confusion_matrix.png", "confusion matrix (rows: true class, columns: predicted)"),
        "<h3>Per class</h3>",
        h.table(["class", "precision", "recall", "F1", "support"], rows),
        "<h3>Misclassified</h3>",
        h.figure(grid, caption) if grid.is_file() else h.note("no misclassified images among those kept"),
    )


def test_sets(result: dict[str, Any]) -> str:
    """A multi-label test pass: mAP, F1 and exact match, and each class's AP at its tuned threshold."""
    rows = [[r["class"], r["ap"], r["threshold"], r["precision"], r["recall"], r["f1"], r["support"]]
            for r in result["per_class"]]  # fmt: skip
    summary = (
        f"<p>{result['images']:,} test images, mAP (macro) {h.fmt(result['map'])}, micro F1 "
        f"{h.fmt(result['micro_f1'])}, macro F1 {h.fmt(result['macro_f1'])}, exact match "
        f"{h.fmt(result['exact_match'])}; F1, precision and recall at each class's threshold (tuned for F1 on "
        "the validation split).</p>"
    )
    headers = ["class", "AP", "threshold", "precision", "recall", "F1", "support"]
    return h.section("Test set", summary, "<h3>Per class</h3>", h.table(headers, rows))


def reproduce(run_dir: Path) -> str:
    config = resolved_config(run_dir)
    return h.section(
        "Reproduce",
        "<p>The command (run from the folder it was run in):</p>",
        h.pre(command(run_dir)),
        f"<details><summary>Resolved config</summary>{h.pre(config)}</details>",
    )
