"""Grad-CAM: where in an image the network found the class it chose, as a heat map over the image.

Maps come from captum's `LayerGradCam` (Selvaraju et al. 2017: the stage's feature maps weighted by the mean
gradient of the class score, summed, rectified) at the layer the registry names (`models.cam_layer`: the
last convolutional stage). captum rather than pytorch-grad-cam: both gave the same maps (correlation
0.9999997 on ResNet-18), but captum is 4 MB of Python on what we already install, while pytorch-grad-cam
brings OpenCV and scikit-learn (210 MB) and took 14.7 s to import against captum's 2.7 s on 2 CPU cores.
Maps are computed on the inference network (fp32, contiguous, eval mode) through the one eval transform,
and explain the class `inference.infer` predicts unless told another.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnn_train.analysis.plots import image_grid, rgb_tile, save_png, subplots
from cnn_train.data.preprocess import Preprocess, read_image_tensor
from cnn_train.inference import checkpoint
from cnn_train.inference.infer import infer
from cnn_train.inference.predict import Prediction
from cnn_train.models import cam_layer
from cnn_train.runtime.errors import UserError


@dataclass
class Cams:
    """Grad-CAM maps of a batch, at the resolution of the layer they come from."""

    layer: str | None  # the module explained; None: the input pixels (a model without feature maps)
    maps: torch.Tensor  # N×h×w; rectified (default): zero where the stage holds no evidence for the class
    targets: torch.Tensor  # the class each map explains

    def upsampled(self, side: int) -> torch.Tensor:
        """N×side×side in [0, 1], each map divided by its own maximum, as the paper draws them."""
        up = F.interpolate(self.maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        return up / up.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)


def grad_cam(
    model: nn.Module,
    preprocess: Preprocess,
    images: torch.Tensor,
    targets: torch.Tensor | None = None,
    rectify: bool = True,
) -> Cams:
    """Grad-CAM of a uint8 batch for `targets` (default: each image's predicted class).

    `rectify=False` keeps the negative evidence too (the map before Grad-CAM's ReLU).

    A model without feature maps (the MLP) is explained at its input: Grad-CAM's formula with every pixel
    as its own one-pixel feature map, which is gradient × input summed over channels.
    """
    from captum.attr import InputXGradient, LayerGradCam  # imported here: ~2 s that other commands skip

    model.eval()
    if targets is None:
        targets = infer(model, preprocess, images).argmax(1)
    x = preprocess(images)
    layer = cam_layer(model, x[:1])
    with torch.enable_grad():
        if layer is None:
            maps = InputXGradient(model).attribute(x.requires_grad_(), target=targets).sum(1)
            maps = maps.relu() if rectify else maps
        else:
            explainer = LayerGradCam(model, model.get_submodule(layer))
            maps = explainer.attribute(x, target=targets, relu_attributions=rectify)[:, 0]
    return Cams(layer, maps.detach().float(), targets)


def heated(image: torch.Tensor, heat: torch.Tensor) -> Any:
    """The image (C×H×W in [0, 1]) under its map in jet at 45 % opacity, as an H×W×3 array."""
    from matplotlib import colormaps

    jet = colormaps["jet"](heat.detach().float().clamp(0, 1).cpu().numpy())[..., :3]
    return 0.55 * rgb_tile(image) + 0.45 * jet


def _overlay(ax: Any, image: torch.Tensor, heat: torch.Tensor, title: str) -> None:
    ax.imshow(heated(image, heat))
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def save_cam_grid(
    model: nn.Module,
    preprocess: Preprocess,
    images_uint8: torch.Tensor,
    titles: Sequence[str],
    path: str | Path,
    targets: torch.Tensor | None = None,
    columns: int = 8,
) -> Cams:
    """A grid of the images as the network sees them, each under its Grad-CAM, with its title."""
    cams = grad_cam(model, preprocess, images_uint8, targets)
    heat = cams.upsampled(preprocess.image_size)
    tiles = [heated(image, h) for image, h in zip(preprocess.unit(images_uint8), heat, strict=True)]
    image_grid(tiles, titles, path, columns)
    return cams


def save_cam_images(
    model: nn.Module,
    preprocess: Preprocess,
    images_uint8: torch.Tensor,
    titles: Sequence[str],
    paths: Sequence[str | Path],
    targets: torch.Tensor | None = None,
) -> Cams:
    """One PNG per image: the image as the network sees it under its Grad-CAM, titled."""
    cams = grad_cam(model, preprocess, images_uint8, targets)
    heat = cams.upsampled(preprocess.image_size)
    for image, h, title, path in zip(preprocess.unit(images_uint8), heat, titles, paths, strict=True):
        fig, ax = subplots(figsize=(4, 4))
        _overlay(ax, image, h, title)
        ax.title.set_fontsize(11)
        save_png(fig, path)
    return cams


def cam_dir(output: str | None) -> Path:
    """Where cnn-predict puts the CAM images: `<output stem>_cam/` beside `output=`, else `cam/`."""
    return Path(f"{Path(output).with_suffix('')}_cam") if output else Path("cam")


def save_prediction_cams(
    ckpt: str | Path,
    rows: Sequence[Prediction],
    folder: Path,
    device: torch.device,
    batch_size: int = 64,
) -> list[Path]:
    """For each predicted image, its top class's Grad-CAM titled with class and probability; numbered files.

    Multi-label rows get one map per predicted label (`<n>_<stem>_<label>.png`), none when no label is predicted.
    """
    if Path(ckpt).suffix == ".onnx":
        raise UserError(f"cam: {ckpt} is an ONNX export; Grad-CAM needs the PyTorch checkpoint's gradients")
    payload = checkpoint.load(ckpt)
    model = checkpoint.inference_model(payload, device, ckpt)
    spec, classes = checkpoint.eval_transform(payload), list(payload["classes"])
    preprocess = Preprocess(spec).to(device)
    maps = [(i, r, name, prob) for i, r in enumerate(rows)
            for name, prob in (r.topk if r.multi_label else r.topk[:1])]  # fmt: skip
    written: list[Path] = []
    for start in range(0, len(maps), batch_size):
        chunk = maps[start : start + batch_size]
        images = torch.stack([read_image_tensor(r.path, spec) for _, r, _, _ in chunk]).to(device)
        targets = torch.tensor([classes.index(name) for _, _, name, _ in chunk], device=device)
        titles = [f"class: {name} prob: {prob:.3f}" for _, _, name, prob in chunk]
        paths = [folder / _cam_name(i, r, name) for i, r, name, _ in chunk]
        save_cam_images(model, preprocess, images, titles, paths, targets)
        written.extend(paths)
    return written


def _cam_name(index: int, row: Prediction, label: str) -> str:
    """Numbered (names repeat across folders); a multi-label map also names its label, made file-safe."""
    stem = f"{index:04d}_{Path(row.path).stem}"
    return f"{stem}_{re.sub(r'[^A-Za-z0-9._-]+', '_', label)}.png" if row.multi_label else f"{stem}.png"
