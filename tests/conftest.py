"""Fixtures that write real-format data (IDX, CIFAR pickle batches, image folders) and compose real configs.

torch, Hydra and cnn_train are imported where they are used, not at the top: pytest-xdist's controller loads
this file too, and it runs no test (a top-level `import torch` costs it seconds before any worker starts).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING
from unittest.mock import patch

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BIN = Path(sys.executable).parent  # the console scripts of the environment the tests run in
# A tiny run: 2 training batches of 8, one validation and one test batch.
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.batch_size=8",
    "data.num_workers=0",
]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets its own share of the CPUs.

    `trainer.threads=auto` (and torch) then use that share: two workers on two cores run one thread each
    instead of four threads fighting over two cores. Console scripts the tests start inherit the share.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= int(count):
        mine = cpus[int(worker.removeprefix("gw")) :: int(count)]
        os.sched_setaffinity(0, mine)
        # torch sizes its thread pool from the machine's cores, not this share; two threads spinning on one core
        # run 10× slower
        import torch

        torch.set_num_threads(len(mine))


def make_config(*overrides: str, config_name: str = "train", return_hydra_config: bool = False) -> DictConfig:
    """Compose the real configs the way the CLI does.

    In-process training runs skip report.html (`trainer.report=false`) unless a test asks for it: its
    figures cost a third of a tiny run; tests/test_report.py and the console-script tests cover it.
    """
    from hydra import compose, initialize_config_dir

    from cnn_train.config import register_schemas

    register_schemas()
    overrides = list(overrides)
    if config_name == "train" and not any(o.lstrip("+~").startswith("trainer.report=") for o in overrides):
        overrides.append("trainer.report=false")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    """Real Fashion-MNIST from Debian's dataset-fashion-mnist (installed by .ci/run)."""
    from cnn_train.data.datasets import DEBIAN_FASHION_MNIST

    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's dataset-fashion-mnist")
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return DEBIAN_FASHION_MNIST


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (unsigned byte) as LeCun's files have it, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def class_images(n: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose brightness pattern depends on the class, so a network can learn them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, channels, size, size))
    for i, y in enumerate(labels):
        band = size // 10 * y
        images[i, :, band : band + max(1, size // 10), :] += 190
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST in torchvision's raw layout, gzipped IDX files."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", 300, 0), ("t10k", 100, 1)):
        x, y = class_images(n, 1, 28, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10's python version: pickled dicts with bytes keys, data as N×3072 uint8 rows."""
    root = tmp_path_factory.mktemp("cifar")
    batches = root / "cifar-10-batches-py"
    batches.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        x, y = class_images(40, 3, 32, seed=10 + i)
        entry = {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": x.reshape(40, -1)}
        entry[b"filenames"] = [f"{name}_{j}.png".encode() for j in range(40)]
        (batches / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": 40, b"num_vis": 3072}
    (batches / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_folder(root: Path, per_class: int, seed: int, size: int = 40) -> None:
    """red/green/blue class folders of PNG and JPEG photos of varying size, plus a stray text file."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(["blue", "green", "red"]):
        folder = root / name
        folder.mkdir(parents=True)
        for j in range(per_class):
            h, w = size + int(rng.integers(0, 20)), size + int(rng.integers(0, 20))
            img = rng.integers(0, 80, (h, w, 3))
            img[..., 2 - c] += 170
            ext = "png" if j % 2 else "jpg"
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{j}.{ext}")
        (folder / "notes.txt").write_text("not an image")


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train, root/val and root/test class folders."""
    root = tmp_path_factory.mktemp("flowers")
    for i, (split, n) in enumerate((("train", 12), ("val", 4), ("test", 4))):
        write_folder(root / split, n, seed=i)
    return root


def sigterm_after_first_save(run_dir: Path) -> threading.Thread:
    """SIGTERM this process as soon as the run's first mid-epoch last.pt exists, as a cluster's notice would."""

    def watch() -> None:
        deadline = time.monotonic() + 300
        while not (run_dir / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        if (run_dir / "last.pt").exists():  # inside fit: its StopRequests turns the signal into a clean stop
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def run(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A console script as a user runs it, in its own process in `cwd`; what it printed and its exit status.

    For tests about the process itself (exit status seen by a shell, signals, what it imports); others use
    `cli`, which runs the same entry point without the seconds a new process spends importing torch.
    """
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


@contextlib.contextmanager
def loggers_kept() -> Iterator[None]:
    """Hydra configures logging for every job it runs (handlers on the root logger, a train.log file);
    afterwards the loggers are as they were, so a later test neither writes to that file nor loses pytest's."""

    def every() -> list[logging.Logger]:
        named = logging.Logger.manager.loggerDict.values()
        return [logging.root, *(lg for lg in named if isinstance(lg, logging.Logger))]

    saved = {lg: (lg.level, lg.handlers[:], lg.propagate, lg.disabled) for lg in every()}
    try:
        yield
    finally:
        for lg in every():
            level, handlers, propagate, disabled = saved.get(lg, (logging.NOTSET, [], True, False))
            for handler in set(lg.handlers) - set(handlers):
                handler.close()
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


def cli(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A console script run in this process, in `cwd`: what it printed and its exit status, as `run` gives.

    The same entry point a user's shell starts (looked up in the installed console scripts), the same argv;
    only torch's import is not paid again (seconds each on a 2-core CPU).
    """
    (entry,) = entry_points(group="console_scripts", name=tool)
    main = entry.load()
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    try:
        with (
            # as `run` has it; the tool sets it to 1 for itself, and patch.dict puts the environment back
            patch.dict(os.environ, {"HYDRA_FULL_ERROR": "0"}),
            patch.object(sys, "argv", [tool, *args]),
            contextlib.chdir(cwd),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            loggers_kept(),
        ):
            main()
    except SystemExit as e:
        code = e.code
    if isinstance(code, str):  # sys.exit("message"): printed to stderr, status 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess([tool, *args], code or 0, out.getvalue(), err.getvalue())


SLICE = [
    "trainer.limit_train_batches=80",
    "trainer.limit_val_batches=10",
    "trainer.limit_test_batches=20",
]


@pytest.fixture(scope="session")
def workdir(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder after `cnn-train model=lenet` on a slice of real Fashion-MNIST (trained once; tests add
    files to it but no other finished run)."""
    cwd = tmp_path_factory.mktemp("user")
    proc = cli("cnn-train", "model=lenet", "trainer.max_epochs=2", "optimizer.lr=0.003", *SLICE, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd


def only_run(cwd: Path) -> Path:
    """The one finished run dir under `cwd`'s outputs/ (sweeps aside)."""
    runs = [p.parent for p in (cwd / "outputs").rglob("results.json") if "multirun" not in str(p)]
    assert len(runs) == 1
    return runs[0]
