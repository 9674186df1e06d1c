"""The training recipes of the loop: EMA, accumulation, clipping, weight-decay groups, class weights,
early stopping and the time budget — each against what it must change, on real data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_train.inference import checkpoint
from cnn_train.runtime.errors import UserError
from cnn_train.training.engine import EpochProgress, train_one_epoch
from cnn_train.training.fit import fit, validate
from cnn_train.training.session import build
from cnn_train.training.stopping import epochs_without_improvement, parse_duration
from tests.conftest import make_config

TINY = [
    "model=lenet", "data.batch_size=32", "trainer.limit_val_batches=4", "trainer.limit_test_batches=4",
    "trainer.precision=32", "trainer.compile=false",
]  # fmt: skip


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.numerics
def test_ema_weights_are_validated_saved_as_best_and_kept_for_resume(
    fashion_root: Path, tmp_path: Path
) -> None:
    ran = fit(make_config(*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=12",
                          "trainer.ema_decay=0.9", "optimizer.lr=0.003"), tmp_path)  # fmt: skip
    best, last = checkpoint.load(tmp_path / "best.pt"), checkpoint.load(tmp_path / "last.pt")
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert int(last["ema"]["n_averaged"]) == 12  # one update per optimizer step
    for key in last["state_dict"]:
        assert torch.equal(best["state_dict"][key], averaged[key]), key  # best.pt holds the average ...
    w = next(iter(last["state_dict"]))
    assert not torch.allclose(averaged[w], last["state_dict"][w])  # ... which is not the raw weights
    assert ran["ema_decay"] == 0.9
    val = build(make_config(*TINY, f"model.weights={tmp_path / 'best.pt'}"))  # the EMA weights, validated
    assert validate(val)["acc"] == ran["best_val_acc"]


@pytest.mark.numerics
def test_accumulating_two_batches_steps_like_one_batch_twice_the_size(fashion_root: Path) -> None:
    """LeNet has no BatchNorm and no dropout: 2 × 32 accumulated is the 64-image step, batch for batch."""

    def trained(*over: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)  # the same initial weights each time
        s = build(make_config(*TINY, "trainer.max_epochs=1", "optimizer=sgd", "optimizer.lr=0.05", *over))
        train_one_epoch(s.step, s.train_batches.epoch(), EpochProgress(1), total_steps=len(s.train_batches))
        assert s.schedule.steps_done == 4
        return s.model.state_dict()

    accumulated = trained("trainer.limit_train_batches=8", "trainer.accumulate_grad_batches=2")
    large = trained("trainer.limit_train_batches=4", "data.batch_size=64")
    single = trained("trainer.limit_train_batches=4")  # 4 steps of 32: not the same weights
    for key, value in large.items():
        torch.testing.assert_close(accumulated[key], value, rtol=1e-4, atol=1e-6)
    first = next(iter(large))
    assert not torch.allclose(single[first], large[first], rtol=1e-3)


@pytest.mark.numerics
def test_clipping_bounds_the_step_and_norms_and_biases_get_no_weight_decay(fashion_root: Path) -> None:
    def one_step(*over: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], object]:
        torch.manual_seed(0)
        s = build(make_config(*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "optimizer=sgd",
                              "optimizer.lr=1.0", "optimizer.momentum=0", "scheduler=none", *over))  # fmt: skip
        before = {k: v.clone() for k, v in s.model.state_dict().items()}
        train_one_epoch(s.step, s.train_batches.epoch(), EpochProgress(1), total_steps=1)
        return before, s.model.state_dict(), s

    before, after, _ = one_step("trainer.grad_clip_norm=0.001", "optimizer.weight_decay=0")
    moved = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before))
    assert moved == pytest.approx(0.001, rel=1e-3)  # lr 1 × the clipped gradient norm
    before, after, _ = one_step()
    assert torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before)) > 0.01

    # A zero gradient and a huge decay: only the weight matrices and kernels shrink.
    before, after, s = one_step(
        "optimizer.weight_decay=0.5", "trainer.limit_train_batches=1", "optimizer.lr=0"
    )
    decayed = {id(p) for g in s.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in s.model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name
    _, _, s = one_step("optimizer.weight_decay=0.5", "trainer.decay_norm_and_bias=true")
    assert [g["weight_decay"] for g in s.optimizer.param_groups] == [0.5]


def test_balanced_class_weights_are_inverse_frequencies(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, counts in (("train", (6, 3, 1)), ("val", (1, 1, 1))):
        for name, n in zip(("a", "b", "c"), counts, strict=True):
            (tmp_path / split / name).mkdir(parents=True)
            for j in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / split / name / f"{j}.png"
                )
    over = [
        "data=image_folder",
        f"data.root={tmp_path}",
        "data.image_size=8",
        "model=mlp",
        "data.batch_size=2",
    ]
    s = build(make_config(*over, "trainer.class_weights=balanced"))
    expected = torch.tensor([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])  # n / (classes × n_c), by hand
    torch.testing.assert_close(s.step.loss_fn.weight, expected)
    assert build(make_config(*over)).step.loss_fn.weight is None
    with pytest.raises(UserError, match="trainer.class_weights"):
        fit(make_config(*over, "trainer.class_weights=inverse"), tmp_path / "run")


def test_early_stopping_stops_then_tests_best(fashion_root: Path, tmp_path: Path) -> None:
    stop = ["trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=0.5"]
    ran = fit(make_config(*TINY, "trainer.max_epochs=6", "trainer.limit_train_batches=3", *stop), tmp_path)
    assert ran["stop_reason"] == "early_stopping" and ran["epochs_run"] == 2  # no +0.5 accuracy in epoch 2
    assert len(rows(tmp_path)) == 2 and ran["test_acc"] is not None
    assert json.loads((tmp_path / "results.json").read_text())["stop_reason"] == "early_stopping"
    history = [{"val_loss": v} for v in (1.0, 0.9, 0.95, 0.91, 0.8)]
    assert [epochs_without_improvement(history[:n], "val_loss", 0.0) for n in range(1, 6)] == [0, 0, 1, 2, 0]
    assert epochs_without_improvement(history, "val_loss", 0.25) == 4  # no epoch beats 1.0 by 0.25


@pytest.mark.slow
def test_max_time_stops_in_time_then_tests_best_and_can_resume(fashion_root: Path, tmp_path: Path) -> None:
    over = [*TINY, "trainer.max_epochs=50", "trainer.limit_train_batches=1000"]
    ran = fit(make_config(*over, "trainer.max_time=2s"), tmp_path)
    assert ran["stop_reason"] == "max_time" and ran["epochs_run"] == 1 and ran["test_acc"] is not None
    (row,) = rows(tmp_path)
    assert float(row["seconds"]) < 2  # counted from the start: the epoch had less than the budget
    last = checkpoint.load(tmp_path / "last.pt")
    assert 1 <= last["partial"]["step"] < 1000 and last["epoch"] == 0  # the unfinished epoch, resumable
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "samples.png").is_file()
    # Resumed, a cut epoch ends as if it had never been cut. A budget spent before the first step ends cuts
    # a 6-step epoch after step 1 on any machine; resumed without a budget, the run must end with the
    # metrics and weights of the same run left whole (the same computation repeated: equal to the bit).
    short = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=6", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1"]  # fmt: skip
    cut, resumed, whole = tmp_path / "cut", tmp_path / "resumed", tmp_path / "whole"
    assert fit(make_config(*short, "trainer.max_time=0.001"), cut)["stop_reason"] == "max_time"
    assert checkpoint.load(cut / "last.pt")["partial"]["step"] == 1
    again = fit(make_config(*short, f"trainer.resume={cut / 'last.pt'}"), resumed)
    expected = fit(make_config(*short), whole)
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows(resumed)] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows(whole)
    ]
    assert (again["stop_reason"], again["test_loss"]) == ("finished", expected["test_loss"])
    weights = [checkpoint.load(d / "last.pt")["state_dict"] for d in (resumed, whole)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    assert [parse_duration(v) for v in ("600", "90s", "10m", "1h30m", "1.5h")] == [600, 90, 600, 5400, 5400]
    with pytest.raises(UserError, match="trainer.max_time"):
        parse_duration("ten minutes")
