"""What a run leaves in its directory, and the tracker it reports to: one object, written by the main process.

Every file and tracker call of a run goes through `RunDir`, so "only rank 0 writes" is decided here alone.
Used as a context manager it closes the tracker on every way out, with the status the way out deserves:
FINISHED, KILLED (a signal or Ctrl-C) or FAILED (NaN, bad input, a bug).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from cnn_train.analysis import plots
from cnn_train.inference import checkpoint
from cnn_train.runtime import files
from cnn_train.runtime.errors import Interrupted

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_epoch(self, history: list[dict[str, Any]]) -> None: ...
    def log_best(self, path: Path) -> None: ...
    def close(self, status: str) -> None: ...


def exit_status(exc: BaseException | None) -> str:
    """How a tracker should remember a run that ended with `exc` (None: it finished)."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "FAILED"


class RunDir:
    """The run directory and its tracker; on any process but the main one every method does nothing."""

    def __init__(
        self, path: Path, main: bool, tracker: Callable[[Path], Tracker], resumed_dir: Path | None = None
    ) -> None:
        self.path, self.main, self._make_tracker, self.resumed_dir = path, main, tracker, resumed_dir
        self.tracker: Tracker | None = None

    def __enter__(self) -> RunDir:
        if self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            self._adopt()  # before the tracker: it finds the run it continues (mlflow_run_id)
            self.tracker = self._make_tracker(self.path)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.tracker is not None:
            self.tracker.close(exit_status(exc))
            self.tracker = None

    def start(self, classes: list[str], config: dict[str, Any], draw_samples: Callable[[Path], None]) -> None:
        """class_indices.json, samples.png and the config, before the first step."""
        if not self.main:
            return
        files.write_json(self.path / "class_indices.json", {str(i): c for i, c in enumerate(classes)})
        draw_samples(self.path / "samples.png")
        assert self.tracker is not None
        self.tracker.log_config(config)

    def save(self, name: str, payload: dict[str, Any]) -> None:
        if self.main:
            checkpoint.save(self.path / name, payload)

    def _adopt(self) -> None:
        """A run resumed from another dir takes its best.pt, lr range test and tracker run id along: this dir
        is complete, and MLflow continues the same run."""
        old = self.resumed_dir
        if old is None or old.resolve() == self.path.resolve():
            return
        for name in ("best.pt", "lr_find.json", "lr_find.png", "mlflow_run_id"):
            if (old / name).is_file():
                shutil.copy2(old / name, self.path / name)

    def epoch_done(self, history: list[dict[str, Any]]) -> None:
        """metrics.csv (and the tracker) and curves.png, after every epoch."""
        if self.main:
            assert self.tracker is not None
            self.tracker.log_epoch(history)
            plots.plot_curves(history, self.path / "curves.png")

    def finish(self, results: dict[str, Any]) -> None:
        """results.json, which also marks the run as finished (resume=auto skips it)."""
        if self.main:
            assert self.tracker is not None
            files.write_json(self.path / "results.json", results)
            self.tracker.log_best(self.path / "best.pt")
