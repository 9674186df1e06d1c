"""report.html of a sweep: the model-comparison table the textbook builds by hand, and what a search learned.

A sortable leaderboard of every job (overrides, status, accuracies, parameters, FLOPs, seconds, images/s) and,
for a k-fold sweep (`data.fold=range(K)`), each metric's mean and standard deviation over the folds,
every job's validation curve on one plot, and for an Optuna search the parameter importances and the trials'
objective in trial order. Everything comes from the job folders and multirun.yaml, so `cnn-report SWEEP_DIR`
rebuilds it at any time; the Optuna study is rebuilt from the jobs' overrides and results (the sweeper keeps
it only in memory unless given a storage). `gather` builds the data; templates/sweep.html.j2 lays it out.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

import yaml

from cnn_train.analysis import plots
from cnn_train.reports.optuna import optuna_data
from cnn_train.reports.page import figure, render
from cnn_train.reports.rundata import read_metrics
from cnn_train.runtime import files

log = logging.getLogger(__name__)
SUMMARY_FIELDS = [
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
FOLD_METRICS = ("best_val_acc", "test_acc", "wall_seconds")  # averaged over the folds of a k-fold sweep
MULTI_LABEL_FIELDS = ["best_val_map", "test_map"]  # results of multi-label jobs, shown after test_acc


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
            row["error"] = None
            row.update(wall_seconds=results["wall_seconds"], metric=results.get(metric))
            row.update({k: results[k] for k in MULTI_LABEL_FIELDS if k in results})
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


def fold_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """k-fold cross-validation: for jobs that differ only in `data.fold=`, a `mean` and a `std` row (sample
    standard deviation, n − 1) of each metric over the folds that finished."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        words = r["overrides"].split()
        if any(w.startswith("data.fold=") for w in words):
            key = " ".join(w for w in words if not w.startswith("data.fold="))
            groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        ok = [r for r in members if r["status"] == "ok"]
        swept = " ".join(w for w in members[0]["swept"].split() if not w.startswith("data.fold="))
        for stat in ("mean", "std"):
            row: dict[str, Any] = {"job": stat, "overrides": key, "swept": swept, "best": "", "error": None,
                                   "status": f"{len(ok)} of {len(members)} folds"}  # fmt: skip
            for k in FOLD_METRICS:
                values = [float(r[k]) for r in ok if isinstance(r.get(k), (int, float))]
                enough = len(values) >= (2 if stat == "std" else 1)
                row[k] = (
                    round((statistics.stdev if stat == "std" else statistics.mean)(values), 6)
                    if enough
                    else None
                )
            row.update(seconds=row["wall_seconds"], parameters=None, FLOPs=None)
            row["images/s"] = None
            out.append(row)
    return out


def summary_fields(rows: list[dict[str, Any]]) -> list[str]:
    """summary.csv's columns: SUMMARY_FIELDS, with the mAP columns after test_acc when a job is multi-label."""
    extra = [k for k in MULTI_LABEL_FIELDS if any(k in r for r in rows)]
    at = SUMMARY_FIELDS.index("test_acc") + 1
    return [*SUMMARY_FIELDS[:at], *extra, *SUMMARY_FIELDS[at:]]


def write_summary(sweep_dir: Path, metric: str) -> list[dict[str, Any]]:
    """<sweep dir>/summary.csv: one row per job (`collect`), then a k-fold sweep's mean and std rows
    (`fold_rows`); returns the rows (none: nothing written)."""
    rows = collect(sweep_dir, metric)
    rows += fold_rows(rows)
    if rows:
        fields = summary_fields(rows)
        files.write_csv(sweep_dir / "summary.csv", [{k: r.get(k) for k in fields} for r in rows], fields)
    return rows


def sweep_config(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's config with its `hydra` node: multirun.yaml (the basic sweeper writes it), else the first
    job's .hydra/ (the Optuna sweeper writes no multirun.yaml); empty when neither is there."""
    path = sweep_dir / "multirun.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text()) or {}
    for job in sorted(sweep_dir.glob("*/.hydra")):
        config = yaml.safe_load((job / "config.yaml").read_text()) or {}
        return {**config, **(yaml.safe_load((job / "hydra.yaml").read_text()) or {})}
    return {}


def job_rows(sweep_dir: Path, metric: str) -> list[dict[str, Any]]:
    """`collect`'s rows, with each job's parameters, FLOPs, mean images/s and validation curve."""
    rows = collect(sweep_dir, metric)
    for r in rows:
        job = sweep_dir / r["job"]
        results = json.loads((job / "results.json").read_text()) if (job / "results.json").is_file() else {}
        anatomy = {}
        if (job / "report.json").is_file():
            anatomy = json.loads((job / "report.json").read_text()).get("anatomy", {})
        metrics = read_metrics(job)
        speeds = [float(m["images_per_s"]) for m in metrics if m.get("images_per_s")]
        r.update(
            parameters=results.get("parameters"), FLOPs=anatomy.get("flops"), seconds=r.get("wall_seconds"),
            curve=([int(m["epoch"]) for m in metrics], [float(m["val_acc"]) for m in metrics]),
        )  # fmt: skip
        r["images/s"] = round(sum(speeds) / len(speeds), 1) if speeds else None
    return rows


def shared_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides every job had (said once above the leaderboard instead of in every row)."""
    return [o for o in rows[0]["overrides"].split() if o not in rows[0]["swept"].split()] if rows else []


def curves(sweep_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """val_curves.png: every job's validation accuracy per epoch on one plot (None: no job has an epoch)."""
    series = {f"{r['job']}: {r['swept'] or r['overrides']}"[:60]: r["curve"] for r in rows if r["curve"][0]}
    if not series:
        return None
    plots.plot_lines(series, "epoch", "validation accuracy", sweep_dir / "val_curves.png")
    return figure(sweep_dir / "val_curves.png", "validation accuracy per epoch, every job")


def gather(sweep_dir: Path, metric: str | None = None) -> dict[str, Any]:
    """The context of sweep.html.j2 (and the figures it embeds), from the job folders."""
    config = sweep_config(sweep_dir)
    metric = metric or str(config.get("optimized_metric", "best_val_acc"))
    rows = job_rows(sweep_dir, metric)
    context: dict[str, Any] = {
        "sweep_dir": sweep_dir.resolve(),
        "metric": metric,
        "jobs": rows + fold_rows(rows),  # k-fold sweeps: mean and std rows after the folds
        "finished": sum(r["status"] == "ok" for r in rows),
        "best": next((r for r in rows if r["best"]), None),
        "shared": shared_overrides(rows),
        "map_columns": [k for k in MULTI_LABEL_FIELDS if any(k in r for r in rows)],  # multi-label jobs
        "curves": curves(sweep_dir, rows),
        "optuna": None,
    }
    sweeper = (config.get("hydra") or {}).get("sweeper") or {}
    if "optuna" in str(sweeper.get("_target_", "")):
        try:
            context["optuna"] = optuna_data(sweep_dir, sweeper, rows)
        except Exception as e:  # the leaderboard stands on its own
            log.warning("Optuna section of the sweep report not written: %s", e)
            context["optuna"] = {"error": str(e)}
    return context


def write_sweep_report(sweep_dir: Path, metric: str | None = None) -> Path:
    """Render <sweep dir>/report.html (templates/sweep.html.j2) from the job folders."""
    path = sweep_dir / "report.html"
    files.write_text(path, render("sweep.html.j2", **gather(sweep_dir, metric)))
    return path


def after_sweep(sweep_dir: Path, metric: str) -> None:
    """At the end of a multirun: the sweep's report.html; a failure here only warns."""
    try:
        log.info("wrote %s", write_sweep_report(sweep_dir, metric))
    except Exception as e:  # every job's results are safe: a figure must not fail the sweep
        log.warning("sweep report.html not written: %s", e)
