"""cnn-bench: which format to ship: latency, throughput, accuracy and size of every format, side by side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from cnn_train.cli.common import USER_ERRORS, checkpoint_arg, config_dir, console, fail, run_app, user_error
from cnn_train.config import BENCH_FORMATS, check_declared_keys
from cnn_train.runtime import files
from cnn_train.runtime.errors import UserError


def checked(cfg: DictConfig) -> tuple[Path, list[str], int]:
    """The checkpoint, the formats and the thread count, every key checked before torch is imported."""
    check_declared_keys(cfg)
    formats = list(cfg.formats) if cfg.formats is not None else list(BENCH_FORMATS)
    for name in formats:
        if name not in BENCH_FORMATS:
            raise UserError(f"formats: {name!r} is not one of {', '.join(BENCH_FORMATS)}")
    for key in ("batch_size", "latency_runs", "throughput_runs", "calibration_images"):
        if cfg[key] < 1:
            raise UserError(f"{key}: {cfg[key]} must be ≥ 1")
    if cfg.warmup < 0:
        raise UserError(f"warmup: {cfg.warmup} must be ≥ 0")
    ckpt = checkpoint_arg(cfg)
    if ckpt.suffix != ".pt":
        raise UserError(f"ckpt: {ckpt} is not a checkpoint (.pt); the bench makes the ONNX files from it")
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: no such checkpoint file")
    threads = cfg.threads
    if threads == "auto":
        from cnn_train.runtime.hardware import physical_cores

        threads = physical_cores()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise UserError(f"threads: {threads!r} must be auto or a whole number ≥ 1")
    return ckpt, formats, threads


def table(report: dict[str, Any]) -> Table:
    """One row per format; speed-ups against PyTorch eager fp32 on the same CPU."""
    title = (f"{report['model']} on {report['data']} ({'×'.join(map(str, report['input']))} input), "
             f"{report['cpu']}, {report['threads']} threads")  # fmt: skip
    t = Table(title=title)
    heads = ("format", "runtime", "precision", "batch-1 ms (median)", "p90 ms", "img/s", "× fp32", "accuracy",
             "size")  # fmt: skip
    for head in heads:
        t.add_column(head, justify="left" if head in ("format", "runtime", "precision") else "right")
    measured = {r["format"]: r for r in report["records"] if "skipped" not in r}
    base = measured.get("pytorch", {}).get("throughput_img_s")
    for r in report["records"]:
        if "skipped" in r:
            t.add_row(r["format"], f"skipped: {r['skipped']}", *[""] * (len(heads) - 2))
            continue
        ratio = f"{r['throughput_img_s'] / base:.2f}" if base else ""
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else ""
        t.add_row(
            r["format"], r["runtime"], r["precision"], f"{r['latency_ms_median']:.3f}", f"{r['latency_ms_p90']:.3f}",
            f"{r['throughput_img_s']:.0f}", ratio, acc, f"{r['file_bytes'] / 1e6:.2f} MB",
        )  # fmt: skip
    return t


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="bench")
def _bench(cfg: DictConfig) -> None:
    try:
        ckpt, formats, threads = checked(cfg)
        from cnn_train.analysis.benchmark import bench

        report = bench(
            ckpt, formats, threads, int(cfg.batch_size), int(cfg.latency_runs), int(cfg.throughput_runs),
            int(cfg.warmup), bool(cfg.accuracy), cfg.limit_batches, int(cfg.calibration_images),
            say=lambda s: console.print(s, highlight=False),
        )  # fmt: skip
        out = Path(cfg.output) if cfg.output else ckpt.parent / "bench.json"
        files.write_json(out, report)
    except USER_ERRORS as e:
        fail(user_error(e))
        return
    Console(width=None if sys.stdout.isatty() else 160).print(table(report))
    console.print(f"wrote {out}", highlight=False)
    if out.parent == ckpt.parent and (ckpt.parent / "results.json").is_file():
        from cnn_train.reports.run import write_run_report

        console.print(f"wrote {write_run_report(ckpt.parent)}", highlight=False)


def main() -> None:
    """`cnn-bench ckpt=...`: every format of a checkpoint, measured."""
    run_app(_bench)
