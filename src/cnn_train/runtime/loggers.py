"""Experiment trackers: every run writes metrics.csv; `logger=tensorboard|mlflow` also sends there.

Each logger gets the resolved config once, every epoch's metrics row, best.pt at the end, and `close(status)`
on every way out (FINISHED, FAILED or KILLED). Only the process that writes files builds one (rundir.RunDir).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from cnn_train.runtime import files
from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")
MULTI_LABEL_METRICS = ("val_map",)  # in the rows of multi-label runs only


def logged(row: dict[str, Any]) -> list[str]:
    """The metrics of an epoch's row that trackers get."""
    return [k for k in (*METRICS, *MULTI_LABEL_METRICS) if k in row]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}: how trackers take a nested config as params."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class CsvLogger:
    """metrics.csv in the run dir, rewritten whole (atomically) after every epoch."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def log_config(self, config: dict[str, Any]) -> None:
        pass  # the run dir already holds it: .hydra/config.yaml and every checkpoint

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        files.write_csv(self.run_dir / "metrics.csv", history)

    def log_best(self, path: Path) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class TensorBoardLogger(CsvLogger):
    """Scalars per epoch and the config as text, in <run dir>/tensorboard (`tensorboard --logdir outputs`)."""

    def __init__(self, run_dir: str | Path, subdir: str = "tensorboard") -> None:
        super().__init__(run_dir)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise UserError("logger=tensorboard: install it with pip install 'cnn-train[loggers]'") from e
        self.writer = SummaryWriter(log_dir=str(self.run_dir / subdir))

    def log_config(self, config: dict[str, Any]) -> None:
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flatten(config).items()))

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        super().log_epoch(history)
        row = history[-1]
        for key in logged(row):
            self.writer.add_scalar(key, row[key], global_step=row["epoch"])
        self.writer.flush()

    def log_best(self, path: Path) -> None:
        self.writer.add_text("best_checkpoint", str(path.resolve()))

    def close(self, status: str = "FINISHED") -> None:
        self.writer.add_text("status", status)
        self.writer.close()  # flushes the event file


class MlflowLogger(CsvLogger):
    """One MLflow run per training run: params, per-epoch metrics, best.pt as an artifact.

    The store is a local SQLite file by default; `logger.tracking_uri` points elsewhere. A resumed run
    continues the same MLflow run (its id is kept in <run dir>/mlflow_run_id).
    """

    def __init__(self, run_dir: str | Path, tracking_uri: str, experiment: str = "cnn-train") -> None:
        super().__init__(run_dir)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise UserError("logger=mlflow: install it with pip install 'cnn-train[loggers]'") from e
        artifacts = None
        if tracking_uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working dir
            store = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve().parent
            store.mkdir(parents=True, exist_ok=True)
            artifacts = (store / "mlartifacts").as_uri()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment, artifacts)
        id_file = self.run_dir / "mlflow_run_id"
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
        else:
            self.run_id = self.client.create_run(exp_id, run_name=self.run_dir.name).info.run_id
            files.write_text(id_file, self.run_id + "\n")
        log.info("mlflow: run %s in %s", self.run_id, tracking_uri)

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items() if k not in existing]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        super().log_epoch(history)
        row = history[-1]
        stamp = int(1000 * time.time())
        metrics = [Metric(k, float(row[k]), stamp, int(row["epoch"])) for k in logged(row)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_best(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
