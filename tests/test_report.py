"""report.html: a 2-trial Optuna sweep on real Fashion-MNIST writes one per job and one for the sweep;
headless Chromium opens both with no console error, every figure decoded, and the tables sort."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.browser import open_page
from tests.conftest import cli

TINY_SWEEP = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
              "trainer.limit_test_batches=2", "data.batch_size=8", "data.num_workers=0"]  # fmt: skip
FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@pytest.fixture(scope="module")
def sweep_dir(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cnn-train` with the shipped Optuna search cut to 2 trials, the model among the searched params."""
    cwd = tmp_path_factory.mktemp("report")
    extra = cwd / "configs" / "hparams_search"
    extra.mkdir(parents=True)
    (extra / "two.yaml").write_text(
        "# @package _global_\ndefaults:\n  - optuna\nhydra:\n  sweeper:\n    n_trials: 2\n    params:\n"
        "      model: choice(lenet, mlp)\n"
    )
    sweep = cwd / "sweep"
    proc = cli("cnn-train", "--config-dir", str(cwd / "configs"), "hparams_search=two", *TINY_SWEEP,
               f"hydra.sweep.dir={sweep}", cwd=cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return sweep


@pytest.mark.slow
def test_run_report_has_the_runs_numbers_and_command(sweep_dir: Path) -> None:
    job = sweep_dir / "0"
    page = (job / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from anywhere
    results = json.loads((job / "results.json").read_text())
    assert f"test accuracy {results['test_acc']:.4f}" in page
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    assert "cnn-train " + " ".join(overrides) in page and "trainer.limit_test_batches=2" in overrides
    assert all(name in page for name in FASHION)  # the per-class table
    # The confusion matrix comes from the test pass itself: its accuracy is the one results.json reports.
    test = json.loads((job / "report.json").read_text())["test"]
    matrix = test["confusion_matrix"]
    assert sum(map(sum, matrix)) == 16 and "16 test images" in page
    assert sum(matrix[i][i] for i in range(10)) / 16 == results["test_acc"]
    if (
        results["test_acc"] < 1
    ):  # the misclassified ones, each under the Grad-CAM of the class it was taken for
        assert (job / "misclassified_cam.png").is_file() and "with class activation maps" in page
    assert "61,706" in page or results["model"] == "mlp"  # LeNet's parameter count, as cnn-summary has it


def test_sweep_report_compares_both_jobs(sweep_dir: Path) -> None:
    page = (sweep_dir / "report.html").read_text()
    board = page[page.index("Leaderboard") : page.index("Validation curves")]
    for job in ("0", "1"):
        overrides = yaml.safe_load((sweep_dir / job / ".hydra" / "overrides.yaml").read_text())
        row = board[board.index(f"<tr><td>{job}</td>") :].split("</tr>")[0]
        assert next(o for o in overrides if o.startswith("model=")) in row and "ok" in row
        assert all(o in board for o in overrides)  # the job's own in its row, the shared ones above
    assert "Optuna search" in page and "2 finished trials" in page
    importances = page[page.index("Parameter importances") :]
    assert "optimizer.lr" in importances and "<td>model</td>" in importances
    assert "data.batch_size" not in importances  # fixed on the command line: not searched


def test_cnn_report_rebuilds_the_same_pages(sweep_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from cnn_train.cli.tools import report_main

    for folder in (sweep_dir / "0", sweep_dir):
        before = (folder / "report.html").read_bytes()
        (folder / "report.html").unlink()
        monkeypatch.setattr(sys, "argv", ["cnn-report", str(folder)])
        report_main()
        assert (folder / "report.html").read_bytes() == before
    monkeypatch.setattr(sys, "argv", ["cnn-report", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        report_main()
    assert e.value.code == 2 and str(tmp_path) in capsys.readouterr().err


def test_pages_show_markup_in_names_as_text(sweep_dir: Path, tmp_path: Path) -> None:
    """A class name, an override or an error message holding HTML is shown, never run: autoescaping."""
    from cnn_train.reports.run import write_run_report
    from cnn_train.reports.sweep import write_sweep_report

    evil = "<script>alert(1)</script>"
    sweep = tmp_path / "sweep"
    shutil.copytree(sweep_dir, sweep, ignore=shutil.ignore_patterns("*.pt"))
    job = sweep / "0"
    extra = json.loads((job / "report.json").read_text())
    extra["test"]["per_class"][0]["class"] = evil
    extra["class_counts"] = {split: {evil: 1} for split in extra["class_counts"]}
    (job / "report.json").write_text(json.dumps(extra))
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"+note={evil}"]))
    (sweep / "1" / "results.json").unlink()
    (sweep / "1" / "error.txt").write_text(evil)
    for page in (write_run_report(job), write_sweep_report(sweep)):
        text = page.read_text()
        assert text.count("<script>") == 1 and "<script>alert" not in text  # only the table sorter
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.count("failed: &lt;script&gt;") == 1  # the sweep page: job 1's error, as text


def test_every_run_section_is_a_gatherer_and_an_included_template() -> None:
    """A section is a key of sections.SECTIONS and a run/<key>.html.j2 that run.html.j2 includes."""
    from jinja2 import meta

    from cnn_train.reports.page import environment
    from cnn_train.reports.sections import SECTIONS

    env = environment()
    included = meta.find_referenced_templates(env.parse(env.loader.get_source(env, "run.html.j2")[0]))
    assert {t for t in included if t.startswith("run/")} == {f"run/{key}.html.j2" for key in SECTIONS}


SORT = """(() => {
  const named = t => [...t.tHead.rows[0].cells].findIndex(th => th.textContent === %r);
  const table = [...document.querySelectorAll('table.sortable')].find(t => named(t) >= 0);
  const col = named(table);
  const values = () => [...table.tBodies[0].rows].map(r => r.cells[col].textContent.trim());
  table.tHead.rows[0].cells[col].click();
  const up = values();
  table.tHead.rows[0].cells[col].click();
  return [up, values()];
})()"""


@pytest.mark.slow
@pytest.mark.parametrize("page, images, header", [("0/report.html", 4, "train"), ("report.html", 3, "job")])
def test_reports_render_in_chromium(sweep_dir: Path, page: str, images: int, header: str) -> None:
    browser = open_page(sweep_dir / page)
    try:
        # decode() rejects an image whose data is broken, even where the PNG header gave it a width.
        widths = browser.evaluate(
            "Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth, () => 0)))"
        )
        up, down = browser.evaluate(SORT % header)
        errors = browser.errors
    finally:
        browser.close()
    assert not errors
    assert len(widths) == images and all(w > 0 for w in widths), widths
    key = lambda v: float(v.replace(",", ""))  # noqa: E731
    assert up == sorted(up, key=key) and down == sorted(up, key=key, reverse=True) and len(set(up)) > 1, up
