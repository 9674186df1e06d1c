"""The exceptions the CLI turns into a message: a user's error (one line) and a stop on a signal (how to resume)."""

from __future__ import annotations

import signal
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: an unknown name, a missing file, a bad value or a corrupt file."""


class Interrupted(Exception):
    """Training stopped on a signal after saving last.pt; the CLI turns this into a resume hint."""

    def __init__(self, signum: int, epoch: int, step: int, last: Path) -> None:
        self.signum, self.epoch, self.step, self.last = signum, epoch, step, last
        name = signal.Signals(signum).name
        super().__init__(f"{name} at epoch {epoch}, step {step}: saved {last}")
