"""Console entry points; the only module that knows Hydra's globals (run dir, run mode).

User errors (`UserError`, and a config Hydra could not compose: a wrong type, an unknown key or choice) become
one line on stderr and exit status 2; programming errors keep their traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from cnn_train import cam, files, lrfind, plots
from cnn_train.config import check_declared_keys, register_schemas, unknown_key
from cnn_train.datacheck import check_dataset, summary_table
from cnn_train.distributed import world_from_env
from cnn_train.errors import UserError
from cnn_train.evaluation import evaluate_checkpoint
from cnn_train.export import export
from cnn_train.hardware import pick_device
from cnn_train.interrupts import Interrupted
from cnn_train.layer_views import save_layer_views, summary_model
from cnn_train.predict import expand_inputs, newest_checkpoint, predict, write_predictions
from cnn_train.summary import summarize
from cnn_train.train import check_config, fit

log = logging.getLogger("cnn_train")
console = Console(stderr=True, soft_wrap=True)
register_schemas()  # before any primary YAML names them in its defaults list
# A config value the user left unset (`???`) or pointed at nothing (`${nope}`) raises when it is read.
VALUE_ERRORS = (MissingMandatoryValue, InterpolationResolutionError)
USER_ERRORS = (UserError, *VALUE_ERRORS)
# What Hydra raises (with HYDRA_FULL_ERROR=1, instead of printing it) for a config it could not compose.
CONFIG_ERRORS = (ConfigCompositionException, OverrideParseException, yaml.YAMLError, *VALUE_ERRORS)


def _config_dir() -> str:
    packaged = Path(__file__).parent / "configs"  # a wheel carries the configs inside the package
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _run(app: Callable[[], Any]) -> None:
    """Run a @hydra.main app; a config the user got wrong ends as one line naming the key, exit status 2."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own multi-line report
    try:
        app()
    except CONFIG_ERRORS as e:
        _fail(config_error(e))


def user_error(e: Exception) -> str:
    """The one line for a user error raised while a command runs."""
    return str(e) if isinstance(e, UserError) else config_error(e)


def config_error(e: Exception) -> str:
    """`<full key>: <short reason>` for a config that did not compose or left a `???` unset."""
    if isinstance(e, OverrideParseException):
        reason = str(e).splitlines()[0]
        reason = "not valid override syntax" if e.override in reason else reason
        return f"{e.override}: {reason}; see https://hydra.cc/docs/advanced/override_grammar/basic"
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, choice = e.missing_cfg_file.rpartition("/")
        return f"{group}: no choice {choice!r} (choose {', '.join(e.options)})"
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"{e.problem_mark.name}:{e.problem_mark.line + 1}: {e.problem}"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    source = re.match(r"In '([^']+)': ", first)  # Hydra names the config file a merge failed in
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__ or e.__context__
    if not isinstance(cause, OmegaConfBaseException) or not cause.full_key:
        taken = re.search(r"An item is already at '([^']+)'", first)  # +key=value for a key the config has
        return f"{taken.group(1)}: already in the config; set it without the +" if taken else first
    return _omegaconf_error(cause) + (f" (in {source.group(1)}.yaml)" if source else "")


def _omegaconf_error(e: OmegaConfBaseException) -> str:
    key, parent = e.full_key, e.parent_node
    if isinstance(e, (ConfigAttributeError, ConfigKeyError)) and isinstance(parent, DictConfig):
        schema = OmegaConf.get_type(parent)
        if dataclasses.is_dataclass(schema):
            return unknown_key(key, [f.name for f in dataclasses.fields(schema)])
        return f"{unknown_key(key, [str(k) for k in parent])}; +{key}=... adds it"
    if isinstance(e, MissingMandatoryValue):
        return f"{key}: no value given (???); set it, e.g. {key}=..."
    reason = (getattr(e, "msg", None) or str(e)).splitlines()[0]
    return f"{key}: {reason[:1].lower()}{reason[1:]}"


def _checkpoint_arg(cfg: DictConfig) -> Path:
    """`ckpt=` as given, else the newest best.pt under output_root (and say which)."""
    if cfg.ckpt:
        return Path(cfg.ckpt).expanduser()
    ckpt = newest_checkpoint(cfg.output_root)
    console.print(f"using the newest checkpoint: {ckpt}", highlight=False)
    return ckpt


def _results_table(results: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"{results['model']} on {results['data']}", show_header=False)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    for key in ("best_val_acc", "best_epoch", "test_acc", "test_loss", "parameters", "wall_seconds"):
        table.add_row(key, fmt(results[key]))
    table.add_row("run dir", str(run_dir))
    return table


def train_task(cfg: DictConfig) -> float | None:
    """One training job: what Hydra's launchers run (and pickle by name, for submitit) for every job."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    main = world_from_env().is_main
    if not main:  # under torchrun rank 0 speaks for the run
        log.setLevel(logging.WARNING)
    try:
        check_declared_keys(cfg)
        log.debug("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        results = fit(cfg, run_dir)
    except Interrupted as e:
        keep = [o for o in hc.overrides.task if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
        again = " ".join(["cnn-train", *keep, f"hydra.run.dir={e.last.parent}", "trainer.resume=auto"])
        if main:
            console.print(f"stopped by {e}\nresume with: {again}", highlight=False)
        sys.exit(128 + e.signum)
    except USER_ERRORS as e:
        if hc.mode == RunMode.MULTIRUN:  # one bad job must not end the sweep: it is recorded as failed
            log.error("job failed: %s", user_error(e))
            files.write_text(run_dir / "error.txt", f"{user_error(e)}\n")
            return None  # not a number: an Optuna sweeper records the trial as failed and goes on
        _fail(user_error(e))
        return None
    if main:
        console.print(_results_table(results, run_dir))
    return results[cfg.optimized_metric]  # check_config vouched for the key


_train = hydra.main(version_base="1.3", config_path=_config_dir(), config_name="train")(train_task)


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="train")
def _lrfind(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        check_declared_keys(cfg)
        check_config(cfg)
        found = lrfind.find(cfg, run_dir)
    except USER_ERRORS as e:
        _fail(user_error(e))
        return
    print(f"suggested_lr: {found['suggested_lr']:.3g}")
    console.print(f"wrote lr_find.json and lr_find.png to {run_dir}", highlight=False)


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="predict")
def _predict(cfg: DictConfig) -> None:
    try:
        check_declared_keys(cfg)
        if OmegaConf.is_missing(cfg, "img"):
            raise UserError("img: give an image file, a folder or a glob, e.g. img=photo.jpg")
        ckpt = _checkpoint_arg(cfg)
        paths = expand_inputs(str(cfg.img))
        rows, failed = predict(ckpt, paths, cfg.topk, pick_device(cfg.device), cfg.batch_size)
        if cfg.output:
            write_predictions(cfg.output, rows)
        if cfg.save_annotated:
            folder = (
                Path(f"{Path(cfg.output).with_suffix('')}_annotated") if cfg.output else Path("annotated")
            )
            for i, row in enumerate(rows):
                name, prob = row.topk[0]
                target = (
                    folder / f"{i:04d}_{Path(row.path).stem}.png"
                )  # numbered: names repeat across folders
                plots.plot_annotated(row.path, f"class: {name} prob: {prob:.3f}", target)
            console.print(f"wrote {len(rows)} annotated images to {folder}", highlight=False)
        if cfg.cam:
            folder = cam.cam_dir(cfg.output)
            cam.save_prediction_cams(ckpt, rows, folder, pick_device(cfg.device), cfg.batch_size)
            console.print(f"wrote {len(rows)} Grad-CAM images to {folder}", highlight=False)
    except USER_ERRORS as e:
        _fail(user_error(e))
        return
    out = Console()
    for row in rows:
        ranked = "  ".join(f"{name}: {prob:.3f}" for name, prob in row.topk)
        out.print(f"{row.path}  {ranked}", highlight=False, soft_wrap=True)
    for _path, reason in failed:
        console.print(f"[red]failed:[/] {reason}", highlight=False)
    if cfg.output:
        console.print(f"wrote {len(rows)} rows to {cfg.output}", highlight=False)
    if failed:
        sys.exit(1)


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="summary")
def _summary(cfg: DictConfig) -> None:
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
        _fail(user_error(e))
        return
    if _SUMMARY_JSON_TO_STDOUT:
        print(json.dumps({"model": name, **report}, indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 140).print(summary_tables(name, report))


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="eval")
def _eval(cfg: DictConfig) -> None:
    try:
        check_declared_keys(cfg)
        if cfg.split not in ("test", "val"):
            raise UserError(f"split: {cfg.split!r} is not test or val")
        ckpt = _checkpoint_arg(cfg)
        out_dir = Path(cfg.output_dir) if cfg.output_dir else ckpt.parent / "eval"
        data = None  # the checkpoint's own
        if cfg.data is not None:
            data = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True)
        device = pick_device(cfg.device)
        report = evaluate_checkpoint(
            ckpt, out_dir, data, cfg.split, device, cfg.batch_size, cfg.limit_batches, tta=bool(cfg.tta),
            cam=bool(cfg.cam),
        )  # fmt: skip
    except USER_ERRORS as e:
        _fail(user_error(e))
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


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="export")
def _export(cfg: DictConfig) -> None:
    try:
        check_declared_keys(cfg)
        if not cfg.ckpt:
            raise UserError("ckpt: give the checkpoint to export, e.g. ckpt=outputs/.../best.pt")
        path, diff = export(Path(cfg.ckpt).expanduser(), str(cfg.format), cfg.output, float(cfg.tolerance))
    except USER_ERRORS as e:
        _fail(user_error(e))
        return
    console.print(f"wrote {path}; max |difference| from PyTorch on a real batch: {diff:.2e}", highlight=False)


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="data_check")
def _data_check(cfg: DictConfig) -> None:
    try:
        check_declared_keys(cfg)
        d = cfg.data
        report = check_dataset(d.name, d.root, d.val_split, cfg.seed, cfg.near_threshold, cfg.near_max_diff)
        if cfg.output:
            files.write_json(cfg.output, report)
    except USER_ERRORS as e:
        _fail(user_error(e))
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
    _run(_summary)


def eval_main() -> None:
    """`cnn-eval ckpt=... [data=...]`: evaluate a checkpoint."""
    _run(_eval)


def export_main() -> None:
    """`cnn-export ckpt=... format=onnx|torchscript`: export a checkpoint and check it."""
    _run(_export)


def data_main() -> None:
    """`cnn-data data=... [output=report.json]`: check a dataset for imbalance, broken files and duplicates."""
    _run(_data_check)


def train_main() -> None:
    """`cnn-train`: train one run, or a sweep with -m."""
    _run(_train)


def report_main() -> None:
    """`cnn-report DIR`: rebuild report.html of a run dir or a sweep dir from the files it holds."""
    from cnn_train.report import build_report

    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        _fail("usage: cnn-report RUN_DIR|SWEEP_DIR (rebuilds its report.html)")
    try:
        path = build_report(Path(sys.argv[1]).expanduser())
    except UserError as e:
        _fail(str(e))
        return
    console.print(f"wrote {path}", highlight=False)


def lrfind_main() -> None:
    """`cnn-lrfind` (cnn-train's overrides): the lr range test, lr_find.json/.png and the suggested lr."""
    _run(_lrfind)


def predict_main() -> None:
    """`cnn-predict`: classify images with a checkpoint."""
    _run(_predict)


if __name__ == "__main__":
    # `python -m cnn_train.cli` (what torchrun runs): use the importable module's functions, so that a
    # launcher pickling the task (submitit) refers to cnn_train.cli._train instead of copying __main__.
    from cnn_train import cli

    cli.train_main()
