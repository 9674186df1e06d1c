"""The docs say what the code does: the configuration reference is generated from the schema and current, every
schema field has a meaning, the defaults lists name every choice, and the site builds without a broken link."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from cnn_train import config

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "docs" / "gen_config_reference.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def test_configuration_page_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == gen.render(), f"docs/configuration.md is stale: run {gen.COMMAND}"


def test_every_schema_field_has_a_one_line_meaning() -> None:
    missing = gen.missing_comments()
    assert not missing, f"give these fields a trailing `# comment` in src/cnn_train/config.py: {missing}"


def test_the_page_names_every_key_of_every_schema() -> None:
    """Walked from the dataclasses themselves, not from the generator's own walk."""
    page = gen.render()

    def keys(cls: type, prefix: str = "") -> list[str]:
        found = []
        hints = typing.get_type_hints(cls, vars(config))
        for f in dataclasses.fields(cls):
            found.append(prefix + f.name)
            inner = [
                t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)
            ]
            found += keys(inner[0], f"{prefix}{f.name}.") if inner else []
        return found

    every = {k for schema in config.SCHEMAS.values() for k in keys(schema)}
    missing = sorted(k for k in every if f"| `{k}` |" not in page)
    assert not missing, f"not on the page: {missing}"
    # the trainer's defaults, as the schema declares them, are on the page as an override would type them
    assert "| `trainer.lr_find_range` | `list[float]` | `[1.0e-07, 10.0]` |" in page
    assert "| `trainer.early_stopping.monitor` | `str` | `val_acc` |" in page


def test_comments_are_read_from_every_line_of_a_wrapped_field() -> None:
    """ruff format wraps a long field over several lines; its comment may land on any of them."""
    source = """
from dataclasses import dataclass

@dataclass
class Example:
    plain: int = 1  # one line
    wrapped: float | None = (
        None  # the comment inside the parentheses
    )
    bare: str = "x"
"""
    comments = gen.field_comments(source)
    assert comments[("Example", "plain")] == "one line"
    assert comments[("Example", "wrapped")] == "the comment inside the parentheses"
    assert comments[("Example", "bare")] == ""
    assert gen.field_annotations(source)[("Example", "wrapped")] == "float | None"


def test_group_files_become_rows_with_their_comments() -> None:
    header, rows = gen.yaml_rows(
        "# @package _global_\n# A recipe.\ndefaults:\n  - override /model: resnet9  # the net\n"
        "model:\n  args:  # options\n    width: 8   # channels\nurl: 'a #b'  # kept\n"
    )
    assert header == ["A recipe."]
    assert rows == [
        ("defaults", "override /model: resnet9", "the net"),
        ("model.args", "", "options"),
        ("model.args.width", "8", "channels"),
        ("url", "'a #b'", "kept"),  # a # inside quotes is part of the value
    ]


def test_train_defaults_list_names_every_choice() -> None:
    """configs/train.yaml's comment on each group of its defaults list names every file of that group."""
    _, rows = gen.yaml_rows((ROOT / "configs" / "train.yaml").read_text())
    short = []
    for entry, comment in ((v, c) for k, v, c in rows if k == "defaults"):
        group = entry.partition(":")[0].strip()
        folder = ROOT / "configs" / group
        if not folder.is_dir() or group in gen.SKIPPED_GROUPS:
            continue  # the schema, _self_, `optional model_data` (chosen by model and data), Hydra's own
        named = set(re.findall(r"[\w-]+", comment))
        short += [f"{group}: {p.stem}" for p in sorted(folder.glob("*.yaml")) if p.stem not in named]
    assert not short, f"configs/train.yaml's defaults-list comments leave out {short}"


def test_experiments_say_how_many_epochs_they_run() -> None:
    """An experiment whose comments name an epoch count run that many (`trainer.max_epochs`)."""
    wrong = []
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        epochs = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("max_epochs")
        said = {int(n) for n in re.findall(r"(\d+) epochs", path.read_text())}
        if epochs is not None and said - {epochs}:
            wrong.append(f"{path.name}: says {sorted(said)} epochs, runs {epochs}")
    assert not wrong, wrong


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="the docs extra is not installed")
def test_site_builds_strict(tmp_path: Path) -> None:
    """A broken link, a missing page or a page left out of the nav fails `mkdocs build --strict`."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "configuration" / "index.html").is_file()
