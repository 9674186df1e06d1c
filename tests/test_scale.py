"""Beyond one process: torchrun DDP (gloo), an Optuna search, a submitit_local sweep, the logger group."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cnn_train.runtime.errors import Interrupted
from cnn_train.training.engine import NonFiniteLoss
from cnn_train.training.fit import fit
from tests.conftest import cli, make_config, sigterm_after_first_save
from tests.test_train import RUN_FILES, read_metrics

SLICE = [
    "model=lenet", "trainer.max_epochs=1", "trainer.limit_train_batches=40", "trainer.limit_val_batches=8",
    "trainer.limit_test_batches=8", "data.batch_size=64", "optimizer.lr=0.003",
]  # fmt: skip


def torchrun(*args: str, cwd: Path, processes: int) -> subprocess.CompletedProcess:
    """cnn-train through torchrun with `processes` workers, each a process of its own."""
    launch = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", "cnn_train.cli",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*launch, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one(fashion_root: Path, tmp_path: Path) -> None:
    """Two ranks, each taking half of every global batch of 64, train the same network as one process.

    The tolerance: each step's gradient is the mean over the same 64 images in both runs, summed in another
    order (two means of 32 averaged by DDP's all-reduce; kernels blocked for 32 images). In fp32 that moves a
    gradient by about eps·√n relative for a sum of n terms: under 1.3e-5 for the longest one here (conv1's
    weight gradient, 64·28·28 terms; eps = 2⁻²⁴). SGD's step is linear in the gradient and 40 steps of a
    stable run carry that along without blowing it up, so the epoch's mean losses agree far inside 1e-4
    (metrics.csv keeps 5 decimals). A rank reading the wrong half, gradients left unreduced or averaged
    with the wrong scale change the first step itself, and the losses by orders of magnitude more.
    Deterministic: fp32 (not the bf16 `auto` picks on some CPUs), one thread per process, no augmentation.
    """
    fixed = [o for o in SLICE if not o.startswith("optimizer.")]
    fixed += ["optimizer=sgd", "optimizer.lr=0.05", "trainer.precision=32"]
    one, two = tmp_path / "one", tmp_path / "two"
    fit(make_config(*fixed, "trainer.threads=1"), one)  # the reference: one process, this one
    proc = torchrun(*fixed, f"hydra.run.dir={two}", "trainer.threads=1", cwd=tmp_path, processes=2)
    for name in [*RUN_FILES, "curves.png", "samples.png"]:
        assert (two / name).is_file(), name
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert r2["processes"] == 2 and r1["processes"] == 1 and r2["test_acc"] > 0.4  # chance is 0.1
    (m1,), (m2,) = read_metrics(one), read_metrics(two)
    for loss in ("train_loss", "val_loss"):
        assert abs(float(m1[loss]) - float(m2[loss])) <= 1e-4, (loss, m1, m2)
    # 512 test images: a prediction whose two best logits are within rounding of each other may flip.
    assert abs(r1["test_acc"] - r2["test_acc"]) <= 2 / 512 and abs(r1["test_loss"] - r2["test_loss"]) <= 1e-4
    assert proc.stderr.count("best_epoch") == 1  # rank 0 alone reports
    # Resume with another world size: one process continues the two-process run for a second epoch.
    fit(make_config(*fixed, "trainer.max_epochs=2", f"trainer.resume={two / 'last.pt'}"), tmp_path / "more")
    rows = read_metrics(tmp_path / "more")
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0] == m2


def test_batch_must_split_over_processes(fashion_root: Path, tmp_path: Path, monkeypatch) -> None:
    from cnn_train.runtime.errors import UserError
    from cnn_train.runtime.world import World
    from cnn_train.training.session import build

    with pytest.raises(UserError, match="data.batch_size: 65 .* must divide by the 2 processes"):
        build(make_config("model=lenet", "data.batch_size=65"), World(0, 2, 0), torch.device("cpu"))


@pytest.mark.slow
def test_optuna_search_records_a_failed_trial_and_marks_the_best(fashion_root: Path, tmp_path: Path) -> None:
    sweep, extra = tmp_path / "search", tmp_path / "configs" / "hparams_search"
    extra.mkdir(parents=True)
    # The shipped search, with a learning rate that diverges among the choices, so that a trial fails.
    (extra / "diverging.yaml").write_text(
        "# @package _global_\ndefaults:\n  - optuna\nhydra:\n  sweeper:\n    params:\n"
        "      optimizer.lr: choice(1.0e+8, 0.003)\n"
    )
    proc = cli(
        "cnn-train", "--config-dir", str(tmp_path / "configs"), "hparams_search=diverging", "model=lenet",
        "optimizer=sgd", "trainer.max_epochs=1", "trainer.limit_train_batches=15", "trainer.limit_val_batches=4",
        "trainer.limit_test_batches=2", "hydra.sweeper.n_trials=3", "trainer.seed=1",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert any(r["status"] == "failed" and "loss became" in r["error"] for r in rows), rows
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and [r["best"] for r in rows].count("*") == 1
    best = next(r for r in rows if r["best"] == "*")
    assert float(best["best_val_acc"]) == max(float(r["best_val_acc"]) for r in ok)
    assert "optimizer.lr=0.003" in best["overrides"]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(float(best["best_val_acc"]))
    assert "Failed experiment" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(fashion_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "cluster"
    proc = cli(  # the launcher in this process; submitit starts each job in a process of its own
        "cnn-train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model=lenet",
        "trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "optimizer.lr=0.01,0.003", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert sorted(p.name for p in sweep.glob("*/best.pt")) == ["best.pt", "best.pt"]
    assert list((sweep / ".submitit").rglob("*_result.pkl"))  # each job ran through submitit


def test_a_restarted_job_continues_its_own_unfinished_run(
    fashion_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a requeued cluster job does: same run dir, last.pt there, no results.json yet."""
    over = ["model=lenet", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "data.batch_size=16"]  # fmt: skip
    fit(make_config(*over, "trainer.max_epochs=1"), tmp_path)
    first = read_metrics(tmp_path)
    (tmp_path / "results.json").unlink()  # as if the job was preempted after epoch 1
    with caplog.at_level("INFO", logger="cnn_train"):
        results = fit(make_config(*over, "trainer.max_epochs=2"), tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2"] and results["epochs"] == 2
    # Epoch 1 is carried over from last.pt, not trained again: its row is the first run's, wall seconds and
    # images/s included (a second training of it, however deterministic, takes its own time).
    assert rows[0] == first[0]
    assert f"resumed from {tmp_path / 'last.pt'} at epoch 2" in caplog.text


def test_tensorboard_logger_is_read_back(fashion_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(make_config(*SLICE[:1], "logger=tensorboard", "trainer.max_epochs=2", "trainer.limit_train_batches=5",
                    "trainer.limit_val_batches=2", "trainer.limit_test_batches=1"), tmp_path)  # fmt: skip
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    val = events.Scalars("val_acc")
    rows = read_metrics(tmp_path)
    assert [e.step for e in val] == [1, 2]
    assert [round(e.value, 4) for e in val] == [round(float(r["val_acc"]), 4) for r in rows]
    assert (tmp_path / "metrics.csv").is_file()


@pytest.mark.slow
def test_mlflow_logger_is_read_back(fashion_root: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    fit(make_config("model=lenet", "logger=mlflow", f"logger.tracking_uri={uri}", "trainer.max_epochs=2",
                    "trainer.limit_train_batches=5", "trainer.limit_val_batches=2",
                    "trainer.limit_test_batches=1", "optimizer.lr=0.002"), run_dir)  # fmt: skip
    client = MlflowClient(tracking_uri=uri)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.lr"] == "0.002" and run.data.params["model.name"] == "lenet"
    history = client.get_metric_history(run_id, "val_acc")
    rows = read_metrics(run_dir)
    assert [(m.step, round(m.value, 5)) for m in history] == [
        (int(r["epoch"]), float(r["val_acc"])) for r in rows
    ]
    assert [a.path for a in client.list_artifacts(run_id)] == ["best.pt"]
    assert list((tmp_path / "store" / "mlartifacts").rglob("best.pt"))  # beside the database, not in the cwd
    # Resumed into another run dir for a third epoch: the same MLflow run goes on, with one more val_acc.
    fit(make_config("model=lenet", "logger=mlflow", f"logger.tracking_uri={uri}", "trainer.max_epochs=3",
                    "trainer.limit_train_batches=5", "trainer.limit_val_batches=2", "trainer.limit_test_batches=1",
                    "optimizer.lr=0.002", f"trainer.resume={run_dir / 'last.pt'}"), tmp_path / "more")  # fmt: skip
    assert (tmp_path / "more" / "mlflow_run_id").read_text().strip() == run_id
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2, 3]
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.slow
def test_trackers_are_closed_as_the_run_ended(fashion_root: Path, tmp_path: Path) -> None:
    """NaN → MLflow FAILED, SIGTERM → KILLED; TensorBoard has its events and the status on disk either way."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    base = ["model=lenet", "trainer.limit_val_batches=2", "trainer.limit_test_batches=1"]
    diverge = ["trainer.max_epochs=3", "trainer.limit_train_batches=10", "scheduler=step", "scheduler.step_epochs=1",
               "scheduler.gamma=1e30"]  # fmt: skip
    for logger in (["logger=mlflow", f"logger.tracking_uri={uri}"], ["logger=tensorboard"]):
        with pytest.raises(NonFiniteLoss, match="at epoch 2"):
            fit(make_config(*base, *diverge, *logger), tmp_path / f"nan_{logger[0][7:]}")
    stop = ["trainer.max_epochs=1", "trainer.limit_train_batches=30", "trainer.checkpoint_every_n_steps=5"]
    watcher = sigterm_after_first_save(tmp_path / "term")
    with pytest.raises(Interrupted):
        fit(make_config(*base, *stop, "logger=mlflow", f"logger.tracking_uri={uri}"), tmp_path / "term")
    watcher.join()
    client = MlflowClient(tracking_uri=uri)
    status = {d: client.get_run((tmp_path / d / "mlflow_run_id").read_text().strip()).info.status
              for d in ("nan_mlflow", "term")}  # fmt: skip
    assert status == {"nan_mlflow": "FAILED", "term": "KILLED"}
    events = EventAccumulator(str(tmp_path / "nan_tensorboard" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_acc")] == [1]
    assert events.Tensors("status/text_summary")[0].tensor_proto.string_val == [b"FAILED"]
