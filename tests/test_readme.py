"""Every override README.md and the docs pages show composes: a key they name that the config lacks fails here.

Commands are read from fenced blocks and inline spans of README.md and docs/*.md; a command shown on
several pages is composed once, under the first page that shows it.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import open_dict, read_write

from cnn_train.config import TrainConfig, check_declared_keys
from tests.conftest import make_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHOWN_IN = [README, *sorted((ROOT / "docs").glob("*.md"))]  # every page a user reads
README_LIMIT = 10 * 1024  # bytes: the front door fits on a screen; the rest lives in docs/
CONFIG_OF = {f"cnn-{name}": name for name in ("train", "predict", "eval", "export", "summary")}
CONFIG_OF["cnn-lrfind"] = "train"  # the range test takes every cnn-train override
CONFIG_OF["cnn-data"] = "data_check"
CONFIG_OF["cnn-bench"] = "bench"
NOT_COMPOSED = {"cnn-report"}  # it takes a directory, no config
NEEDS_FILES = ("img=", "ckpt=")  # a real image or checkpoint: the end-to-end tests run those
TRAIN_KEYS = "|".join(f.name for f in dataclasses.fields(TrainConfig))


def fenced_lines(text: str) -> list[str]:
    """The lines of every fenced block, a `\\`-continued line joined to the next."""
    lines = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def shown_commands(text: str) -> list[str]:
    """Command lines in fenced blocks and in inline spans that start with a console script, and inline spans
    made only of `group.key=value` overrides of the train config (`trainer.sync_batchnorm=true`)."""
    lines = fenced_lines(text)
    for span in re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)):
        span = " ".join(span.split())
        if re.match(r"(\./run )?cnn-", span):
            lines.append(span)
        elif all(re.fullmatch(rf"({TRAIN_KEYS})\.[\w.]+=\S+", t) for t in span.split()):
            lines.append(f"cnn-train {span}")
    commands = []
    for line in lines:
        line = line.split(" #")[0].strip().removeprefix("./run ")
        if line.split(" ")[0] in CONFIG_OF:
            commands.append(line)
    return commands


def cases(text: str) -> list[tuple[str, list[str]]]:
    """(config name, overrides) per command in `text`; a sweep (`-m a=1,2`) gives one case per value."""
    found = []
    for command in shown_commands(text):
        tool, *words = shlex.split(command)
        given = [w for w in words if "=" in w and not w.startswith(NEEDS_FILES)]
        try:
            parsed = OverridesParser.create().parse_overrides(given)
        except OverrideParseException:
            found.append((CONFIG_OF[tool], given))  # composing it reports the syntax error
            continue
        variants: list[list[str]] = [[]]
        for override in parsed:
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [override.get_value_element_as_str()]
            )
            prefix = override.get_key_element()
            variants = [[*v, f"{prefix}={value}"] for v in variants for value in values]
        found += [(CONFIG_OF[tool], v) for v in variants if (CONFIG_OF[tool], v) not in found]
    return found


def all_cases() -> list[tuple[str, str, list[str]]]:
    """(page, config name, overrides) over every page, each command once (where it is first shown)."""
    seen, found = set(), []
    for path in SHOWN_IN:
        for name, overrides in cases(path.read_text()):
            if (name, tuple(overrides)) not in seen:
                seen.add((name, tuple(overrides)))
                found.append((path.name, name, overrides))
    return found


CASES = all_cases()


def test_readme_fits_on_a_screen() -> None:
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes (at most {README_LIMIT}): move detail to docs/"


@pytest.mark.parametrize("path", SHOWN_IN, ids=[p.name for p in SHOWN_IN])
def test_every_shown_command_is_one_this_test_composes(path: Path) -> None:
    """A command this test does not know (a typo such as `cnn-trian`) or an unclosed fence would go unchecked."""
    text = path.read_text()
    assert text.count("```") % 2 == 0, f"{path.name}: a fenced block is not closed"
    shown = {line.strip().removeprefix("./run ").split(" ")[0] for line in fenced_lines(text)}
    unknown = {tool for tool in shown if tool.startswith("cnn-")} - set(CONFIG_OF) - NOT_COMPOSED
    assert not unknown, f"{path.name} shows {sorted(unknown)}: add it to CONFIG_OF or NOT_COMPOSED"


def test_the_docs_show_overrides() -> None:
    pages = {page for page, _, _ in CASES}
    assert {"README.md", "training.md", "sweeps.md", "scale.md", "transfer.md"} <= pages
    names = {name for _, name, _ in CASES}
    assert len(CASES) > 40 and names >= {"train", "predict", "eval", "export", "summary", "data_check"}
    shown = {o.split("=")[0] for _, _, overrides in CASES for o in overrides}
    assert {"trainer.sync_batchnorm", "model.finetune", "hydra.sweeper.n_trials"} <= shown


def test_shown_overrides_parse() -> None:
    """As the shell passes them: it does not expand ~ after `data.root=`, and Hydra's grammar refuses it."""
    OverridesParser.create().parse_overrides([o for _, _, overrides in CASES for o in overrides])


# README.md's commands in the fast lane; the docs pages' (a quarter second each to compose) in the full suite.
SHOWN_CASES = [
    pytest.param(page, name, overrides, id=f"{page}: {name}: {' '.join(overrides)}",
                 marks=() if page == README.name else pytest.mark.slow)
    for page, name, overrides in CASES
]  # fmt: skip


@pytest.mark.parametrize("page,name,overrides", SHOWN_CASES)
def test_shown_override_composes(page: str, name: str, overrides: list[str]) -> None:
    overrides = [o.replace("$HOME", "/home/you") for o in overrides]  # what the shell passes
    cfg = make_config(*overrides, config_name=name, return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.pop("hydra")  # checked by Hydra's own schema while composing
    check_declared_keys(cfg)  # a +key=value the schema lacks
