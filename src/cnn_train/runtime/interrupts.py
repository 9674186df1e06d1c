"""Ctrl-C and SIGTERM (a cluster's notice before preemption) become a clean stop with last.pt saved."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch

from cnn_train.runtime import distributed


class StopRequests:
    """While active, SIGINT/SIGTERM only set `signum`; the training loop checks it after every step.

    A second Ctrl-C aborts at once, for a user who does not want to wait for the save.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def agreed(self, device: torch.device) -> int | None:
        """The signal any process of the run got: every rank must stop at the same step, or one would wait
        for the others forever."""
        if not distributed.active():
            return self.signum
        return distributed.all_max(self.signum or 0, device) or None

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
