"""cnn-train and cnn-lrfind: one training run (or a sweep with -m), and the lr range test before one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from cnn_train.cli.common import USER_ERRORS, config_dir, console, fail, run_app, user_error
from cnn_train.config import check_declared_keys
from cnn_train.runtime import files
from cnn_train.runtime.errors import Interrupted
from cnn_train.runtime.world import world_from_env

log = logging.getLogger("cnn_train")


def _results_table(results: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"{results['model']} on {results['data']}", show_header=False)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    shown = ["best_val_acc", "best_epoch", "test_acc", "test_loss", "parameters", "wall_seconds"]
    if results.get("multi_label"):  # its accuracies are exact-match ratios
        shown[1:1] = ["best_val_map"]
        shown[4:4] = ["test_map", "test_micro_f1", "test_macro_f1"]
    for key in shown:
        table.add_row(key, fmt(results[key]))
    table.add_row("run dir", str(run_dir))
    return table


def train_task(cfg: DictConfig) -> float | None:
    """One training job: what Hydra's launchers run (and pickle by name, for submitit) for every job.

    The training code (and torch) is imported only once the config is known to be whole: a mistyped key or
    choice is reported before the seconds those imports take.
    """
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    main = world_from_env().is_main
    if not main:  # under torchrun rank 0 speaks for the run
        log.setLevel(logging.WARNING)
    try:
        check_declared_keys(cfg)
        log.debug("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        from cnn_train.training.fit import fit

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
        fail(user_error(e))
        return None
    if main:
        console.print(_results_table(results, run_dir))
    return results[cfg.optimized_metric]  # check_config vouched for the key


_train = hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")(train_task)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _lrfind(cfg: DictConfig) -> None:
    from cnn_train.training import lrfind
    from cnn_train.training.fit import check_config

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        check_declared_keys(cfg)
        check_config(cfg)
        found = lrfind.find(cfg, run_dir)
    except USER_ERRORS as e:
        fail(user_error(e))
        return
    print(f"suggested_lr: {found['suggested_lr']:.3g}")
    console.print(f"wrote lr_find.json and lr_find.png to {run_dir}", highlight=False)


def main() -> None:
    """`cnn-train`: train one run, or a sweep with -m."""
    run_app(_train)


def lrfind_main() -> None:
    """`cnn-lrfind` (cnn-train's overrides): the lr range test, lr_find.json/.png and the suggested lr."""
    run_app(_lrfind)
