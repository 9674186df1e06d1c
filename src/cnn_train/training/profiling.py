"""trainer.profile: where a training step's time goes, for the user's own model, data and machine.

torch.profiler records a few steps of the run's first epoch (after WARMUP_STEPS unrecorded ones: the first
steps pay for allocations and oneDNN/cuDNN plans, and the profiler's own start-up), then the run dir gets
`profile.txt` (the top ops by self time, each as a share of the profiled steps' wall time) and
`profile_trace.json` (a Chrome trace: chrome://tracing or https://ui.perfetto.dev). It hooks in as an
after-step callback chained in front of the run's own, so the training loop does not know it is watched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from cnn_train.runtime import files

log = logging.getLogger(__name__)
WARMUP_STEPS = 2  # unrecorded steps first: one untraced, one traced and dropped (the profiler warms up)
TOP_OPS = 25  # rows of profile.txt
AfterStep = Callable[[int, Callable[[], Any]], None]


class StepProfiler:
    """Profiles `steps` training steps once per run, the first time `around` wraps an epoch."""

    def __init__(self, run_dir: Path | None, steps: int, device: torch.device) -> None:
        self.run_dir, self.steps, self.device = run_dir, steps, device
        self.done = run_dir is None  # off, or not the main process: nothing to watch
        self.prof: profile | None = None
        self.first = self.end = self.last = 0  # steps to record first..end; recorded first..last
        self.started = self.seconds = 0.0

    @classmethod
    def from_config(cls, trainer: Any, run_dir: Path, main: bool, device: torch.device) -> StepProfiler:
        """Off unless `trainer.profile`; only the main process writes (and so profiles)."""
        on = bool(trainer.profile) and main
        return cls(run_dir if on else None, trainer.profile_steps, device)

    @contextlib.contextmanager
    def around(
        self, after_step: AfterStep | None, steps_left: int, done_before: int = 0
    ) -> Iterator[AfterStep | None]:
        """Yield the after-step hook to train this epoch with: `after_step` with the profiler behind it.

        `steps_left` is how many steps the epoch will take (fewer than warm-up + `steps`: fewer are
        recorded); `done_before` the steps a resumed epoch already took (the loop's step count goes on).
        """
        if self.done:
            yield after_step
            return
        self.done = True
        warmup = min(WARMUP_STEPS, max(steps_left - 1, 0))
        active = min(self.steps, max(steps_left - warmup, 1))
        trace_warmup = min(warmup, 1)  # the last unrecorded step is traced and dropped: the profiler warms up
        self.first, self.end = done_before + warmup + 1, done_before + warmup + active
        cuda = [ProfilerActivity.CUDA] if self.device.type == "cuda" else []
        self.prof = profile(
            activities=[ProfilerActivity.CPU, *cuda],
            schedule=schedule(
                wait=done_before + warmup + 1 - trace_warmup, warmup=trace_warmup, active=active, repeat=1
            ),
            record_shapes=True,
        )
        self.prof.start()
        for _ in range(done_before + 1):  # the trace's ProfilerStep#k is then the epoch's step k
            self.prof.step()
        self.started = self.now()
        try:
            yield lambda step, snapshot: self.after(after_step, step, snapshot)
        finally:
            self.finish()

    def after(self, inner: AfterStep | None, step: int, snapshot: Callable[[], Any]) -> None:
        """The run's own hook first (a checkpoint it saves belongs to the step), then the profiler's.

        A stop it raises (a signal, a NaN) ends the epoch; the step is still counted, so that the events
        recorded and the wall time they are shares of cover the same steps.
        """
        try:
            if inner is not None:
                inner(step, snapshot)
        finally:
            if self.prof is not None:
                self.tick(step)

    def tick(self, step: int) -> None:
        assert self.prof is not None
        if self.first <= step <= self.end:
            self.seconds, self.last = self.now() - self.started, step
        self.prof.step()
        if step == self.first - 1:
            self.started = self.now()  # the recorded window opens after the profiler's warm-up step

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels, not only their launches
        return time.perf_counter()

    def finish(self) -> None:
        """Stop recording and write the files (if a step was recorded)."""
        prof, self.prof = self.prof, None
        if prof is None:
            return
        prof.stop()
        if not self.last or self.run_dir is None:
            log.warning("trainer.profile: the epoch ended before a step was recorded; nothing written")
            return
        write_report(prof, self.run_dir, (self.first, self.last), self.seconds, self.device)


def write_report(
    prof: profile, run_dir: Path, steps: tuple[int, int], seconds: float, device: torch.device
) -> None:
    """profile.txt (top ops, shares of the recorded steps' wall time) and profile_trace.json; log the top 5."""
    n = steps[1] - steps[0] + 1
    cuda = device.type == "cuda"
    ops = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    ops.sort(key=lambda e: e.self_device_time_total if cuda else e.self_cpu_time_total, reverse=True)
    window_us = seconds * 1e6
    head = f"{'op':<48} {'calls/step':>10} {'self CPU ms/step':>17} {'% of step':>9}"
    head += f" {'self GPU ms/step':>17} {'% of step':>9}" if cuda else ""
    lines = [
        f"steps {steps[0]}-{steps[1]} of the first epoch ({n} recorded after {steps[0] - 1} unrecorded): "
        f"{seconds / n * 1e3:.1f} ms per step, wall clock on {device.type}",
        f"ops' self CPU time in all: {sum(e.self_cpu_time_total for e in ops) / window_us:.0%} of the steps "
        "(the rest: Python, the loop, waiting)",
        "",
        head,
        "-" * len(head),
    ]
    for e in ops[:TOP_OPS]:
        row = f"{e.key[:48]:<48} {e.count / n:>10.1f} {e.self_cpu_time_total / n / 1e3:>17.3f}"
        row += f" {e.self_cpu_time_total / window_us:>9.1%}"
        if cuda:
            row += (
                f" {e.self_device_time_total / n / 1e3:>17.3f} {e.self_device_time_total / window_us:>9.1%}"
            )
        lines.append(row)
    files.write_text(run_dir / "profile.txt", "\n".join(lines) + "\n")
    trace = run_dir / "profile_trace.json"
    prof.export_chrome_trace(str(trace) + ".tmp")  # written whole, then renamed: never a half trace
    os.replace(str(trace) + ".tmp", trace)
    top = ", ".join(
        f"{e.key} {(e.self_device_time_total if cuda else e.self_cpu_time_total) / window_us:.0%}"
        for e in ops[:5]
    )
    log.info(
        "profile (steps %d-%d, %.1f ms/step): %s; see %s",
        *steps,
        seconds / n * 1e3,
        top,
        run_dir / "profile.txt",
    )
