"""Every override the README shows composes: a key it names that the config lacks fails here."""

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

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIG_OF = {f"cnn-{name}": name for name in ("train", "predict", "eval", "export", "summary")}
CONFIG_OF["cnn-lrfind"] = "train"  # the range test takes every cnn-train override
CONFIG_OF["cnn-data"] = "data_check"
NEEDS_FILES = ("img=", "ckpt=")  # a real image or checkpoint: the end-to-end tests run those
TRAIN_KEYS = "|".join(f.name for f in dataclasses.fields(TrainConfig))


def shown_commands(text: str) -> list[str]:
    """Command lines in fenced blocks and in inline spans that start with a console script, and inline spans
    made only of `group.key=value` overrides of the train config (`trainer.sync_batchnorm=true`)."""
    lines = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        lines += block.replace("\\\n", " ").splitlines()
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


def cases() -> list[tuple[str, list[str]]]:
    """(config name, overrides) per command; a sweep (`-m a=1,2`) gives one case per value."""
    found = []
    for command in shown_commands(README.read_text()):
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


CASES = cases()


def test_the_readme_shows_overrides() -> None:
    names = {name for name, _ in CASES}
    assert len(CASES) > 20 and names >= {"train", "eval", "summary"}
    shown = {o.split("=")[0] for _, overrides in CASES for o in overrides}
    assert {"trainer.sync_batchnorm", "model.finetune", "hydra.sweeper.n_trials"} <= shown


def test_readme_overrides_parse() -> None:
    """As the shell passes them: it does not expand ~ after `data.root=`, and Hydra's grammar refuses it."""
    OverridesParser.create().parse_overrides([o for _, overrides in CASES for o in overrides])


@pytest.mark.parametrize("name,overrides", CASES, ids=[f"{n}: {' '.join(o)}" for n, o in CASES])
def test_readme_override_composes(name: str, overrides: list[str]) -> None:
    overrides = [o.replace("$HOME", "/home/you") for o in overrides]  # what the shell passes
    cfg = make_config(*overrides, config_name=name, return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.pop("hydra")  # checked by Hydra's own schema while composing
    check_declared_keys(cfg)  # a +key=value the schema lacks
