"""Model anatomy: every layer's output shape, parameters, FLOPs and activation memory, and where they sit.

Lets a user check claims such as "AlexNet's convolutions hold ~6% of the parameters but ~95% of the
compute" for any registered model at any input size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

KINDS = {nn.Conv2d: "conv", nn.Linear: "fc"}


@dataclass
class Layer:
    name: str
    type: str
    output_shape: list[int]
    params: int
    flops: int  # forward FLOPs for one image (a multiply-add counts 2), from torch.utils.flop_counter
    activation_bytes: int  # size of the layer's output for one image


def summarize(model: nn.Module, in_channels: int, image_size: int) -> dict[str, Any]:
    """Per-leaf-layer table for one image, totals, and the conv / fully connected split."""
    model.eval()
    outputs: dict[str, torch.Tensor] = {}
    leaves = {n: m for n, m in model.named_modules() if n and not any(True for _ in m.children())}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
        for n, m in leaves.items()
    ]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    root = type(model).__name__
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    layers = []
    for name, module in leaves.items():
        out = outputs.get(name)
        shape = list(out.shape[1:]) if isinstance(out, torch.Tensor) else []
        layers.append(
            Layer(
                name=name,
                type=type(module).__name__,
                output_shape=shape,
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                flops=int(flops.get(f"{root}.{name}", 0)),
                activation_bytes=out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0,
            )
        )
    total_params = sum(p.numel() for p in model.parameters())
    total_flops = int(flops.get("Global", 0))
    split = {}
    for kind in ("conv", "fc"):
        members = [
            (lay, m) for lay, m in zip(layers, leaves.values(), strict=True) if KINDS.get(type(m)) == kind
        ]
        p, f = sum(lay.params for lay, _ in members), sum(lay.flops for lay, _ in members)
        split[kind] = {
            "params": p, "flops": f,
            "params_share": p / max(total_params, 1), "flops_share": f / max(total_flops, 1),
        }  # fmt: skip
    return {
        "input": [in_channels, image_size, image_size],
        "layers": [asdict(lay) for lay in layers],
        "total_params": total_params,
        "total_flops": total_flops,
        "total_activation_bytes": sum(lay.activation_bytes for lay in layers),
        "split": split,
    }
