"""The typed config: one declaration per key, with its type and default."""

from __future__ import annotations

from cnn_train.config import DataConfig, TrainerConfig, with_defaults
from tests.conftest import make_config


def test_sync_batchnorm_is_declared() -> None:
    assert make_config().trainer.sync_batchnorm is False
    assert make_config("trainer.sync_batchnorm=true").trainer.sync_batchnorm is True


def test_a_checkpoint_config_gets_the_declared_defaults() -> None:
    old = {"name": "mnist", "root": "data", "val_split": 0.2, "mean": [0.1], "std": [0.3], "retired": 1}
    data = with_defaults(DataConfig, old)
    assert (data.channels, data.val_split, data.batch_size) == (3, 0.2, DataConfig.batch_size)
    assert "retired" not in data
    assert with_defaults(TrainerConfig, {"max_epochs": 3}).seed == TrainerConfig.seed
