"""One registry of model builders, so a checkpoint can rebuild its network from a name and kwargs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cnn_train.errors import UserError

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}
_MIN_SIZE: dict[str, int] = {}


def register_model(name: str, min_size: int = 8) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder `f(num_classes, in_channels, image_size, **kwargs) -> nn.Module` under `name`.

    `min_size` is the smallest input side the network accepts, checked before any work starts.
    """

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _MIN_SIZE[name] = min_size
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def min_image_size(name: str) -> int:
    """Smallest input side `name` accepts."""
    _check_name(name)
    return _MIN_SIZE[name]


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise UserError(f"model.name: unknown model {name!r}; choose one of: {', '.join(list_models())}")


def build_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered network sized for the data: classes, channels and input side."""
    _check_name(name)
    if image_size < _MIN_SIZE[name]:
        raise UserError(
            f"data.image_size: {image_size} is too small for {name} (needs at least {_MIN_SIZE[name]})"
        )
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
