"""When a run ends before its last epoch: early stopping on a validation metric, and the hard time limit.

Both end a run the way a finished run ends (best.pt tested, results.json, plots); results.json's
`stop_reason` says which ended it: `finished`, `early_stopping` or `max_time`. `trainer.max_time` stays the
hard stop under `trainer.budget` too (budget.py), which plans the epochs so that the run finishes on time.
"""

from __future__ import annotations

import re
import time
from typing import Any

import torch

from cnn_train.runtime import distributed
from cnn_train.runtime.errors import UserError

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
MODES = {"val_acc": max, "val_loss": min, "val_map": max}  # what early stopping watches; which way is better


def parse_duration(value: Any, key: str = "trainer.max_time") -> float | None:
    """Seconds from `600`, `90s`, `10m`, `1h30m` or `1.5h`; None stays None (no budget).

    Raises:
        UserError: naming `key`, for anything else or a budget that is not positive.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif re.fullmatch(r"(\d+(\.\d+)?[hms])+", text):
        seconds = sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", text))
    else:
        raise UserError(f"{key}: {value!r} is not a duration (seconds, or like 90s, 10m, 1h30m)")
    if seconds <= 0:
        raise UserError(f"{key}: {value!r} must be longer than 0 s")
    return seconds


class Deadline:
    """A wall-clock budget counted from `start` (time.perf_counter()); every process agrees when it is up."""

    def __init__(self, seconds: float | None, start: float) -> None:
        self.at = None if seconds is None else start + seconds

    def passed(self, device: torch.device) -> bool:
        if self.at is None:
            return False
        late = int(time.perf_counter() >= self.at)
        return bool(distributed.all_max(late, device))  # rank 0's clock and the others' may straddle it


def epochs_without_improvement(history: list[dict[str, Any]], monitor: str, min_delta: float) -> int:
    """Epochs since `monitor` last improved on its best by more than `min_delta` (0: the last epoch did).

    Computed from the metrics history alone, so a resumed run stops exactly where an uninterrupted one would.
    """
    better = MODES[monitor]
    best, since = None, 0
    for row in history:
        value = row[monitor]
        if best is None or (value > best + min_delta if better is max else value < best - min_delta):
            best, since = value, 0
        else:
            since += 1
    return since


def should_stop_early(history: list[dict[str, Any]], early_stopping: Any) -> bool:
    """`trainer.early_stopping`: stop once `monitor` has not improved for `patience` epochs."""
    if early_stopping.patience is None:
        return False
    return epochs_without_improvement(history, early_stopping.monitor, early_stopping.min_delta) >= int(
        early_stopping.patience
    )
