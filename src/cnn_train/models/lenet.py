"""LeNet-5 and the two-layer perceptron baseline: the first networks of the textbook."""

from __future__ import annotations

from torch import nn

from cnn_train.models.registry import register_model


@register_model("lenet")
def lenet(num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0) -> nn.Module:
    """LeNet-5 with ReLU; padding 2 on the first conv so 28×28 input keeps LeCun's 32×32 geometry."""
    side = (image_size // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(84, num_classes),
    )


@register_model("mlp")
def mlp(
    num_classes: int, in_channels: int, image_size: int, hidden: int = 256, dropout: float = 0.0
) -> nn.Module:
    """The fully connected baseline every convolutional network is compared against."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
