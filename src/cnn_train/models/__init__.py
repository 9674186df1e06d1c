"""Model registry; a built-in family is imported (and registers its models) when one of them is built."""

from cnn_train.models.registry import (
    build_model,
    cam_layer,
    list_models,
    min_image_size,
    register_model,
    stage_outputs,
)

__all__ = ["build_model", "cam_layer", "list_models", "min_image_size", "register_model", "stage_outputs"]
