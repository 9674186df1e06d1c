"""The Hydra callback behind every `cnn-train -m`: summary.csv, a printed table and report.html at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table


class SweepSummary(Callback):
    """Writes <sweep dir>/summary.csv and report.html when the multirun ends, and prints the summary."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Imported here: Hydra builds its callbacks before every run, and a plain run need not pay for them.
        from cnn_train.reports.sweep import after_sweep, summary_fields, write_summary

        sweep_dir = Path(config.hydra.sweep.dir)
        metric = str(config.optimized_metric)
        rows = write_summary(sweep_dir, metric)
        if not rows:
            return
        table = Table(title=f"sweep summary ({sweep_dir / 'summary.csv'})")
        shown = summary_fields(rows)[:-2]  # overrides and error are long: summary.csv has them
        for name in shown:
            table.add_column(name)
        for r in rows:
            table.add_row(*("" if r.get(k) is None else f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                            for k in shown))  # fmt: skip
        Console(stderr=True).print(table)
        after_sweep(sweep_dir, metric)
