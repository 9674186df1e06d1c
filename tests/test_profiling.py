"""trainer.profile: a real tiny run writes the top-ops table and a Chrome trace of the recorded steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnn_train.runtime.errors import UserError
from cnn_train.training.fit import check_config, fit
from tests.conftest import make_config


@pytest.fixture(scope="module")
def profiled_run(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("profiled")
    cfg = make_config(
        "model=lenet", "data.batch_size=32", "trainer.max_epochs=2", "trainer.limit_train_batches=9",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.profile=true",
        "trainer.profile_steps=3",
    )  # fmt: skip
    fit(cfg, run_dir)
    return run_dir


def test_profile_table_names_the_step_ops_with_their_shares(profiled_run: Path) -> None:
    text = (profiled_run / "profile.txt").read_text()
    assert text.startswith("steps 3-5 of the first epoch (3 recorded after 2 unrecorded)")
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.startswith("aten::")}
    # LeNet's step: convolutions forward and backward, its linear layers as matrix products
    assert {"aten::convolution_backward", "aten::addmm"} <= rows.keys(), text
    assert float(rows["aten::convolution_backward"][1]) == 2.0  # two conv layers, once per step
    shares = [float(r[3].rstrip("%")) for r in rows.values()]
    assert sum(shares) <= 100.5 and max(shares) > 5  # shares of one wall-clock window, not of each other


def test_profile_trace_holds_exactly_the_recorded_steps_of_the_first_epoch(profiled_run: Path) -> None:
    events = json.loads((profiled_run / "profile_trace.json").read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {
        "ProfilerStep#3",
        "ProfilerStep#4",
        "ProfilerStep#5",
    }  # no warm-up, no second round, no epoch 2
    convs = [e for e in events if e.get("name") == "aten::convolution"]
    assert convs and convs[0]["args"]["Input Dims"][0] == [32, 1, 28, 28]


def test_profile_steps_must_be_a_whole_number() -> None:
    with pytest.raises(UserError, match="trainer.profile_steps: 0 must be a whole number"):
        check_config(make_config("trainer.profile_steps=0"))  # before any data is read
