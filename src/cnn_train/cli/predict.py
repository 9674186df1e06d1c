"""cnn-predict: classify images with a checkpoint (or an .onnx export) alone; no training config.

Its config is one schema (PredictConfig), so the overrides are parsed onto it directly rather than composed by
Hydra (which composes every config twice); every argument and file is checked before a framework is imported,
so a mistake is answered at once; an .onnx export then runs on ONNX Runtime without importing torch at all.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from cnn_train.cli.common import (
    CONFIG_ERRORS,
    USER_ERRORS,
    checkpoint_arg,
    console,
    fail,
    parse_overrides,
    schema_help,
    user_error,
    wants_help,
)
from cnn_train.config import PredictConfig, check_declared_keys
from cnn_train.inference.inputs import (
    Prediction,
    check_model_file,
    check_output,
    expand_inputs,
    write_predictions,
)
from cnn_train.runtime.errors import UserError

USAGE = "cnn-predict img=PATH [ckpt=best.pt|model.onnx] [key=value ...]"
DEVICES = ("auto", "cpu", "cuda", "mps")


def checked_inputs(cfg: DictConfig) -> tuple[Path, list[Path]]:
    """The model file and the images, every argument checked: all before torch or ONNX Runtime loads."""
    check_declared_keys(cfg)
    if OmegaConf.is_missing(cfg, "img"):
        raise UserError("img: give an image file, a folder or a glob, e.g. img=photo.jpg")
    for key in ("topk", "batch_size"):
        if cfg[key] < 1:
            raise UserError(f"{key}: {cfg[key]} must be ≥ 1")
    if cfg.device not in DEVICES:
        raise UserError(f"device: {cfg.device!r} is not one of {', '.join(DEVICES)}")
    if cfg.output:
        check_output(cfg.output)
    ckpt = checkpoint_arg(cfg)
    check_model_file(ckpt)
    if cfg.cam and ckpt.suffix == ".onnx":
        raise UserError(f"cam: {ckpt} is an ONNX export; Grad-CAM needs the PyTorch checkpoint's gradients")
    return ckpt, expand_inputs(str(cfg.img))


def run_predict(
    cfg: DictConfig, ckpt: Path, paths: list[Path]
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    if ckpt.suffix == ".onnx":
        from cnn_train.inference.onnx_session import predict_onnx

        return predict_onnx(ckpt, paths, cfg.topk, cfg.batch_size)
    from cnn_train.inference.predict import predict
    from cnn_train.runtime.hardware import pick_device

    return predict(ckpt, paths, cfg.topk, pick_device(cfg.device), cfg.batch_size)


def save_figures(cfg: DictConfig, ckpt: Path, rows: list[Prediction]) -> None:
    """save_annotated=true: each image titled with its class; cam=true: under its class's Grad-CAM."""
    if cfg.save_annotated:
        from cnn_train.analysis.plots import plot_annotated

        folder = Path(f"{Path(cfg.output).with_suffix('')}_annotated") if cfg.output else Path("annotated")
        for i, row in enumerate(rows):
            target = folder / f"{i:04d}_{Path(row.path).stem}.png"  # numbered: names repeat across folders
            plot_annotated(row.path, _title(row), target)
        console.print(f"wrote {len(rows)} annotated images to {folder}", highlight=False)
    if cfg.cam:
        from cnn_train.analysis import cam
        from cnn_train.runtime.hardware import pick_device

        folder = cam.cam_dir(cfg.output)
        maps = cam.save_prediction_cams(ckpt, rows, folder, pick_device(cfg.device), cfg.batch_size)
        console.print(f"wrote {len(maps)} Grad-CAM images to {folder}", highlight=False)


def _predict(args: list[str]) -> None:
    try:
        cfg = parse_overrides(PredictConfig, args)
        ckpt, paths = checked_inputs(cfg)
        rows, failed = run_predict(cfg, ckpt, paths)
        if cfg.output:
            write_predictions(cfg.output, rows)
        save_figures(cfg, ckpt, rows)
    except (*USER_ERRORS, *CONFIG_ERRORS, OmegaConfBaseException) as e:
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
    if wants_help():
        print(schema_help(PredictConfig, USAGE))
        return
    _predict(sys.argv[1:])
