"""Each schedule's real per-step lr against hand formulas, and resuming at the same or a larger length."""

from __future__ import annotations

import io
import warnings
from functools import partial
from typing import Any

import pytest
import torch

from cnn_train.runtime.errors import UserError
from cnn_train.training import schedules
from cnn_train.training.schedules import Schedule

BASE = 0.1


def sgd(lr: float = BASE) -> torch.optim.Optimizer:
    """SGD with momentum over one dummy parameter (onecycle then cycles the momentum too)."""
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def trace(
    schedule: Schedule, steps: int, metrics: list[dict[str, float]] | None = None
) -> list[tuple[float, float]]:
    """(lr, momentum) of each of the next `steps` optimizer steps; `metrics[e]` ends epoch e+1 (plateau)."""
    opt, seen = schedule.optimizer, []
    for _ in range(steps):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))
        opt.step()
        schedule.after_step()
        epoch, rest = divmod(schedule.steps_done, schedule.steps_per_epoch)
        if metrics is not None and rest == 0:
            schedule.after_epoch(metrics[epoch - 1])
    return seen


def run(schedule: Schedule, steps: int, metrics: list[dict[str, float]] | None = None) -> list[float]:
    """The lr each of the next `steps` optimizer steps uses."""
    return [lr for lr, _ in trace(schedule, steps, metrics)]


def test_cosine_warms_up_linearly_then_decays_to_its_floor() -> None:
    # 1.5 epochs of 4 steps: w = 6 (a quarter of 41 steps is 10); the cosine runs from step 6 to step 40.
    lrs = run(Schedule(partial(schedules.cosine, warmup_epochs=1.5, min_lr_ratio=0.2), sgd(), 41, 4), 41)
    w, last = 6, 40
    for s in range(w):
        assert lrs[s] == pytest.approx(BASE * (s + 1) / w)
    assert lrs[w] == pytest.approx(BASE)
    assert lrs[(w + last) // 2] == pytest.approx(0.2 * BASE + (BASE - 0.2 * BASE) / 2)
    assert lrs[last] == pytest.approx(0.2 * BASE)
    assert lrs == sorted(lrs[:w]) + sorted(lrs[w:], reverse=True)


def test_cosine_warmup_is_capped_at_a_quarter_and_can_be_off() -> None:
    capped = run(Schedule(partial(schedules.cosine, warmup_epochs=100.0), sgd(), 20, 4), 20)
    assert capped[:6] == pytest.approx([BASE * (s + 1) / 5 for s in range(5)] + [BASE])
    none = run(Schedule(partial(schedules.cosine, warmup_epochs=0.0), sgd(), 21, 4), 21)
    assert none[0] == BASE
    assert none[10] == pytest.approx(BASE / 2)
    assert none[20] == pytest.approx(0.0, abs=1e-12)


def test_onecycle_starts_low_peaks_at_lr_and_ends_far_below() -> None:
    opt = sgd()
    schedule = Schedule(partial(schedules.onecycle, pct_start=0.25, div_factor=25.0), opt, 40, 4)
    momenta = [opt.param_groups[0]["momentum"]]
    lrs = run(schedule, 1)
    momenta.append(opt.param_groups[0]["momentum"])
    lrs += run(schedule, 39)
    peak = int(0.25 * 40) - 1  # OneCycleLR reaches max_lr at step float(pct_start * total) - 1
    assert lrs[0] == pytest.approx(BASE / 25)
    assert lrs[peak] == pytest.approx(BASE)
    assert max(lrs) == lrs[peak]
    assert lrs[-1] == pytest.approx(BASE / 25 / 1e4)
    assert momenta[0] == pytest.approx(0.95)  # momentum falls while the lr rises
    assert momenta[1] < momenta[0]


def test_step_multiplies_by_gamma_every_step_epochs() -> None:
    lrs = run(Schedule(partial(schedules.step, step_epochs=2, gamma=0.5), sgd(), 30, 3), 30)
    assert lrs == pytest.approx([BASE * 0.5 ** (s // 6) for s in range(30)])
    assert lrs[5] == BASE and lrs[6] < BASE


def test_constant_keeps_the_lr() -> None:
    assert run(Schedule(schedules.constant, sgd(), 12, 4), 12) == [BASE] * 12


def test_plateau_cuts_the_lr_when_val_loss_stops_falling() -> None:
    schedule = Schedule(partial(schedules.plateau, monitor="val_loss", factor=0.5, patience=1), sgd(), 24, 4)
    losses = [1.0, 0.9, 0.95, 0.92, 0.8, 0.7]  # epochs 3 and 4 do not beat 0.9: the cut follows epoch 4
    lrs = run(schedule, 24, [{"val_loss": v, "val_acc": 0.0} for v in losses])
    assert lrs == [BASE] * 16 + [BASE * 0.5] * 8


def test_plateau_on_val_acc_wants_it_to_rise() -> None:
    schedule = Schedule(partial(schedules.plateau, monitor="val_acc", factor=0.5, patience=1), sgd(), 24, 4)
    accs = [0.5, 0.6, 0.7, 0.8, 0.8, 0.8]  # rising accuracy is progress; epochs 5 and 6 stall
    lrs = run(schedule, 24, [{"val_loss": 1.0, "val_acc": a} for a in accs])
    assert lrs == [BASE] * 24
    assert schedule.optimizer.param_groups[0]["lr"] == BASE * 0.5


def test_plateau_rejects_an_unknown_metric() -> None:
    with pytest.raises(UserError, match="scheduler.monitor"):
        Schedule(partial(schedules.plateau, monitor="train_loss"), sgd(), 10, 2)


# Every schedule, with options that make it move within 24 steps of 4 per epoch.
KINDS = {
    "cosine": partial(schedules.cosine, warmup_epochs=1.5, min_lr_ratio=0.2),
    "onecycle": partial(schedules.onecycle, pct_start=0.25),
    "step": partial(schedules.step, step_epochs=2, gamma=0.5),
    "constant": schedules.constant,
    "plateau": partial(schedules.plateau, monitor="val_loss", factor=0.5, patience=1),
}
# Epochs 2 and 3 stall: a plateau saved mid-epoch 3 must remember epoch 2 to cut after epoch 3.
LOSSES = [{"val_loss": v, "val_acc": 0.0} for v in [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]]


def saved(optimizer: torch.optim.Optimizer, schedule: Schedule) -> dict[str, Any]:
    """What last.pt keeps of them, after a trip through torch.save and a weights-only load."""
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def resumed(factory: Any, state: dict[str, Any], total_steps: int, steps_per_epoch: int) -> Schedule:
    """A new optimizer and Schedule loaded the way the trainer resumes: optimizer first."""
    optimizer = sgd()
    schedule = Schedule(factory, optimizer, total_steps, steps_per_epoch)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return schedule


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trips_through_a_weights_only_load(kind: str) -> None:
    schedule = Schedule(KINDS[kind], sgd(), 24, 4)
    trace(schedule, 10, LOSSES)
    assert saved(schedule.optimizer, schedule)["schedule"] == schedule.state_dict()


@pytest.mark.parametrize("kind", KINDS)
def test_resume_at_the_same_length_is_identical_to_an_uninterrupted_run(kind: str) -> None:
    whole = trace(Schedule(KINDS[kind], sgd(), 24, 4), 24, LOSSES)
    first = Schedule(KINDS[kind], sgd(), 24, 4)
    head = trace(first, 10, LOSSES)  # stops mid-epoch 3
    again = resumed(KINDS[kind], saved(first.optimizer, first), 24, 4)
    assert again.steps_done == 10
    tail = trace(again, 14, LOSSES)
    assert head + tail == whole
    assert len(set(whole)) > 1 or kind == "constant"


# 5 steps an epoch: cosine's quarter-run cap gives a 2-step warm-up in 10 steps and a 5-step one in 20.
LONGER = {
    "onecycle": partial(schedules.onecycle, pct_start=0.25),
    "cosine": partial(schedules.cosine, warmup_epochs=1.0, min_lr_ratio=0.2),
    "step": partial(schedules.step, step_epochs=1, gamma=0.5),
}


@pytest.mark.parametrize("at", [10, 7])
@pytest.mark.parametrize("kind", LONGER)
def test_resume_into_a_longer_run_follows_the_longer_schedule(kind: str, at: int) -> None:
    fresh = trace(Schedule(LONGER[kind], sgd(), 20, 5), 20)
    short = Schedule(LONGER[kind], sgd(), 10, 5)
    trace(short, at)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast-forward steps no optimizer, and must not say so
        longer = resumed(LONGER[kind], saved(short.optimizer, short), 20, 5)
    assert longer.steps_done == at
    tail = trace(longer, 20 - at)
    assert [lr for lr, _ in tail] == [lr for lr, _ in fresh[at:]]  # exactly
    assert [m for _, m in tail] == [m for _, m in fresh[at:]]  # onecycle cycles SGD's momentum
    assert len({m for _, m in tail}) > 1 or kind != "onecycle"


def test_resume_into_a_longer_run_keeps_plateau_cuts_and_patience() -> None:
    losses = [{"val_loss": 1.0, "val_acc": 0.0}] * 6  # never improves: a cut after epochs 3 and 5
    short = Schedule(KINDS["plateau"], sgd(), 12, 4)
    assert run(short, 12, losses) == [BASE] * 12
    longer = resumed(KINDS["plateau"], saved(short.optimizer, short), 24, 4)
    assert run(longer, 12, losses) == [BASE * 0.5] * 8 + [BASE * 0.25] * 4


def test_resume_into_a_shorter_run_does_not_fail() -> None:
    long = Schedule(KINDS["onecycle"], sgd(), 20, 4)
    trace(long, 12)
    short = resumed(KINDS["onecycle"], saved(long.optimizer, long), 8, 4)
    assert short.steps_done == 12  # the loop has no epoch left to run
