"""What each layer sees: the first convolution's kernels and each stage's feature maps for one image.

`cnn-summary img=PATH` draws them for the model it describes: random weights from `model=`/`data=`, or the
trained ones of `ckpt=` (whose eval transform then prepares the image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.utils import make_grid

from cnn_train.analysis.plots import save_png, subplots
from cnn_train.data.datasets import describe
from cnn_train.data.images import EvalTransform
from cnn_train.data.preprocess import Preprocess, read_image_tensor
from cnn_train.data.table import LabelFile
from cnn_train.inference import checkpoint
from cnn_train.models import build_model, stage_outputs
from cnn_train.runtime.errors import UserError

CHANNELS_SHOWN = 8  # feature maps per stage: the most active ones for the image


def summary_model(cfg: DictConfig) -> tuple[str, nn.Module, EvalTransform]:
    """The model cnn-summary describes and how an image becomes its input: `ckpt=`'s, else model=/data='s."""
    if cfg.ckpt:
        path = Path(cfg.ckpt).expanduser()
        payload = checkpoint.load(path)
        model = checkpoint.inference_model(payload, torch.device("cpu"), path)
        return str(payload["model"]["name"]), model, checkpoint.eval_transform(payload)
    channels, num_classes, native = describe(
        cfg.data.name, cfg.data.root, cfg.data.channels, LabelFile.from_config(cfg.data)
    )
    size = cfg.data.image_size or cfg.model.image_size or native
    if size is None:
        raise UserError("data.image_size: must be set for image folders (e.g. data.image_size=224)")
    args = OmegaConf.to_container(cfg.model.args, resolve=True)
    model = build_model(
        cfg.model.name, num_classes=num_classes, in_channels=channels, image_size=size, **args
    )
    spec = EvalTransform(size, channels, tuple(cfg.data.mean), tuple(cfg.data.std))
    return str(cfg.model.name), model, spec


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The stem convolution: the first Conv2d the model registers (every family here builds its stem first)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise UserError("img: this model has no convolution, so no kernels or feature maps to draw")
    return conv


def plot_filters(conv: nn.Conv2d, path: str | Path, columns: int = 8, most: int = 64) -> None:
    """Each kernel as a small image (RGB for colour input, grey otherwise), on one scale for all of them."""
    w = conv.weight.detach().float().cpu()[:most]
    w = w if w.shape[1] in (1, 3) else w.mean(1, keepdim=True)
    w = (w - w.min()) / (w.max() - w.min()).clamp(min=1e-12)  # one scale: kernel strengths stay comparable
    mosaic = make_grid(w, nrow=columns, padding=1, pad_value=1.0)  # one image: fast to draw
    fig, ax = subplots(figsize=(0.8 * min(columns, len(w)) + 1, 0.8 * -(-len(w) // columns) + 0.8))
    ax.imshow(mosaic.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    shape = "×".join(map(str, conv.weight.shape[1:]))
    ax.set_title(f"first convolution: {conv.out_channels} kernels of {shape}", fontsize=8)
    save_png(fig, path)


def plot_feature_maps(image: torch.Tensor, stages: dict[str, torch.Tensor], path: str | Path) -> None:
    """The input, then one row per stage: its most active channels for this image, each on its own scale."""
    fig, axes = subplots(1 + len(stages), 1, figsize=(1.1 * CHANNELS_SHOWN, 1.4 * (1 + len(stages))))
    axes = np.atleast_1d(axes)
    for ax in axes:
        ax.axis("off")
    image = image.clamp(0, 1).cpu()
    shown = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    axes[0].imshow(shown.numpy(), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=8)
    for ax, (name, out) in zip(axes[1:], stages.items(), strict=True):
        maps = out[0].float().cpu()
        top = maps.mean((1, 2)).topk(min(CHANNELS_SHOWN, len(maps))).indices
        mosaic = make_grid(maps[top, None], nrow=CHANNELS_SHOWN, padding=1, normalize=True, scale_each=True)
        ax.imshow(mosaic[0].numpy(), cmap="viridis", interpolation="nearest")
        channels = ", ".join(map(str, top.tolist()))
        ax.set_title(f"{name}: {'×'.join(map(str, maps.shape))}, channels {channels}", fontsize=7)
    save_png(fig, path)


def save_layer_views(
    model: nn.Module, spec: EvalTransform, img: str | Path, out_dir: str | Path = "."
) -> dict[str, Any]:
    """filters.png and feature_maps.png for the image at `img` (stages larger than 1×1 only)."""
    if not Path(img).is_file():
        raise UserError(f"img: {img} is not a file")
    preprocess = Preprocess(spec)
    images = read_image_tensor(img, spec)[None]
    stages = {
        n: t for n, t in stage_outputs(model, preprocess(images)).items() if t.shape[-1] * t.shape[-2] > 1
    }
    out = Path(out_dir)
    plot_filters(first_conv(model), out / "filters.png")
    plot_feature_maps(preprocess.unit(images)[0], stages, out / "feature_maps.png")
    return {"filters": out / "filters.png", "feature_maps": out / "feature_maps.png", "stages": list(stages)}
