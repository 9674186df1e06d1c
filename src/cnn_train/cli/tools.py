"""cnn-eval, cnn-export, cnn-summary, cnn-data and cnn-report: what a checkpoint, a model or a dataset tells."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console, Group
from rich.table import Table

from cnn_train.cli.common import USER_ERRORS, checkpoint_arg, config_dir, console, fail, run_app, user_error
from cnn_train.config import check_declared_keys
from cnn_train.runtime import files
from cnn_train.runtime.errors import UserError


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="summary")
def _summary(cfg: DictConfig) -> None:
    from cnn_train.analysis.anatomy import summarize
    from cnn_train.analysis.layer_views import save_layer_views, summary_model

    try:
        check_declared_keys(cfg)
        name, model, spec = summary_model(cfg)  # ckpt='s model and transform, else model=/data='s
        report = summarize(model, spec.channels, spec.image_size)
        if cfg.json:
            files.write_json(cfg.json, {"model": name, **report})
        if cfg.img:
            views = save_layer_views(model, spec, Path(cfg.img).expanduser())
            console.print(f"wrote {views['filters']} and {views['feature_maps']}", highlight=False)
    except USER_ERRORS as e:
        fail(user_error(e))
        return
    if _SUMMARY_JSON_TO_STDOUT:
        print(json.dumps({"model": name, **report}, indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 140).print(summary_tables(name, report))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def _eval(cfg: DictConfig) -> None:
    from cnn_train.analysis.evaluation import evaluate_checkpoint
    from cnn_train.runtime.hardware import pick_device

    try:
        check_declared_keys(cfg)
        if cfg.split not in ("test", "val"):
            raise UserError(f"split: {cfg.split!r} is not test or val")
        ckpt = checkpoint_arg(cfg)
        out_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.parent / "eval"
        data = None  # the checkpoint's own
        if cfg.data is not None:
            data = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
        device = pick_device(cfg.device)
        report = evaluate_checkpoint(
            ckpt, out_dir, data, cfg.split, device, cfg.batch_size, cfg.limit_batches, tta=cfg.tta,
            cam=bool(cfg.cam),
        )  # fmt: skip
    except USER_ERRORS as e:
        fail(user_error(e))
        return
    if report.get("multi_label"):
        Console(width=None if sys.stdout.isatty() else 120).print(label_set_table(report))
        console.print(f"wrote eval.json, misclassified.png to {out_dir}", highlight=False)
        return
    table = Table(title=f"{report['data']} {report['split']}: accuracy {report['accuracy']:.4f}, "
                  f"top-5 {report['top5_accuracy']:.4f} ({report['images']} images)")  # fmt: skip
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in report["per_class"]:
        table.add_row(
            r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"])
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    figures = "misclassified.png, misclassified_cam.png" if cfg.cam else "misclassified.png"
    console.print(f"wrote eval.json, confusion_matrix.png, {figures} to {out_dir}", highlight=False)


def label_set_table(report: dict[str, Any]) -> Table:
    """cnn-eval of a multi-label checkpoint: the headline metrics, then AP and F1 at its threshold per class."""
    f = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    table = Table(title=f"{report['data']} {report['split']}: mAP {f(report['map'])}, micro F1 "
                  f"{f(report['micro_f1'])}, macro F1 {f(report['macro_f1'])}, exact match "
                  f"{f(report['exact_match'])} ({report['images']} images)")  # fmt: skip
    for col in ("class", "AP", "threshold", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in report["per_class"]:
        table.add_row(r["class"], f(r["ap"]), f"{r['threshold']:.3f}", f"{r['precision']:.3f}",
                      f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))  # fmt: skip
    return table


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def _export(cfg: DictConfig) -> None:
    try:
        check_declared_keys(cfg)
        if not cfg.ckpt:
            raise UserError("ckpt: give the checkpoint to export, e.g. ckpt=outputs/.../best.pt")
        if cfg.quantize is not None:
            _export_int8(cfg)
            return
        from cnn_train.inference.export import export

        path, diff = export(Path(cfg.ckpt).expanduser(), str(cfg.format), cfg.output, float(cfg.tolerance))
    except USER_ERRORS as e:
        fail(user_error(e))
        return
    console.print(f"wrote {path}; max |difference| from PyTorch on a real batch: {diff:.2e}", highlight=False)


def _export_int8(cfg: DictConfig) -> None:
    """quantize=int8: the fp32 export, then the int8 file if its accuracy holds."""
    if cfg.quantize != "int8":
        raise UserError(f"quantize: {cfg.quantize!r} is not int8 (or null)")
    if cfg.format != "onnx":
        raise UserError(f"quantize: int8 needs format=onnx (not {cfg.format})")
    if cfg.calibration_images < 1:
        raise UserError(f"calibration_images: {cfg.calibration_images} must be ≥ 1")
    if cfg.max_accuracy_drop < 0:
        raise UserError(f"max_accuracy_drop: {cfg.max_accuracy_drop} must be ≥ 0 (points of accuracy)")
    from cnn_train.analysis.quantization import export_int8

    path, r = export_int8(
        Path(cfg.ckpt).expanduser(), cfg.output, int(cfg.calibration_images), float(cfg.max_accuracy_drop),
        float(cfg.tolerance),
    )  # fmt: skip
    console.print(
        f"wrote {path} (and {r['fp32_file']}): {r['split']} accuracy int8 {r['int8_accuracy']:.4f}, "
        f"fp32 {r['fp32_accuracy']:.4f} (a drop of {r['drop_points']:.2f} points; {r['images']} images)",
        highlight=False,
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="data_check")
def _data_check(cfg: DictConfig) -> None:
    from cnn_train.analysis.datacheck import check_dataset, summary_table
    from cnn_train.data.labels import check_folds
    from cnn_train.data.table import LabelFile

    try:
        check_declared_keys(cfg)
        d = cfg.data
        report = check_dataset(d.name, d.root, d.val_split, cfg.seed, cfg.near_threshold, cfg.near_max_diff,
                               table=LabelFile.from_config(d), folds=check_folds(d.folds, d.fold))  # fmt: skip
        if cfg.output:
            files.write_json(cfg.output, report)
    except USER_ERRORS as e:
        fail(user_error(e))
        return
    Console(width=None if sys.stdout.isatty() else 120).print(summary_table(report))
    if cfg.output:
        console.print(f"wrote every group and path to {cfg.output}", highlight=False)


def summary_tables(name: str, report: dict[str, Any]) -> Group:
    """The layer table, then the conv / fully connected split."""
    layers = Table(title=f"{name}, input {'×'.join(map(str, report['input']))}", show_lines=False)
    for col in ("layer", "type", "output shape", "params", "FLOPs", "activations"):
        layers.add_column(col, justify="left" if col in ("layer", "type", "output shape") else "right")
    for lay in report["layers"]:
        shape = "×".join(map(str, lay["output_shape"]))
        layers.add_row(
            lay["name"],
            lay["type"],
            shape,
            f"{lay['params']:,}",
            _si(lay["flops"]),
            _si(lay["activation_bytes"], "B"),
        )
    layers.add_row(
        "total", "", "", f"{report['total_params']:,}", _si(report["total_flops"]),
        _si(report["total_activation_bytes"], "B"), style="bold",
    )  # fmt: skip
    split = Table(title="where parameters and compute sit")
    for col in ("layers", "params", "share of params", "FLOPs", "share of FLOPs"):
        split.add_column(col, justify="right")
    for kind, label in (("conv", "convolutions"), ("fc", "fully connected")):
        d = report["split"][kind]
        split.add_row(
            label, f"{d['params']:,}", f"{d['params_share']:.1%}", _si(d["flops"]), f"{d['flops_share']:.1%}"
        )
    return Group(layers, split)


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".strip()


_SUMMARY_JSON_TO_STDOUT = False


def summary_main() -> None:
    """`cnn-summary model=... data=... [--json]`: the model's anatomy."""
    global _SUMMARY_JSON_TO_STDOUT
    if "--json" in sys.argv:
        sys.argv.remove("--json")
        _SUMMARY_JSON_TO_STDOUT = True
    run_app(_summary)


def eval_main() -> None:
    """`cnn-eval ckpt=... [data=...]`: evaluate a checkpoint."""
    run_app(_eval)


def export_main() -> None:
    """`cnn-export ckpt=... format=onnx|torchscript`: export a checkpoint and check it."""
    run_app(_export)


def data_main() -> None:
    """`cnn-data data=... [output=report.json]`: check a dataset for imbalance, broken files and duplicates."""
    run_app(_data_check)


def report_main() -> None:
    """`cnn-report DIR`: rebuild report.html of a run dir or a sweep dir from the files it holds."""
    from cnn_train.reports.run import build_report

    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        fail("usage: cnn-report RUN_DIR|SWEEP_DIR (rebuilds its report.html)")
    try:
        path = build_report(Path(sys.argv[1]).expanduser())
    except UserError as e:
        fail(str(e))
        return
    console.print(f"wrote {path}", highlight=False)
