"""Model registry; importing this package registers every family."""

from cnn_train.models import alexnet, inception, lenet, mobilenet, resnet, resnet9, vgg  # noqa: F401  (registers)
from cnn_train.models.registry import (
    build_model,
    cam_layer,
    list_models,
    min_image_size,
    register_model,
    stage_outputs,
)

__all__ = ["build_model", "cam_layer", "list_models", "min_image_size", "register_model", "stage_outputs"]
