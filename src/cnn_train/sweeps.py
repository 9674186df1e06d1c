"""After `cnn-train -m`: one summary.csv of every job's overrides and accuracies, and a printed table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnn_train import files


def collect(sweep_dir: Path, metric: str = "best_val_acc") -> list[dict[str, Any]]:
    """One row per job folder (those holding .hydra/overrides.yaml), in job order; `best` marks the job with
    the highest `metric` (the value a sweeper such as Optuna maximizes)."""
    rows = []
    jobs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    for job in sorted(jobs, key=lambda p: (len(p.name), p.name)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join(overrides)}
        results_file = job / "results.json"
        if results_file.is_file():
            results = json.loads(results_file.read_text())
            row.update(status="ok", best_val_acc=results["best_val_acc"], test_acc=results["test_acc"])
            row.update(wall_seconds=results["wall_seconds"], metric=results.get(metric))
        else:
            error = job / "error.txt"
            row.update(status="failed", best_val_acc=None, test_acc=None, wall_seconds=None, metric=None)
            row["error"] = error.read_text().strip() if error.is_file() else "no results.json"
        rows.append(row)
    # The overrides every job shares say nothing about the jobs: `swept` keeps the ones that differ.
    common = set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()
    for r in rows:
        r["swept"] = " ".join(o for o in r["overrides"].split() if o not in common)
    scored = [r for r in rows if isinstance(r.get("metric"), (int, float))]
    best = max(scored, key=lambda r: r["metric"], default=None)
    for r in rows:
        r["best"] = "*" if r is best else ""
    return rows


class SweepSummary(Callback):
    """Hydra callback: writes <sweep dir>/summary.csv and report.html when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from rich.console import Console
        from rich.table import Table

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir, str(config.optimized_metric))
        if not rows:
            return
        fields = [
            "job",
            "swept",
            "status",
            "best",
            "best_val_acc",
            "test_acc",
            "wall_seconds",
            "overrides",
            "error",
        ]
        files.write_csv(sweep_dir / "summary.csv", [{k: r.get(k) for k in fields} for r in rows], fields)
        table = Table(title=f"sweep summary ({sweep_dir / 'summary.csv'})")
        shown = fields[:-2]
        for name in shown:
            table.add_column(name)
        for r in rows:
            table.add_row(*("" if r.get(k) is None else f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                            for k in shown))  # fmt: skip
        Console(stderr=True).print(table)
        from cnn_train.sweep_report import after_sweep

        after_sweep(sweep_dir, str(config.optimized_metric))
