"""The lr range test on real Fashion-MNIST: its curve, its stop at divergence, and cnn-train at its suggestion."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnn_train.training.fit import fit
from tests.conftest import cli, make_config

# LeNet and Adam on 100 batches of 64 real images, 12 steps a decade: the loss falls from ln 10 around lr 1e-2,
# then (Adam's steps grow with the lr) blows up before the end lr 1e4.
RANGE = [
    "model=lenet",
    "data.batch_size=64",
    "trainer.limit_train_batches=100",
    "trainer.lr_find_range=[1e-4,1e4]",
    "trainer.device=cpu",
    "trainer.threads=1",  # two threads on a shared 2-core machine: 10× slower steps
]


def config(root: Path, *overrides: str) -> Any:
    return make_config(*RANGE, f"data.root={root}", *overrides)


@pytest.fixture(scope="module")
def found(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """cnn-lrfind as a user runs it: the run dir's lr_find.json, the dir, and what it printed."""
    cwd = tmp_path_factory.mktemp("lrfind")
    proc = cli("cnn-lrfind", *RANGE, f"data.root={fashion_root}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    (path,) = (cwd / "outputs").rglob("lr_find.json")
    return json.loads(path.read_text()), path.parent, proc.stdout


@pytest.mark.slow
def test_curve_has_its_minimum_where_the_loss_is_lowest(found: tuple[dict[str, Any], Path, str]) -> None:
    record, run_dir, printed = found
    lrs, losses, smoothed = (np.array(record[k]) for k in ("lrs", "losses", "smoothed"))
    # Each loss is paired with the lr its step trained at: the exponential ramp from 1e-7 towards 10.
    assert lrs[0] == pytest.approx(1e-4)
    assert np.allclose(np.diff(np.log(lrs)), math.log(1e4 / 1e-4) / 99)
    average, ema = 0.0, []
    for i, loss in enumerate(losses):
        average = 0.98 * average + 0.02 * loss
        ema.append(average / (1 - 0.98 ** (i + 1)))
    assert np.allclose(smoothed, ema)
    assert losses[0] == pytest.approx(math.log(10), abs=0.15)  # an untrained 10-class net
    lowest = int(np.argmin(smoothed))
    assert record["min_loss_lr"] == pytest.approx(lrs[lowest])
    # The ten steps up to the curve's minimum trained: their losses are far below the first ten and the last.
    near = losses[lowest - 9 : lowest + 1].mean()
    assert near < losses[:10].mean() - 0.5 and near < losses[-5:].mean()
    # The huge end lr ended it early, at the first step whose smoothed loss passed 4× the minimum.
    assert record["diverged"] and len(lrs) < 90
    assert smoothed[-1] > 4 * smoothed.min() and (smoothed[:-1] <= 4 * smoothed.min()).all()
    # It suggests a tenth of the minimum's lr: inside the tested range, below the divergence.
    assert record["suggested_lr"] == pytest.approx(lrs[lowest] / 10)
    assert lrs[0] < record["suggested_lr"] < record["min_loss_lr"] < record["stopped_at_lr"] == lrs[-1]
    assert f"suggested_lr: {record['suggested_lr']:.3g}" in printed
    assert (run_dir / "lr_find.png").read_bytes().startswith(b"\x89PNG")


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_cnn_train_with_lr_find_trains_afresh_at_the_suggestion(fashion_root: Path, tmp_path: Path) -> None:
    short = [
        "scheduler=none",  # metrics.csv's lr is then the lr of every step
        "trainer.limit_train_batches=30",
        "trainer.lr_find_steps=30",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
    ]
    results = fit(config(fashion_root, *short, "trainer.lr_find=true"), tmp_path / "tuned")
    suggested = json.loads((tmp_path / "tuned" / "lr_find.json").read_text())["suggested_lr"]
    (row,) = metrics(tmp_path / "tuned")
    assert float(row["lr"]) == pytest.approx(suggested)  # the lr the optimizer really used
    assert results["lr_find"]["suggested_lr"] == pytest.approx(suggested)
    # The same run told that lr: identical, so none of the finder's steps reached the trained weights.
    fit(config(fashion_root, *short, f"optimizer.lr={suggested!r}"), tmp_path / "told")
    (told,) = metrics(tmp_path / "told")
    assert (told["train_loss"], told["val_loss"]) == (row["train_loss"], row["val_loss"])


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_range_test_under_accumulation_steps_once_per_group(
    fashion_root: Path, tmp_path: Path, precision: str
) -> None:
    """4 accumulated batches of 64 make the steps one batch of 256 makes: the same lrs and, while the weights
    have barely moved, the same losses; a quarter of the steps."""
    from cnn_train.training import lrfind

    # 12 steps from 1e-5 to 0.1: the lrs grow 2.3× a step and add up to 1e-2 after 8 of them.
    p, low = f"trainer.precision={precision}", "trainer.lr_find_range=[1e-5,1e-1]"
    grouped = lrfind.find(
        config(fashion_root, "trainer.accumulate_grad_batches=4", "trainer.limit_train_batches=48", low, p),
        tmp_path / "grouped",
    )
    whole = lrfind.find(
        config(fashion_root, "data.batch_size=256", "trainer.limit_train_batches=12", low, p),
        tmp_path / "whole",
    )
    assert grouped["steps"] == whole["steps"] == 12
    assert grouped["lrs"] == whole["lrs"] and len(grouped["lrs"]) == 12  # no divergence below lr 0.1
    # The same images in the same order (one shuffle, consecutive slices): the losses agree up to float
    # summation order (other batch shapes pick other kernel blockings) while the weights have barely moved.
    # Compared over the steps before the lrs tried so far add up to 1e-2; past that the lr amplifies the
    # rounding step by step (LeNet's loss falls 20% in one step at lr 0.02, then diverges) and the curves
    # part as two chaotic trajectories do (with the module's range to 1e4: from lr 0.02 on).
    calm = int(np.searchsorted(np.cumsum(grouped["lrs"]), 1e-2))
    # fp32: a logit sums at most 400 products (LeNet's widest layer), each rounding by 2^-24: < 3e-5 relative.
    # bf16: the layers' fp32 sums round to bf16 (2^-8); only sums that straddle a rounding boundary differ
    # (a fraction ~400·2^-24/2^-8 ≈ 6e-3 of them, by one bf16 ulp each), so the mean loss moves < 1e-4;
    # an order of magnitude of margin each.
    rtol = 1e-4 if precision == "32" else 1e-3
    assert calm >= 5
    assert np.allclose(grouped["losses"][:calm], whole["losses"][:calm], rtol=rtol, atol=0)


def test_resumed_run_keeps_the_lr_its_range_test_found(fashion_root: Path, tmp_path: Path) -> None:
    short = [
        "scheduler=none",
        "trainer.limit_train_batches=30",
        "trainer.lr_find_steps=30",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.lr_find=true",
    ]
    first = fit(config(fashion_root, *short, "trainer.max_epochs=1"), tmp_path / "first")
    found = first["lr_find"]["suggested_lr"]
    # A range the first lr lies outside of: a second range test would move the lr into it.
    again = config(fashion_root, *short, "trainer.max_epochs=2", "trainer.lr_find_range=[1e-6,1e-5]",
                   f"trainer.resume={tmp_path / 'first' / 'last.pt'}")  # fmt: skip
    assert not 1e-6 <= found <= 1e-5
    results = fit(again, tmp_path / "resumed")
    rows = metrics(tmp_path / "resumed")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["lr"]) == pytest.approx(found) and results["lr_find"]["suggested_lr"] == found
    assert (tmp_path / "resumed" / "lr_find.json").read_bytes() == (
        tmp_path / "first" / "lr_find.json"
    ).read_bytes()
