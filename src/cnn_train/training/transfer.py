"""Transfer learning: start from ImageNet or one's own weights, and choose which layers train.

The three ways the textbook fine-tunes: `full` (everything trains), `head` (a new classifier on a frozen
backbone), `last_n` (the last `model.trainable_layers` layers with parameters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from cnn_train.inference import checkpoint
from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Source:
    """Weights to start from, and what they imply about the input."""

    state_dict: dict[str, torch.Tensor]
    origin: str
    channels: int | None = None  # in-channels of the first conv, where known
    mean: tuple[float, ...] | None = None  # normalisation the weights were trained with, where known
    std: tuple[float, ...] | None = None


def _first_conv_channels(state: dict[str, torch.Tensor]) -> int | None:
    return next((int(v.shape[1]) for v in state.values() if v.ndim == 4), None)


def imagenet_source(name: str) -> Source:
    """torchvision's ImageNet weights for `name` (downloaded once into torch's cache)."""
    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as e:
        raise UserError(f"model.pretrained: torchvision has no ImageNet weights for {name}") from e
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # urllib/OS errors when offline, hash errors on a broken download
        raise UserError(
            f"model.pretrained: could not fetch ImageNet weights for {name} ({type(e).__name__}: {e}); "
            "offline, save them once elsewhere and point model.weights at the file"
        ) from e
    return Source(state, f"ImageNet ({weights})", 3, IMAGENET_MEAN, IMAGENET_STD)


def file_source(path: str | Path) -> Source:
    """One of our checkpoints, or a plain state dict saved with torch.save (read with weights_only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"model.weights: {path} does not exist")
    try:
        raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses code; anything else is not a weights file
        raise UserError(f"model.weights: {path}: not a weights file ({type(e).__name__})") from e
    if isinstance(raw, dict) and raw.get("format") == checkpoint.FORMAT:
        spec = raw["eval_transform"]
        return Source(
            raw["state_dict"], str(path), int(spec["channels"]), tuple(spec["mean"]), tuple(spec["std"])
        )
    if isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return Source(raw, str(path), _first_conv_channels(raw))
    raise UserError(f"model.weights: {path} is neither a cnn-train checkpoint nor a state dict of tensors")


def load_source(model: nn.Module, source: Source) -> None:
    """Copy every weight that fits; 3→1 input channels are summed, so a grey image acts as a tripled one.

    Keys whose shapes differ (the old head, a small-image stem) are reported and skipped; if nothing
    fits, the weights are for another architecture and the run stops.
    """
    own = model.state_dict()
    fitted, skipped = {}, []
    for key, value in source.state_dict.items():
        target = own.get(key)
        if target is None:
            continue
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] == 3 and target.shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape == target.shape:
            fitted[key] = value
        else:
            skipped.append(f"{key} {tuple(value.shape)}→{tuple(target.shape)}")
    if not fitted:
        raise UserError(f"model.weights: nothing in {source.origin} fits this {type(model).__name__}")
    model.load_state_dict(fitted, strict=False)
    log.info("loaded %d of %d tensors from %s", len(fitted), len(own), source.origin)
    if skipped:
        log.info("skipped (shapes differ, trained from scratch): %s", ", ".join(skipped))


def _head(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("model.finetune: head needs a model with a fully connected classifier")
    return linears[-1]


def freeze(model: nn.Module, mode: str, trainable_layers: int = 1) -> None:
    """Leave only the chosen layers trainable (frozen BatchNorm also stays in eval mode; see engine)."""
    if mode == "full":
        return
    if mode == "head":
        keep = [_head(model)]
    elif mode == "last_n":
        if trainable_layers < 1:
            raise UserError(f"model.trainable_layers: {trainable_layers} must be ≥ 1")
        with_params = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        keep = with_params[-trainable_layers:]
    else:
        raise UserError(f"model.finetune: {mode!r} is not one of full, head, last_n")
    for p in model.parameters():
        p.requires_grad_(False)
    for m in keep:
        for p in m.parameters(recurse=False):
            p.requires_grad_(True)
