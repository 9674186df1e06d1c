"""The typed config: a wrong type or an unknown key ends as one line naming the key, exit status 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from cnn_train.cli.common import config_error
from cnn_train.config import DataConfig, TrainerConfig, check_declared_keys, check_target_keys, with_defaults
from cnn_train.runtime.errors import UserError
from tests.conftest import CONFIGS, cli, make_config

# (console script, arguments, the key its one error line starts with)
WRONG = [
    ("cnn-train", ["trainer.max_epochs=abc"], "trainer.max_epochs"),
    ("cnn-train", ["data.batch_size=1.5"], "data.batch_size"),
    ("cnn-train", ["trainer.foo=1"], "trainer.foo"),
    ("cnn-train", ["+trainer.foo=1"], "trainer.foo"),  # composes (+ lifts the struct flag), then fails
    ("cnn-train", ["optimizer.betaz=1"], "optimizer.betaz"),
    ("cnn-train", ["data=image_folder"], "data.root"),  # root: ??? left unset
    ("cnn-predict", ["img=shirt.png", "topk=abc"], "topk"),
    ("cnn-eval", ["batch_size=1.5"], "batch_size"),
    ("cnn-export", ["tolerance=abc"], "tolerance"),
    ("cnn-summary", ["data.channels=x"], "data.channels"),
]


@pytest.mark.slow
@pytest.mark.parametrize("tool,args,key", WRONG, ids=[f"{t} {' '.join(a)}" for t, a, _ in WRONG])
def test_wrong_config_is_one_line_naming_the_key(
    tool: str, args: list[str], key: str, tmp_path: Path
) -> None:
    # cli() sets HYDRA_FULL_ERROR=0 as a user might: it must not bring Hydra's multi-line report back
    proc = cli(tool, *args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: "), proc.stderr


def test_sync_batchnorm_is_declared() -> None:
    assert make_config().trainer.sync_batchnorm is False
    assert make_config("trainer.sync_batchnorm=true").trainer.sync_batchnorm is True


def test_added_key_is_refused_where_it_lands() -> None:
    check_declared_keys(make_config("model=alexnet", "+model.args.width=3"))  # args are the model's own
    with pytest.raises(UserError, match=r"^trainer\.foo: not a key of trainer \(it has max_epochs, "):
        check_declared_keys(make_config("+trainer.foo=1"))
    with pytest.raises(UserError, match=r"^colour: not a key of the config "):
        check_declared_keys(make_config("img=x", "+colour=1", config_name="predict"))


def test_typo_in_a_yaml_names_the_key_and_the_file(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    recipe = configs / "experiment" / "lenet_fashion_mnist.yaml"
    recipe.write_text(recipe.read_text().replace("  max_epochs: 10", "  max_epoch: 10"))
    with (
        initialize_config_dir(config_dir=str(configs), version_base="1.3"),
        pytest.raises(ConfigCompositionException) as e,
    ):
        compose(config_name="train", overrides=["experiment=lenet_fashion_mnist"])
    line = config_error(e.value)
    assert line.startswith("trainer.max_epoch: not a key of trainer (it has max_epochs, ")
    assert line.endswith("(in experiment/lenet_fashion_mnist.yaml)")


def test_a_checkpoint_config_gets_the_declared_defaults() -> None:
    old = {"name": "mnist", "root": "data", "val_split": 0.2, "mean": [0.1], "std": [0.3], "retired": 1}
    data = with_defaults(DataConfig, old)
    assert (data.channels, data.val_split, data.batch_size) == (3, 0.2, DataConfig.batch_size)
    assert "retired" not in data
    assert with_defaults(TrainerConfig, {"max_epochs": 3}).seed == TrainerConfig.seed


TARGET_GROUPS = ["optimizer", "scheduler", "augmentation", "logger"]
RECIPES = [
    f"{g}={p.stem}" for g in [*TARGET_GROUPS, "experiment"] for p in sorted((CONFIGS / g).glob("*.yaml"))
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [*RECIPES, "model=alexnet"])  # alexnet: with its model_data defaults
def test_every_target_key_in_the_configs_is_an_argument(recipe: str) -> None:
    cfg = make_config(recipe)
    for group in TARGET_GROUPS:
        check_target_keys(cfg[group], group)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_augmentation_choice_replaces_an_experiments_own(experiment: str) -> None:
    """An experiment sets no augmentation keys of its own, so `augmentation=<any>` composes on top of it."""
    for choice in sorted(p.stem for p in (CONFIGS / "augmentation").glob("*.yaml")):
        check_target_keys(
            make_config(f"experiment={experiment}", f"augmentation={choice}").augmentation, choice
        )


def test_unknown_target_key_is_one_line_naming_it() -> None:
    cfg = make_config("+optimizer.betaz=[0.9,0.99]")
    with pytest.raises(
        UserError, match=r"^optimizer\.betaz: not an argument of torch\.optim\.Adam \(it takes params, lr,"
    ):
        check_target_keys(cfg.optimizer, "optimizer")
    cfg = make_config("+scheduler.warmup=2")
    with pytest.raises(
        UserError, match=r"^scheduler\.warmup: not an argument of cnn_train\.training\.schedules\.cosine"
    ):
        check_target_keys(cfg.scheduler, "scheduler")
    with pytest.raises(UserError, match=r"^optimizer\._target_: cannot import torch\.optim\.Adamm "):
        check_target_keys(make_config("optimizer._target_=torch.optim.Adamm").optimizer, "optimizer")


@pytest.mark.parametrize("choice", ["basic", "randaugment", "trivialaugment", "autoaugment"])
def test_an_augmentation_takes_its_base_class_keys_and_names_a_misspelt_one(choice: str) -> None:
    """The policies pass random erasing and mixup/cutmix on to BatchAugment through **common."""
    cfg = make_config(
        f"augmentation={choice}", "augmentation.random_erasing=0.25", "augmentation.mixup_alpha=0.2"
    )
    check_target_keys(cfg.augmentation, "augmentation")
    cfg = make_config(f"augmentation={choice}", "+augmentation.random_erasin=0.25")
    listed = r"\(it takes .*random_erasing, mixup_alpha, cutmix_alpha, num_classes\)$"
    with pytest.raises(UserError, match=r"^augmentation\.random_erasin: not an argument of .*" + listed):
        check_target_keys(cfg.augmentation, "augmentation")
