"""What a finished run dir holds, read back: its results, metrics, command line and resolved config."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from cnn_train.inference import checkpoint


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def command(run_dir: Path) -> str:
    """The command line that runs this again, from the overrides Hydra recorded."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return "# not started by cnn-train (no .hydra/overrides.yaml): see the config below"
    given = yaml.safe_load(overrides.read_text()) or []
    return " ".join(["cnn-train", *(shlex.quote(o) for o in given)])


def resolved_config(run_dir: Path) -> str:
    """The resolved config as the checkpoint recorded it (Hydra's copy still holds ${...} interpolations)."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return yaml.safe_dump(checkpoint.load(run_dir / name)["config"], sort_keys=False)
    return (run_dir / ".hydra" / "config.yaml").read_text() if (run_dir / ".hydra").is_dir() else ""


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def number(text: str) -> Any:
    """A CSV cell as the number it holds, so that the table sorts it as one."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


BENCH_COLUMNS = ("format", "runtime", "precision", "batch-1 ms (median)", "batch-1 ms (p90)", "images/s",
                 "× PyTorch fp32", "accuracy", "MB")  # fmt: skip


def bench_rows(run_dir: Path) -> tuple[str, list[list[Any]]]:
    """bench.json (cnn-bench) as its CPU and one plain row per format (BENCH_COLUMNS); ("", []) without it.

    A skipped format keeps its row, its reason in the runtime column.
    """
    bench = read_json(run_dir / "bench.json")
    records = bench.get("records", [])
    base = next((r.get("throughput_img_s") for r in records if r["format"] == "pytorch"), None)
    rows: list[list[Any]] = []
    for r in records:
        if "skipped" in r:
            rows.append([r["format"], f"skipped: {r['skipped']}", *[None] * (len(BENCH_COLUMNS) - 2)])
            continue
        rows.append([
            r["format"], r["runtime"], r["precision"], round(r["latency_ms_median"], 3), round(r["latency_ms_p90"], 3),
            round(r["throughput_img_s"]), round(r["throughput_img_s"] / base, 2) if base else None,
            r.get("accuracy"), round(r["file_bytes"] / 1e6, 3),
        ])  # fmt: skip
    where = f"{bench.get('cpu', '')}, {bench.get('threads', '')} threads" if bench else ""
    return where, rows
