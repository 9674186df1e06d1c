"""cnn-predict: classify images with a checkpoint (or an .onnx export) alone; no training config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from cnn_train.cli.common import USER_ERRORS, checkpoint_arg, config_dir, console, fail, run_app, user_error
from cnn_train.config import check_declared_keys
from cnn_train.runtime.errors import UserError


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def _predict(cfg: DictConfig) -> None:
    from cnn_train.analysis import cam, plots
    from cnn_train.inference.predict import expand_inputs, predict, write_predictions
    from cnn_train.runtime.hardware import pick_device

    try:
        check_declared_keys(cfg)
        if OmegaConf.is_missing(cfg, "img"):
            raise UserError("img: give an image file, a folder or a glob, e.g. img=photo.jpg")
        ckpt = checkpoint_arg(cfg)
        paths = expand_inputs(str(cfg.img))
        rows, failed = predict(ckpt, paths, cfg.topk, pick_device(cfg.device), cfg.batch_size)
        if cfg.output:
            write_predictions(cfg.output, rows)
        if cfg.save_annotated:
            folder = (
                Path(f"{Path(cfg.output).with_suffix('')}_annotated") if cfg.output else Path("annotated")
            )
            for i, row in enumerate(rows):
                target = (
                    folder / f"{i:04d}_{Path(row.path).stem}.png"
                )  # numbered: names repeat across folders
                plots.plot_annotated(row.path, _title(row), target)
            console.print(f"wrote {len(rows)} annotated images to {folder}", highlight=False)
        if cfg.cam:
            folder = cam.cam_dir(cfg.output)
            maps = cam.save_prediction_cams(ckpt, rows, folder, pick_device(cfg.device), cfg.batch_size)
            console.print(f"wrote {len(maps)} Grad-CAM images to {folder}", highlight=False)
    except USER_ERRORS as e:
        fail(user_error(e))
        return
    out = Console()
    for row in rows:
        ranked = (
            "  ".join(f"{name}: {prob:.3f}" for name, prob in row.topk) or "(no label above its threshold)"
        )
        out.print(f"{row.path}  {ranked}", highlight=False, soft_wrap=True)
    for _path, reason in failed:
        console.print(f"[red]failed:[/] {reason}", highlight=False)
    if cfg.output:
        console.print(f"wrote {len(rows)} rows to {cfg.output}", highlight=False)
    if failed:
        sys.exit(1)


def _title(row: Any) -> str:
    """The annotated image's title: its class, or (multi-label) every label predicted."""
    if not row.multi_label:
        name, prob = row.topk[0]
        return f"class: {name} prob: {prob:.3f}"
    return "labels: " + (", ".join(f"{name} {prob:.2f}" for name, prob in row.topk) or "none")


def main() -> None:
    """`cnn-predict`: classify images with a checkpoint."""
    run_app(_predict)
