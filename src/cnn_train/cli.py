"""Console entry points; the only module that knows Hydra's globals (run dir, run mode).

User errors (`UserError`) become one line on stderr and exit status 2; programming errors keep their
traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from cnn_train import files
from cnn_train.engine import pick_device
from cnn_train.errors import UserError
from cnn_train.interrupts import Interrupted
from cnn_train.predict import expand_inputs, newest_checkpoint, predict, write_predictions
from cnn_train.train import fit

log = logging.getLogger("cnn_train")
console = Console(stderr=True, soft_wrap=True)


def _config_dir() -> str:
    packaged = Path(__file__).parent / "configs"  # a wheel carries the configs inside the package
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _results_table(results: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"{results['model']} on {results['data']}", show_header=False)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    for key in ("best_val_acc", "best_epoch", "test_acc", "test_loss", "parameters", "wall_seconds"):
        table.add_row(key, fmt(results[key]))
    table.add_row("run dir", str(run_dir))
    return table


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="train")
def _train(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        results = fit(cfg, run_dir)
    except Interrupted as e:
        keep = [o for o in hc.overrides.task if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
        again = " ".join(["cnn-train", *keep, f"hydra.run.dir={run_dir}", "trainer.resume=auto"])
        console.print(f"stopped by {e}\nresume with: {again}", highlight=False)
        sys.exit(128 + e.signum)
    except UserError as e:
        if hc.mode == RunMode.MULTIRUN:  # one bad job must not end the sweep
            log.error("job failed: %s", e)
            files.write_text(run_dir / "error.txt", f"{e}\n")
            return None
        _fail(str(e))
        return None
    console.print(_results_table(results, run_dir))
    return results["best_val_acc"]


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="predict")
def _predict(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "img"):
            raise UserError("img: give an image file, a folder or a glob, e.g. img=photo.jpg")
        ckpt = Path(cfg.ckpt).expanduser() if cfg.ckpt else newest_checkpoint(cfg.output_root)
        if not cfg.ckpt:
            console.print(f"using the newest checkpoint: {ckpt}", highlight=False)
        paths = expand_inputs(str(cfg.img))
        rows, failed = predict(ckpt, paths, cfg.topk, pick_device(cfg.device), cfg.batch_size)
        if cfg.output:
            write_predictions(cfg.output, rows)
    except UserError as e:
        _fail(str(e))
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


def train_main() -> None:
    """`cnn-train`: train one run, or a sweep with -m."""
    _train()


def predict_main() -> None:
    """`cnn-predict`: classify images with a checkpoint."""
    _predict()


if __name__ == "__main__":
    train_main()
