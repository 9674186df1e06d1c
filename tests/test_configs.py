"""Every option of every config group composes, and the _target_ groups instantiate."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnn_train.data.datasets import DATASETS
from cnn_train.models import list_models
from cnn_train.training.schedules import Schedule
from tests.conftest import CONFIGS, make_config

GROUPS = ["model", "data", "optimizer", "scheduler", "augmentation", "trainer", "experiment", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIGS / g).glob("*.yaml"))]


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} for every value a YAML mapping sets (a list is one value)."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, sub in node.items() for k, v in leaves(sub, f"{prefix}.{key}".lstrip(".")).items()}


def choice_file(group: str, choice: str) -> tuple[dict[str, Any], list[tuple[str, str]], bool]:
    """The values a choice's file sets itself, at their place in the config; the group choices its defaults
    list overrides (`override /model: resnet9` → ("model", "resnet9")); whether it is a global recipe."""
    path = CONFIGS / group / f"{choice}.yaml"
    spec = OmegaConf.to_container(OmegaConf.load(path)) or {}
    is_global = "# @package _global_" in path.read_text()
    overrides = [next(iter(e.items())) for e in spec.pop("defaults", []) if isinstance(e, dict)]
    values = leaves(spec, "" if is_global else group) if spec else {}
    return values, [(k.removeprefix("override /"), c) for k, c in overrides], is_global


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes(group: str, option: str) -> None:
    """The choice landed: every value its file sets (its `name` or `_target_` among them) is in the composed
    config, and so is every value of the group choices its defaults list overrides, except where a config
    applied later changes it on purpose: the model_data pairing of the composed model and data (after the
    group choices, before a global recipe's own values) and the command line."""
    required = {"image_folder": ["data.root=/tmp"], "csv": ["data.file=/tmp/labels.csv"]}  # their ??? keys
    extra = required.get(option, []) if group == "data" else []
    cfg = make_config(f"{group}={option}", *extra)
    assert cfg.model.name in list_models()
    assert cfg.data.name in DATASETS.split(", ")
    own, overrides, is_global = choice_file(group, option)
    pairing = CONFIGS / "model_data" / f"{cfg.model.name}_{cfg.data.name}.yaml"
    paired = leaves(OmegaConf.to_container(OmegaConf.load(pairing))) if pairing.is_file() else {}
    expected = dict(own) if is_global else {k: v for k, v in own.items() if k not in paired}
    for chosen, choice in overrides:
        values, _, _ = choice_file(chosen, choice)
        expected |= {k: v for k, v in values.items() if k not in own and k not in paired}
    for key in (o.split("=")[0] for o in extra):
        expected.pop(key, None)
    for key, value in expected.items():
        landed = OmegaConf.select(cfg, key)
        assert (OmegaConf.to_container(landed) if OmegaConf.is_config(landed) else landed) == value, key
    assert expected or not own, (group, option)  # only an empty choice (trainer=default) sets nothing


def test_model_config_names_match_registry() -> None:
    assert sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")) == list_models()
    for name in list_models():
        assert make_config(f"model={name}").model.name == name


@pytest.mark.parametrize("optimizer", [p.stem for p in (CONFIGS / "optimizer").glob("*.yaml")])
@pytest.mark.parametrize("scheduler", [p.stem for p in (CONFIGS / "scheduler").glob("*.yaml")])
def test_optimizer_and_scheduler_instantiate(optimizer: str, scheduler: str) -> None:
    cfg = make_config(f"optimizer={optimizer}", f"scheduler={scheduler}")
    opt = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.ones(3))])
    # 50 epochs of 2 steps: long enough for step's default 30-epoch drop; the loss never improves.
    schedule = Schedule(instantiate(cfg.scheduler), opt, total_steps=100, steps_per_epoch=2)
    lrs = []
    for s in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.after_step()
        if s % 2 == 1:
            schedule.after_epoch({"val_loss": 1.0, "val_acc": 0.5})
    assert schedule.steps_done == 100
    assert all(0 < lr <= cfg.optimizer.lr * (1 + 1e-9) for lr in lrs[:-1])
    assert 0 <= lrs[-1] < cfg.optimizer.lr or scheduler == "none"  # cosine may end at exactly 0
    assert min(lrs) < max(lrs) or (scheduler == "none" and lrs == [cfg.optimizer.lr] * 100)


@pytest.mark.parametrize("option", [p.stem for p in (CONFIGS / "augmentation").glob("*.yaml")])
def test_augmentation_instantiates_and_keeps_shape(option: str) -> None:
    aug = instantiate(make_config(f"augmentation={option}").augmentation)
    x = torch.rand(5, 3, 32, 32)
    assert aug(x).shape == x.shape


def test_alexnet_fashion_mnist_pairing_applies() -> None:
    assert make_config("model=alexnet", "data=fashion_mnist").trainer.max_epochs == 4
    assert make_config("model=lenet", "data=fashion_mnist").trainer.max_epochs == 10
