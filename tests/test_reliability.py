"""Never lose a run, never run foreign code, never crash on a bad file (on real files; a real process is
killed or signalled, and its run resumed through the same entry point in this process)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_train.inference import checkpoint
from cnn_train.runtime.errors import Interrupted, UserError
from cnn_train.training.engine import NonFiniteLoss
from cnn_train.training.fit import fit
from tests.conftest import BIN, cli, make_config, sigterm_after_first_save, write_folder

# Deterministic LeNet, 3 epochs of 60 batches, a mid-epoch checkpoint every 10 steps.
RUN = [
    "model=lenet", "trainer.max_epochs=3", "trainer.limit_train_batches=60", "trainer.limit_val_batches=5",
    "trainer.limit_test_batches=5", "data.batch_size=64", "trainer.deterministic=true",
    "trainer.checkpoint_every_n_steps=10", "optimizer.lr=0.003", "augmentation=basic",
]  # fmt: skip
TIMING = {"seconds", "images_per_s"}  # wall-clock columns; every other column must match exactly


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    proc = cli("cnn-train", *RUN, f"hydra.run.dir={run_dir}", cwd=run_dir)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def start_and_stop(run_dir: Path, sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Start a run, send `sig` as soon as its first mid-epoch last.pt exists, and wait for it."""
    proc = subprocess.Popen(
        [str(BIN / "cnn-train"), *RUN, f"hydra.run.dir={run_dir}"],
        cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run_dir / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(reference: Path, tmp_path: Path) -> None:
    killed = start_and_stop(tmp_path, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "results.json").exists(), "the run finished before the kill: make it longer"
    checkpoint.load(tmp_path / "last.pt")  # whole, whatever instant the kill came at
    resumed = cli("cnn-train", *RUN, f"hydra.run.dir={tmp_path}", "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in (tmp_path / "train.log").read_text()
    assert metrics(tmp_path) == metrics(reference)
    ours, theirs = (json.loads((d / "results.json").read_text()) for d in (tmp_path, reference))
    assert ours["test_acc"] == theirs["test_acc"] and ours["best_epoch"] == theirs["best_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_last_and_says_how_to_resume(
    reference: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    stopped = start_and_stop(tmp_path, sig)
    assert stopped.returncode == 128 + sig, stopped.stderr
    assert f"stopped by {sig.name} at epoch 1" in stopped.stderr
    hint = next(line for line in stopped.stderr.splitlines() if line.startswith("resume with: "))
    assert f"hydra.run.dir={tmp_path}" in hint and hint.endswith("trainer.resume=auto")
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["epoch"] == 0 and last["partial"]["step"] >= 10
    if sig is signal.SIGINT:
        return  # both signals stop through one handler: resuming from its last.pt is tested once, below
    args = hint.removeprefix("resume with: cnn-train ").split()
    resumed = cli("cnn-train", *args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(tmp_path) == metrics(reference)


def test_nan_loss_stops_and_keeps_last_good_checkpoints(fashion_root: Path, tmp_path: Path) -> None:
    # A step schedule that multiplies the lr by 1e30 after epoch 1 blows the weights up in epoch 2.
    cfg = make_config(
        "model=lenet", "trainer.max_epochs=3", "trainer.limit_train_batches=20", "trainer.limit_val_batches=3",
        "scheduler=step", "scheduler.step_epochs=1", "scheduler.gamma=1e30",
    )  # fmt: skip
    with pytest.raises(NonFiniteLoss, match=r"loss became (nan|inf) at epoch 2, step \d+"):
        fit(cfg, tmp_path)
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == 1
    last = checkpoint.load(tmp_path / "last.pt")
    assert last["epoch"] == 1 and "partial" not in last
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_resume_refuses_another_architecture(fashion_root: Path, tmp_path: Path) -> None:
    fit(make_config("model=lenet", "trainer.max_epochs=1", "trainer.limit_train_batches=2"), tmp_path / "a")
    cfg = make_config("model=mlp", "trainer.max_epochs=2", f"trainer.resume={tmp_path / 'a' / 'last.pt'}")
    with pytest.raises(UserError, match="trainer.resume: .*last.pt holds lenet .* but this run builds mlp"):
        fit(cfg, tmp_path / "b")


def test_cli_refuses_a_malicious_checkpoint_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format": checkpoint.FORMAT, "state_dict": Payload()}, tmp_path / "evil.pt")
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    proc = cli("cnn-predict", "ckpt=evil.pt", "img=x.png", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        and "evil.pt: refused to load" in proc.stderr
    )
    assert not marker.exists()


def odd_folder(root: Path) -> list[str]:
    """A train/val folder with broken files beside images in every awkward mode; returns the broken ones."""
    write_folder(root / "train", 6, seed=0)
    write_folder(root / "val", 2, seed=1)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(root / "train" / "red" / "cmyk.jpg")
    rgb.convert("P").save(root / "train" / "red" / "palette.png")
    rgb.convert("RGBA").save(root / "train" / "blue" / "rgba.png")
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(
        root / "train" / "green" / "deep.png"
    )
    good = (root / "train" / "red" / "1.png").read_bytes()
    broken = {
        root / "train" / "red" / "truncated.png": good[: len(good) // 3],
        root / "train" / "blue" / "empty.jpg": b"",
        root / "train" / "green" / "text.png": b"hello, I am not a picture",
    }
    for path, data in broken.items():
        path.write_bytes(data)
    return sorted(str(p) for p in broken)


def test_odd_and_broken_images_are_listed_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = odd_folder(tmp_path / "photos")
    overrides = [
        "model=lenet", "data=image_folder", f"data.root={tmp_path / 'photos'}", "data.image_size=32",
        "data.num_workers=0", "data.batch_size=8", "trainer.max_epochs=1",
    ]  # fmt: skip
    caplog.set_level("INFO")
    fit(make_config(*overrides), tmp_path / "run")
    assert "22 train / 6 val images" in caplog.text  # 18 class images and 4 odd modes; the 3 broken skipped
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert all(p in warned for p in broken)
    with pytest.raises(UserError, match="data.strict: 3 unreadable image"):
        fit(make_config(*overrides, "data.strict=true"), tmp_path / "strict")


def test_folder_problems_are_one_line_each(tmp_path: Path) -> None:
    write_folder(tmp_path / "a", 2, seed=0)
    (tmp_path / "a" / "empty_class").mkdir()
    with pytest.raises(UserError, match="data.root: .*Found no valid file for the classes empty_class"):
        fit(make_config("data=image_folder", f"data.root={tmp_path / 'a'}"), tmp_path / "r1")
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match="data.root: .*Couldn't find any class folder"):
        fit(make_config("data=image_folder", f"data.root={tmp_path / 'b'}"), tmp_path / "r2")


def test_image_folder_resumes_mid_epoch_like_an_uninterrupted_run(folder_root: Path, tmp_path: Path) -> None:
    """Files decoded by the loader every epoch (no cache): the resumed epoch replays its shuffle exactly."""
    over = [
        "model=lenet", "data=image_folder", f"data.root={folder_root}", "data.image_size=32", "data.cache=false",
        "data.num_workers=0", "data.batch_size=4", "trainer.max_epochs=2", "trainer.deterministic=true",
        "trainer.checkpoint_every_n_steps=3", "augmentation=basic",
    ]  # fmt: skip
    fit(make_config(*over), tmp_path / "reference")
    watcher = sigterm_after_first_save(tmp_path / "stopped")
    with pytest.raises(Interrupted, match="SIGTERM at epoch 1"):
        fit(make_config(*over), tmp_path / "stopped")
    watcher.join()
    assert checkpoint.load(tmp_path / "stopped" / "last.pt")["partial"]["step"] >= 3
    fit(make_config(*over, "trainer.resume=auto"), tmp_path / "stopped")
    assert metrics(tmp_path / "stopped") == metrics(tmp_path / "reference")
    ours, theirs = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("stopped", "reference"))
    assert (ours["test_acc"], ours["test_loss"]) == (theirs["test_acc"], theirs["test_loss"])


def test_resume_refuses_another_class_count(folder_root: Path, fashion_root: Path, tmp_path: Path) -> None:
    fit(make_config("model=lenet", "trainer.max_epochs=1", "trainer.limit_train_batches=2"), tmp_path / "a")
    cfg = make_config(
        "model=lenet", "data=image_folder", f"data.root={folder_root}", "data.image_size=28", "data.channels=1",
        "trainer.max_epochs=2", f"trainer.resume={tmp_path / 'a' / 'last.pt'}",
    )  # fmt: skip
    with pytest.raises(UserError, match=r"last.pt holds lenet .*'num_classes': 10.* but this run builds lenet "
                                        r".*'num_classes': 3"):  # fmt: skip
        fit(cfg, tmp_path / "b")
