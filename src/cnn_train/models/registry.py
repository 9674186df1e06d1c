"""One registry of model builders, so a checkpoint can rebuild its network from a name and kwargs.

The built-in families register themselves when first built: `BUILT_IN` knows every name and least input side
up front, so checking a config or rebuilding LeNet imports no other family (most import torchvision).
It also states, for every model, where its convolutional stages end (`stage_outputs`) and which layer
Grad-CAM explains (`cam_layer`): one rule over the built network, so it holds at every input size.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from cnn_train.runtime.errors import UserError

ModelBuilder = Callable[..., nn.Module]
# Every built-in model: the module of cnn_train.models that registers it, and the least input side it accepts.
BUILT_IN: dict[str, tuple[str, int]] = {
    "lenet": ("lenet", 12), "mlp": ("lenet", 1), "alexnet": ("alexnet", 16),
    "vgg11": ("vgg", 16), "vgg16": ("vgg", 16), "googlenet": ("inception", 16), "inception_v3": ("inception", 75),
    "resnet9": ("resnet9", 8), "resnet18": ("resnet", 8), "resnet34": ("resnet", 8), "resnet50": ("resnet", 8),
    "resnet101": ("resnet", 8), "resnext50_32x4d": ("resnet", 8),
    "mobilenet_v2": ("mobilenet", 16), "mobilenet_v3_small": ("mobilenet", 16),
}  # fmt: skip
_MODELS: dict[str, ModelBuilder] = {}
_MIN_SIZE: dict[str, int] = {name: size for name, (_, size) in BUILT_IN.items()}


def register_model(name: str, min_size: int | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder `f(num_classes, in_channels, image_size, **kwargs) -> nn.Module` under `name`.

    `min_size` is the smallest input side the network accepts, checked before any work starts (a built-in
    name's is BUILT_IN's; 8 when not given). A built-in name belongs to its family's module alone.
    """

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        family = BUILT_IN.get(name)
        if name in _MODELS or (family is not None and fn.__module__ != f"cnn_train.models.{family[0]}"):
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _MIN_SIZE[name] = min_size if min_size is not None else family[1] if family is not None else 8
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of every built-in and registered model, sorted."""
    return sorted(set(BUILT_IN) | set(_MODELS))


def min_image_size(name: str) -> int:
    """Smallest input side `name` accepts (its family is not imported)."""
    _check_name(name)
    return _MIN_SIZE[name]


def _check_name(name: str) -> None:
    if name not in _MODELS and name not in BUILT_IN:
        raise UserError(f"model.name: unknown model {name!r}; choose one of: {', '.join(list_models())}")


def _builder(name: str) -> ModelBuilder:
    """The registered builder, importing a built-in family the first time one of its models is built."""
    if name not in _MODELS:
        importlib.import_module(f"cnn_train.models.{BUILT_IN[name][0]}")
    return _MODELS[name]


def build_model(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """Build a registered network sized for the data: classes, channels and input side."""
    _check_name(name)
    if image_size < _MIN_SIZE[name]:
        raise UserError(
            f"data.image_size: {image_size} is too small for {name} (needs at least {_MIN_SIZE[name]})"
        )
    return _builder(name)(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)


class _Outputs:
    """Forward hooks' record: each watched layer's output and how often it ran (a layer reused is no stage)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.calls: Counter[str] = Counter()

    def record(self, name: str, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.calls[name] += 1
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            self.tensors.pop(name, None)  # re-inserted: the dict keeps the order the layers ran in
            self.tensors[name] = output


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's children, a Sequential child unrolled into its own (AlexNet's `features`, `layer4`)."""
    found: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and len(child):
            found.update({f"{name}.{n}": m for n, m in child.named_children()})
        else:
            found[name] = child
    return found


def stage_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each stage's output for the batch `x`, by layer name, in the order the stages run.

    A stage is a run of layers (see `_layers`) whose outputs keep one spatial size; its output is its last
    layer's. So a stage ends where a pool or a strided block shrinks the map: LeNet at 28 px has stages at
    28, 14, 10 and 5 px, a small-input ResNet ends them with `layer1.1` ... `layer4.1`.
    """
    was_training = model.training
    outputs = _Outputs()
    hooks = [m.register_forward_hook(partial(outputs.record, n)) for n, m in _layers(model).items()]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    ran = [(n, t) for n, t in outputs.tensors.items() if outputs.calls[n] == 1]
    return {
        n: t for i, (n, t) in enumerate(ran) if i + 1 == len(ran) or ran[i + 1][1].shape[-2:] != t.shape[-2:]
    }


def cam_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """The layer Grad-CAM explains: the output of the last convolutional stage, for every registered model.

    That is the last stage whose map is larger than 1×1 at this input (a one-pixel map cannot say where):
    `layer4.1` of a small-input ResNet-18, `inception5b` of GoogLeNet, `features.11` (conv 5) of AlexNet at
    28 px, whose last pool leaves 1×1. None for a model without feature maps (the MLP).
    """
    spatial = [n for n, t in stage_outputs(model, x).items() if t.shape[-1] * t.shape[-2] > 1]
    return spatial[-1] if spatial else None
