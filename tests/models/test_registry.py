import pytest
import torch

from prunekit.errors import PrunekitError
from prunekit.models import create_model, list_models, register_model


def test_unknown_model_names_the_closest():
    with pytest.raises(PrunekitError, match="did you mean 'mobilenet_v1'"):
        create_model("mobilenet_v2x")


def test_torchvision_models_build_with_random_weights_and_adapted_input():
    m = create_model("torchvision:resnet18", num_classes=10, in_channels=1).eval()
    assert m.conv1.in_channels == 1
    assert m(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(PrunekitError, match="unknown torchvision model"):
        create_model("torchvision:resnet1800")
    with pytest.raises(PrunekitError, match="not downloaded"):
        create_model("torchvision:resnet18", weights="IMAGENET1K_V1")


def test_register_model_rejects_duplicates_and_lists_entries():
    assert "mobilenet_v1" in list_models()

    @register_model("test_registry_tiny")
    def tiny(num_classes: int = 3):
        return torch.nn.Linear(4, num_classes)

    assert create_model("test_registry_tiny", num_classes=5).out_features == 5
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_registry_tiny")(tiny)
    with pytest.raises(PrunekitError, match="unknown argument 'classes'"):
        create_model("test_registry_tiny", classes=2)
