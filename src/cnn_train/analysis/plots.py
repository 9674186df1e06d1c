"""The textbook's figures, written into run and eval dirs: curves, image grids, confusion matrix.

matplotlib is imported when a figure is made (`subplots`), so that commands which draw nothing start fast,
and torch is not imported at all: cnn-predict draws annotated images of an ONNX export without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnn_train.runtime.files import atomic_write

if TYPE_CHECKING:
    import torch


def subplots(rows: int = 1, cols: int = 1, figsize: tuple[float, float] | None = None, **kwargs: Any) -> Any:
    """A figure and its axes, drawn with the Agg renderer and without pyplot: nothing global to import,
    register or close (`Figure.subplots` takes pyplot.subplots' arguments)."""
    fig = figure(figsize)
    return fig, fig.subplots(rows, cols, **kwargs)


def figure(figsize: tuple[float, float] | None = None) -> Any:
    """A matplotlib Figure on the Agg renderer, made without pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def save_png(fig: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Train loss, train accuracy and validation accuracy per epoch on one axis, as the textbook plots them."""
    epochs = [r["epoch"] for r in history]
    fig, ax = subplots(figsize=(5, 3.5))
    ax.plot(epochs, [r["train_loss"] for r in history], "-", label="train loss")
    ax.plot(epochs, [r["train_acc"] for r in history], "--", label="train acc")
    ax.plot(epochs, [r["val_acc"] for r in history], "-.", label="val acc")
    if all(r.get("val_map") is not None for r in history):  # multi-label: what picks best.pt
        ax.plot(epochs, [r["val_map"] for r in history], ":", label="val mAP")
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_png(fig, path)


def image_grid(tiles: Sequence[Any], titles: Sequence[str], path: str | Path, columns: int = 8) -> None:
    """RGB tiles (H×W×3 arrays in [0, 1], all one size) in a grid, each under its title.

    The grid is one picture on one axes, its titles text above the tiles: an axes per tile made matplotlib
    lay out and measure dozens of axes, seconds for the 32 images every run starts by drawing.
    """
    import numpy as np

    n = len(tiles)
    rows, cols = max(1, math.ceil(n / columns)), min(columns, max(n, 1))
    h, w = tiles[0].shape[:2] if n else (28, 28)
    lines = max((t.count("\n") + 1 for t in titles), default=1)  # label sets take several lines
    per_inch = w / 1.3  # a tile is 1.3 inches wide, in a column of 1.6
    gap, band = round(0.3 * per_inch), round((0.15 * lines + 0.1) * per_inch)  # between tiles; for titles
    cell_w, cell_h = w + gap, band + h + gap // 2
    mosaic = np.ones((rows * cell_h, cols * cell_w, 3), dtype=np.float32)
    fig = figure(figsize=(cols * cell_w / per_inch, rows * cell_h / per_inch))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    for i, (tile, title) in enumerate(zip(tiles, titles, strict=False)):
        top, left = (i // cols) * cell_h + band, (i % cols) * cell_w + gap // 2
        mosaic[top : top + h, left : left + w] = tile
        ax.text(left + w / 2, top - 0.05 * per_inch, title, ha="center", va="bottom", fontsize=7)
    ax.imshow(mosaic, interpolation="nearest")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def rgb_tile(image: torch.Tensor) -> Any:
    """A C×H×W image in [0, 1] as the H×W×3 array a grid holds (grey repeated into three channels)."""
    img = image.detach().float().clamp(0, 1).cpu()
    return (img.expand(3, -1, -1) if img.shape[0] == 1 else img).permute(1, 2, 0).numpy()


def plot_grid(images: torch.Tensor, titles: Sequence[str], path: str | Path, columns: int = 8) -> None:
    """Images in [0, 1] (N×C×H×W) in a grid, each with its title (class names, or true/predicted)."""
    image_grid([rgb_tile(img) for img in images], titles, path, columns)


def plot_confusion(matrix: torch.Tensor, classes: Sequence[str], path: str | Path) -> None:
    """Rows are true classes, columns predicted ones; counts written in the cells."""
    k = len(classes)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = subplots(figsize=(size, size))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        top = matrix.max().item() or 1
        for i in range(k):
            for j in range(k):
                v = int(matrix[i, j])
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v > top / 2 else "black",
                )
    save_png(fig, path)


def plot_annotated(image_path: str | Path, title: str, path: str | Path) -> None:
    """The original image with the prediction as its title, the way the textbook shows a prediction."""
    from PIL import Image

    with Image.open(image_path) as im:
        img = im.convert("RGB")
    fig, ax = subplots(figsize=(4, 4))
    ax.imshow(img)
    ax.set_title(title)
    ax.axis("off")
    save_png(fig, path)


def plot_lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    path: str | Path,
    marker: str = "o",
) -> None:
    """Several named (x, y) lines on one axis: every sweep job's validation curve, a search's history."""
    fig, ax = subplots(figsize=(6.5, 4))
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker=marker, markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(series) <= 12:  # beyond that a legend hides the plot; the leaderboard names the jobs
        ax.legend(fontsize=7)
    save_png(fig, path)


def plot_bars(values: dict[str, float], xlabel: str, path: str | Path) -> None:
    """Horizontal bars, largest on top (Optuna's parameter importances)."""
    names = list(values)[::-1]
    fig, ax = subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [values[n] for n in names])
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    save_png(fig, path)


def plot_lr_find(record: dict[str, Any], path: str | Path) -> None:
    """The range test's loss against the lr (log axis): raw, smoothed, and the suggested lr marked."""
    fig, ax = subplots(figsize=(5, 3.5))
    ax.plot(record["lrs"], record["losses"], "-", alpha=0.3, label="loss")
    ax.plot(record["lrs"], record["smoothed"], "-", label="smoothed loss")
    best, suggested = record["min_loss_lr"], record["suggested_lr"]
    ax.axvline(best, color="grey", linestyle=":", label=f"min loss at {best:.2g}")
    ax.axvline(suggested, color="red", linestyle="--", label=f"suggested {suggested:.2g}")
    ax.set_xscale("log")
    low, first = min(record["losses"]), record["smoothed"][0]
    ax.set_ylim(0.9 * low, 1.1 * min(max(record["smoothed"]), 2 * first))  # the divergence runs off the top
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_png(fig, path)
