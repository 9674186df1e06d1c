"""The console scripts as a user runs them, through their installed entry points (in this process: see
`cli` in conftest.py), on real Fashion-MNIST, with assertions on the files they write."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_train.data.datasets import read_idx
from tests.conftest import cli, only_run


@pytest.mark.slow
def test_cnn_train_writes_the_run_dir(workdir: Path) -> None:
    run_dir = only_run(workdir)
    for name in ["best.pt", "last.pt", "class_indices.json", "metrics.csv", "results.json", "train.log"]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_acc"] > 0.6  # chance is 0.1
    assert {"test_acc", "best_val_acc", "best_epoch", "wall_seconds"} <= set(results)
    with (run_dir / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    assert "epoch 2/2" in (run_dir / "train.log").read_text()
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cnn_predict_rgba_png_uses_newest_checkpoint(workdir: Path, fashion_root: Path) -> None:
    img = read_idx(fashion_root / "t10k-images-idx3-ubyte.gz")[1].numpy()  # a pullover
    rgba = np.stack([img, img, img, np.full_like(img, 255)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(workdir / "shirt.png")
    proc = cli("cnn-predict", "img=shirt.png", "topk=3", "output=preds.json", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "using the newest checkpoint" in proc.stderr and "best.pt" in proc.stderr
    classes = json.loads((only_run(workdir) / "class_indices.json").read_text()).values()
    line = proc.stdout.strip()
    assert line.startswith("shirt.png") and sum(c in line for c in classes) >= 3
    preds = json.loads((workdir / "preds.json").read_text())
    assert len(preds) == 1 and len(preds[0]["topk"]) == 3


def test_cnn_predict_reports_a_bad_file_and_exits_nonzero(workdir: Path) -> None:
    folder = workdir / "mixed"
    folder.mkdir()
    Image.new("L", (28, 28), 0).save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    ckpt = only_run(workdir) / "best.pt"
    proc = cli("cnn-predict", f"ckpt={ckpt}", f"img={folder}", cwd=workdir)
    assert proc.returncode == 1
    assert "ok.png" in proc.stdout and "broken.png: not a readable image" in proc.stderr


@pytest.mark.slow
def test_bad_value_is_one_line_and_keeps_checkpoints(workdir: Path) -> None:
    proc = cli("cnn-train", "optimizer.lr=-1", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: optimizer.lr: -1 must be > 0"]
    proc = cli("cnn-predict", "img=shirt.png", "ckpt=nothing.pt", cwd=workdir)
    assert proc.returncode == 2 and "nothing.pt: no such checkpoint file" in proc.stderr
    assert (only_run(workdir) / "best.pt").is_file()


def test_unknown_model_lists_choices(tmp_path: Path) -> None:
    """One line naming the group and every choice, exit status 2 (not Hydra's multi-line report, status 1)."""
    from cnn_train.models import list_models

    proc = cli("cnn-train", "model=resnet7", cwd=tmp_path)
    assert proc.returncode == 2
    choices = ", ".join(sorted(list_models()))
    assert proc.stderr.strip().splitlines() == [f"error: model: no choice 'resnet7' (choose {choices})"]


def sweep(cwd: Path, *overrides: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, str]]]:
    """`cnn-train -m` on a few batches; returns the process and the rows of its one summary.csv."""
    proc = cli(
        "cnn-train", "-m", *overrides, "trainer.max_epochs=1", "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=5", "trainer.limit_test_batches=5", cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summaries = list((cwd / "outputs" / "multirun").rglob("summary.csv"))
    assert len(summaries) == 1
    with summaries[0].open() as f:
        return proc, list(csv.DictReader(f))


@pytest.mark.slow
def test_multirun_writes_summary(fashion_root: Path, tmp_path: Path) -> None:
    proc, rows = sweep(tmp_path, "model=lenet,mlp")
    assert [r["swept"] for r in rows] == ["model=lenet", "model=mlp"]
    assert rows[0]["overrides"].startswith("model=lenet trainer.max_epochs=1")
    assert all(r["status"] == "ok" and float(r["test_acc"]) > 0.1 for r in rows)
    assert "sweep summary" in proc.stderr


@pytest.mark.slow
def test_multirun_records_a_failed_job_and_goes_on(fashion_root: Path, tmp_path: Path) -> None:
    _, rows = sweep(tmp_path, "optimizer.lr=-1,0.003")
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "optimizer.lr: -1 must be > 0" in rows[0]["error"]
