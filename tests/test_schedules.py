"""Each schedule's real per-step lr against hand formulas, and resuming at the same or a larger length."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from cnn_train import schedules
from cnn_train.errors import UserError
from cnn_train.schedules import Schedule

BASE = 0.1


def sgd(lr: float = BASE) -> torch.optim.Optimizer:
    """SGD with momentum over one dummy parameter (onecycle then cycles the momentum too)."""
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def run(schedule: Schedule, steps: int, metrics: list[dict[str, float]] | None = None) -> list[float]:
    """The lr each of the next `steps` optimizer steps uses; `metrics[e]` ends epoch e (for plateau)."""
    opt, lrs = schedule.optimizer, []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.after_step()
        epoch, rest = divmod(schedule.steps_done, schedule.steps_per_epoch)
        if metrics is not None and rest == 0:
            schedule.after_epoch(metrics[epoch - 1])
    return lrs


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
