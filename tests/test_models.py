"""Every registered model builds and steps at every input shape it claims."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from cnn_train.models import build_model, list_models, min_image_size, register_model, registry
from cnn_train.runtime.errors import UserError

SHAPES = [  # Fashion-MNIST, CIFAR-10, ImageNet-sized photos (seconds each for the big networks: the full suite)
    pytest.param(1, 28, id="1x28"),
    pytest.param(3, 32, id="3x32"),
    pytest.param(3, 224, id="3x224", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("name", list_models())
def test_model_forward_backward(name: str, channels: int, size: int) -> None:
    size = max(size, min_image_size(name))
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size)
    x = torch.randn(2, channels, size, size)
    logits = model(x)
    assert logits.shape == (2, 7)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 6]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_registry_lists_every_family() -> None:
    expected = {
        "lenet", "mlp", "alexnet", "vgg11", "vgg16", "googlenet", "inception_v3", "resnet18", "resnet34",
        "resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small",
    }  # fmt: skip
    assert expected <= set(list_models())


def test_each_family_registers_what_the_table_names() -> None:
    """BUILT_IN answers names and least sides without importing a family; building one imports its module."""
    build_model("lenet", num_classes=3, in_channels=1, image_size=28)
    assert registry._MODELS["lenet"].__module__ == "cnn_train.models.lenet"
    for module in {m for m, _ in registry.BUILT_IN.values()}:
        importlib.import_module(f"cnn_train.models.{module}")
    assert set(registry._MODELS) >= set(registry.BUILT_IN)
    for name, (module, _) in registry.BUILT_IN.items():
        assert registry._MODELS[name].__module__ == f"cnn_train.models.{module}", name


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(UserError) as e:
        build_model("resnet7", num_classes=10, in_channels=1, image_size=28)
    assert str(e.value) == f"model.name: unknown model 'resnet7'; choose one of: {', '.join(list_models())}"


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_model("lenet")(lambda **kw: nn.Identity())


def test_too_small_input_is_refused() -> None:
    with pytest.raises(UserError, match="data.image_size: 32 is too small for inception_v3"):
        build_model("inception_v3", num_classes=10, in_channels=3, image_size=32)


def test_small_input_keeps_spatial_resolution() -> None:
    """The small-image stem must not collapse a 28 px image before the last stage."""
    model = build_model("resnet18", num_classes=10, in_channels=1, image_size=28)
    feats = nn.Sequential(*list(model.children())[:-2])(torch.randn(1, 1, 28, 28))
    assert feats.shape[-1] == 4  # 28 → 28 → 14 → 7 → 4 (the ImageNet stem would give 1)


@pytest.mark.parametrize("name,size", [("alexnet", 28), ("vgg11", 28), ("vgg16", 224)])
def test_networks_built_on_the_meta_device_are_initialised_everywhere(name: str, size: int) -> None:
    """AlexNet and VGG are built without memory and initialised once: no tensor may keep what `to_empty`
    left (whatever bytes the allocator held). He-normal weights have std √(2/fan); the sample std of n
    draws is within a few 1/√(2n) of it, far inside 10% for the ≥ 10,000 weights checked."""
    model = build_model(name, num_classes=10, in_channels=1, image_size=size)
    for key, tensor in model.state_dict().items():
        assert torch.isfinite(tensor.float()).all(), key
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.running_mean == 0).all() and (m.running_var == 1).all() and m.num_batches_tracked == 0
            assert (m.weight == 1).all() and (m.bias == 0).all()
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 10_000:
            out, inp, kh, kw = m.weight.shape
            fan = (
                (out if name.startswith("vgg") else inp) * kh * kw
            )  # torchvision's VGG: fan_out; ours: fan_in
            assert m.weight.std().item() == pytest.approx((2 / fan) ** 0.5, rel=0.1)
            assert m.bias is None or (m.bias == 0).all()
        if isinstance(m, nn.Linear) and m.weight.numel() >= 10_000:
            assert 0 < m.weight.std().item() < 1 and abs(m.weight.mean().item()) < 0.01
