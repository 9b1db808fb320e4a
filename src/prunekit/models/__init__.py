"""Model registry, MobileNet V1, torchvision and timm adapters and the saved-model format."""

from . import mobilenet_v1 as _mobilenet_v1  # noqa: F401  (registers "mobilenet_v1")
from ._registry import (
    TIMM_PREFIX,
    TORCHVISION_PREFIX,
    check_arch,
    create_model,
    default_input,
    list_models,
    register_model,
    reinitialise,
    torchvision_classification_models,
)
from .mobilenet_v1 import MobileNetV1, scale_channels
from .serialization import InputSpec, ModelSpec, apply_layer_shapes, load_model, read_spec, save_model

__all__ = [
    "InputSpec", "MobileNetV1", "ModelSpec", "TIMM_PREFIX", "TORCHVISION_PREFIX", "apply_layer_shapes", "check_arch",
    "create_model", "default_input", "list_models", "load_model", "read_spec", "register_model", "reinitialise",
    "save_model", "scale_channels", "torchvision_classification_models",
]
