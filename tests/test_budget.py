"""trainer.budget on real tiny runs: the schedule ends on time, and the recorded plan replays and resumes exactly."""

from __future__ import annotations

import csv
import html
import json
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cnn_train.inference import checkpoint
from cnn_train.reports.run import write_run_report
from cnn_train.runtime.errors import Interrupted, UserError
from cnn_train.training.fit import fit
from tests.conftest import make_config

# LeNet, one-cycle Adam peaking at 0.002: its last step's lr is 0.002 / 25 / 1e4 (div_factor, final_div_factor).
LR, END_LR = 0.002, 0.002 / 25 / 1e4
# max_epochs bounds the plan: far more of these tiny epochs than fit in the budget on any machine (a quiet
# core runs one in ~0.15 s), so every run here re-plans after its first epoch.
MAX_EPOCHS = 400
RUN = [
    "model=lenet", "scheduler=onecycle", f"optimizer.lr={LR}", f"trainer.max_epochs={MAX_EPOCHS}",
    "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=4",
    "data.batch_size=32", "trainer.deterministic=true",
]  # fmt: skip
BUDGET = 6.0  # seconds: a few dozen of these tiny epochs on a quiet core (the plan needs two)
TIMING = {"seconds", "images_per_s"}  # wall-clock columns; every other column must match exactly


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def replayed(ran: dict[str, Any], precision: str, run_dir: Path) -> dict[str, Any]:
    """The same command with results.json's replay overrides: no budget, nothing measured."""
    return fit(make_config(*RUN, f"trainer.precision={precision}", *shlex.split(ran["replay"])), run_dir)


@pytest.fixture(scope="module", params=["32", "bf16"])
def budgeted(
    request: pytest.FixtureRequest, fashion_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, dict[str, Any]]:
    """One budgeted run per precision, read by the tests below: (precision, run dir, results)."""
    run_dir = tmp_path_factory.mktemp(f"budget{request.param}")
    ran = fit(make_config(*RUN, f"trainer.precision={request.param}", f"trainer.budget={BUDGET}s"), run_dir)
    return request.param, run_dir, ran


@pytest.mark.slow
def test_budget_ends_within_an_epoch_on_the_schedules_last_lr(
    budgeted: tuple[str, Path, dict[str, Any]],
) -> None:
    _, run_dir, ran = budgeted
    b = ran["budget"]
    assert 2 <= b["planned_epochs"] < MAX_EPOCHS and ran["epochs_run"] == ran["epochs"] == b["planned_epochs"]
    assert ran["stop_reason"] == "finished" and b["plan"][0] == [0, MAX_EPOCHS]
    assert b["last_lr"] == pytest.approx(END_LR, rel=1e-9)  # annealed at the plan's end, not at max_epochs'
    assert json.loads((run_dir / "results.json").read_text())["replay"] == ran["replay"]
    overview = html.unescape(write_run_report(run_dir).read_text())
    assert f"{b['planned_epochs']} planned epochs at {b['seconds_per_epoch']} s each" in overview
    assert ran["replay"] in overview
    # Against the run's own whole-epoch time (training, validation, checkpoints), measured inside the run.
    per = b["seconds_per_epoch"]
    least = b["startup_seconds"] + 2 * per + b["test_seconds_estimate"]  # a plan runs two epochs at least
    if least > BUDGET:
        pytest.skip(f"two epochs of this tiny run took longer than its {BUDGET} s budget here: {b}")
    assert abs(ran["wall_seconds"] - BUDGET) <= per, b


@pytest.mark.slow
def test_replayed_plan_without_budget_gives_identical_metrics(
    budgeted: tuple[str, Path, dict[str, Any]], tmp_path: Path
) -> None:
    precision, run_dir, ran = budgeted
    again = replayed(ran, precision, tmp_path)
    assert again["budget"] is None and again["epochs_run"] == ran["epochs_run"]
    assert metrics(tmp_path) == metrics(run_dir)
    assert again["test_acc"] == ran["test_acc"] and again["test_loss"] == ran["test_loss"]


def sigterm_inside_epoch(run_dir: Path, n: int) -> threading.Thread:
    """SIGTERM this process at the first mid-epoch last.pt after `n` epochs (checkpoint_every_n_steps=1)."""

    def rows() -> int:
        path = run_dir / "metrics.csv"
        return len(path.read_text().splitlines()) - 1 if path.is_file() else 0

    def watch() -> None:
        deadline = time.monotonic() + 300
        while rows() < n and time.monotonic() < deadline:
            time.sleep(0.002)
        saved = (run_dir / "last.pt").stat().st_mtime_ns
        while (run_dir / "last.pt").stat().st_mtime_ns == saved and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_resume_mid_plan_continues_it_exactly(fashion_root: Path, tmp_path: Path) -> None:
    over = [*RUN, "trainer.precision=bf16", "trainer.checkpoint_every_n_steps=1"]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    sigterm_inside_epoch(cut, 1)
    with pytest.raises(Interrupted):
        fit(make_config(*over, f"trainer.budget={BUDGET}s"), cut)
    saved = checkpoint.load(cut / "last.pt")
    assert (
        saved["partial"] is not None and len(saved["plan"]["changes"]) >= 2
    )  # stopped inside a re-planned run
    ran = fit(make_config(*over, f"trainer.budget={BUDGET}s"), cut)  # its own unfinished last.pt: resumes
    assert ran["budget"]["plan"][: len(saved["plan"]["changes"])] == saved["plan"]["changes"]
    assert ran["budget"]["last_lr"] == pytest.approx(END_LR, rel=1e-9)
    replayed(ran, "bf16", whole)
    assert metrics(cut) == metrics(whole)


def test_budget_and_plan_values_fail_before_work(fashion_root: Path, tmp_path: Path) -> None:
    for override, message in [
        ("trainer.budget=soon", "trainer.budget: 'soon' is not a duration"),
        ("trainer.budget=40m trainer.max_time=30m", "trainer.budget: 40m is longer than trainer.max_time"),
        ("trainer.budget=10m trainer.plan=[[0,5]]", "trainer.plan: replays a budgeted run's plan"),
        ("trainer.plan=[[1,5]]", r"trainer.plan: \[\[1, 5\]\] is not"),
        ("trainer.plan=[[0,5],[6,6]]", r"trainer.plan: \[\[0, 5\], \[6, 6\]\] is not"),
    ]:
        with pytest.raises(UserError, match=message):
            fit(make_config(*RUN, *override.split()), tmp_path)
    assert not (tmp_path / "best.pt").exists()
