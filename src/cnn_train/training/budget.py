"""`trainer.budget`: as many epochs as fit in a time, with the schedule laid over them; `trainer.plan` replays them.

The rule. A budgeted run starts with its schedule laid over `trainer.max_epochs` (the upper bound). Before
every later epoch it projects its finish: the time spent so far (start-up included) + the planned epochs left ×
the seconds a whole epoch takes (training, validation, checkpoints and curves, measured end to end; the first
epoch, which pays for warm-up, only until a second one is measured) + the test pass (the last validation pass
scaled by the test split's batches). The plan changes only when that projection leaves
[budget − 1 epoch, budget + ½ epoch]: it then becomes the most epochs that end by the budget (at least one
more, at most max_epochs), and the schedule is rebuilt for that length and fast-forwarded to the step reached
(`Schedule.relength`). A plan is never cut to the epoch just finished, so the last epoch always ends on the
schedule's final lr.

Why this rule: re-planning after every epoch (Ultralytics' `time=`) moves the lr curve whenever the timing
jitters; a plan fixed after one calibration epoch misses the budget by the estimate's error times every epoch
left, and cannot follow a machine that slows down. The band keeps the plan still while the estimate only
jitters, and re-plans when the finish would drift by about an epoch. A changed length bends a one-cycle or
cosine curve by a small step at the step reached, early in the run (where the first, warm-up-inflated estimate
is corrected) and rarely after.

Replay. Every change is recorded as `[after_epoch, epochs]` (from `after_epoch` epochs done, the schedule
spans `epochs`), starting with `[0, max_epochs]`. `trainer.plan` given that list makes the same changes at the
same steps without measuring anything, so a run without a budget computes exactly what the budgeted one did.
`plateau` has no length: a budget only decides when it stops (no annealing to the budget).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from cnn_train.runtime import distributed
from cnn_train.runtime.errors import UserError
from cnn_train.training.schedules import Schedule
from cnn_train.training.stopping import parse_duration

log = logging.getLogger(__name__)
# The band, in epochs: the plan changes only when the projected finish leaves [budget − EARLY, budget + LATE].
EARLY, LATE = 1.0, 0.5


def check_plan(tr: DictConfig) -> None:
    """`trainer.budget`, `trainer.plan` and their agreement with `trainer.max_time`, naming the key."""
    budget = parse_duration(tr.budget, "trainer.budget")
    hard = parse_duration(tr.max_time)
    if budget is not None and hard is not None and budget > hard:
        raise UserError(
            f"trainer.budget: {tr.budget} is longer than trainer.max_time {tr.max_time}, which would cut the "
            "schedule before it ends; give max_time at least the budget (it stays the hard stop)"
        )
    if tr.plan is None:
        return
    if budget is not None:
        raise UserError(
            "trainer.plan: replays a budgeted run's plan without a budget; set trainer.budget=null"
        )
    changes = [list(c) for c in tr.plan]
    after = [c[0] for c in changes if len(c) == 2]
    ok = len(after) == len(changes) >= 1 and after[0] == 0 and after == sorted(set(after))
    if not ok or any(epochs <= done for done, epochs in changes):
        raise UserError(
            f"trainer.plan: {changes} is not [[0, epochs], [after_epoch, epochs], ...] with rising "
            "after_epoch and each epochs beyond its after_epoch (copy results.json's replay)"
        )


def first_length(tr: DictConfig) -> int:
    """The epochs the schedule spans at the start: the replayed plan's first length, else max_epochs."""
    return int(tr.plan[0][1]) if tr.plan else int(tr.max_epochs)


@dataclass
class Plan:
    """The schedule's length, epoch by epoch: given (`trainer.plan`, or max_epochs) or fitted to a budget.

    `another(done, schedule)` is called before every epoch: it measures the epoch just finished, re-plans
    under a budget, lays the schedule over the length in force, and says whether another epoch runs.
    """

    changes: list[list[int]]  # [[after_epoch, epochs], ...]: from after_epoch epochs done, the length
    bound: int  # trainer.max_epochs
    budget: float | None = None  # seconds (trainer.budget); None: the changes are given
    durations: list[float] = field(default_factory=list)  # whole epochs, end to end, as measured
    spent: float = 0.0  # budget seconds this run's earlier processes used (a resumed run)
    startup: float | None = None  # seconds before the first epoch
    started: float = field(default_factory=time.perf_counter)  # when this process started
    validation: float = 0.0  # the last validation pass, seconds
    test_share: float = 0.0  # test batches per validation batch: the test pass ≈ validation × this
    mark: float | None = None  # when the epoch now running began (None: not measured)

    @classmethod
    def start(cls, tr: DictConfig, started: float, last: dict[str, Any] | None, test_share: float) -> Plan:
        """This run's plan: a budget's, continued from last.pt when it holds one; or the given lengths."""
        budget = parse_duration(tr.budget, "trainer.budget")
        given = [list(c) for c in tr.plan] if tr.plan else [[0, int(tr.max_epochs)]]
        plan = cls(given, int(tr.max_epochs), budget, started=started, test_share=test_share)
        saved = (last or {}).get("plan")
        if budget is not None and saved and saved.get("budget") is not None:
            plan.changes, plan.durations = saved["changes"], list(saved["durations"])
            plan.spent, plan.startup = saved["spent"], saved["startup"]
            log.info(
                "budget %s: %.0f s spent, continuing its plan of %d epochs",
                tr.budget,
                plan.spent,
                plan.epochs,
            )
        elif budget is not None:
            log.info(
                "budget %s: the first epoch runs the schedule laid over max_epochs=%d; then the measured epochs "
                "decide how many fit, and the schedule is laid over those", tr.budget, plan.bound,
            )  # fmt: skip
        return plan

    @property
    def epochs(self) -> int:
        """The length the plan ends at (so far, under a budget)."""
        return self.changes[-1][1]

    def length_after(self, done: int) -> int:
        return next(epochs for after, epochs in reversed(self.changes) if after <= done)

    @property
    def seconds_per_epoch(self) -> float | None:
        if not self.durations:
            return None
        warm = self.durations[1:] or self.durations
        return sum(warm) / len(warm)

    def elapsed(self) -> float:
        return self.spent + time.perf_counter() - self.started

    def another(self, done: int, schedule: Schedule, midway: bool = False) -> bool:
        """Before epoch `done` + 1 (`midway`: resumed inside it, already planned): whether it runs."""
        now = time.perf_counter()
        if self.mark is not None:
            self.durations.append(now - self.mark)
        elif self.startup is None and done == 0:
            self.startup = self.elapsed()
        self.mark = None if midway else now  # a resumed epoch's halves are not one epoch's time
        if self.budget is not None and self.durations and not midway and done < self.epochs:
            self._replan(done)
        length = self.length_after(done)
        if schedule.total_steps != length * schedule.steps_per_epoch:
            schedule.relength(length * schedule.steps_per_epoch)
        return done < length

    def _replan(self, done: int) -> None:
        assert self.budget is not None and self.seconds_per_epoch is not None
        per, was = self.seconds_per_epoch, self.epochs
        fit = done + (self.budget - self.elapsed() - self.validation * self.test_share) / per
        target = min(max(math.floor(fit), done + 1), self.bound)
        if not fit - EARLY <= was <= fit + LATE and target != was:
            self.changes.append([done, target])
        self.changes = distributed.broadcast(self.changes)  # rank 0's clock decides for every process
        if self.epochs != was:
            log.info(
                "budget: %.1f s per epoch, %.1f s spent, the test pass ~%.1f s: %d epochs fit%s "
                "(was %d); the schedule now spans %d epochs",
                per, self.elapsed(), self.validation * self.test_share, self.epochs,
                " (trainer.max_epochs bounds it)" if self.epochs == self.bound else "", was, self.epochs,
            )  # fmt: skip

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """Time a validation pass: the test pass at the end is estimated from it."""
        start = time.perf_counter()
        yield
        self.validation = time.perf_counter() - start

    def state_dict(self) -> dict[str, Any]:
        """What last.pt keeps, so that a resumed run continues this plan (plain containers)."""
        return {
            "changes": [list(c) for c in self.changes], "budget": self.budget, "durations": list(self.durations),
            "spent": self.elapsed(), "startup": self.startup,
        }  # fmt: skip

    def replay(self) -> str | None:
        """The overrides that rerun this budgeted run's epochs and schedule exactly, without a budget."""
        if self.budget is None:
            return None
        if len(self.changes) == 1:
            return f"trainer.budget=null trainer.max_epochs={self.epochs}"
        plan = ",".join(f"[{a},{e}]" for a, e in self.changes)
        return f"trainer.budget=null {shlex.quote(f'trainer.plan=[{plan}]')}"

    def summary(self, last_lr: float | None) -> dict[str, Any] | None:
        """results.json's `budget`: how the time went, what was planned and where the lr ended."""
        if self.budget is None:
            return None
        per = self.seconds_per_epoch
        return {
            "seconds": self.budget, "used_seconds": round(self.elapsed(), 2), "planned_epochs": self.epochs,
            "seconds_per_epoch": round(per, 3) if per is not None else None,
            "startup_seconds": round(self.startup, 2) if self.startup is not None else None,
            "test_seconds_estimate": round(self.validation * self.test_share, 2), "last_lr": last_lr,
            "plan": [list(c) for c in self.changes],
        }  # fmt: skip


def relative_test_size(
    val_batches: int, test_images: int | None, batch_size: int, limit: int | None
) -> float:
    """Test batches per validation batch: both passes run the same inference (TTA included)."""
    if not test_images or not val_batches:
        return 0.0
    batches = math.ceil(test_images / batch_size)
    return min(batches, limit or batches) / val_batches
