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


def _shrunk_mobilenet():
    from prunekit import prune_, shrink
    from prunekit.pruning import OneShot, PruningConfig

    m = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0).add_(0.5)  # "trained": far from any initialisation
    pruner = prune_(m, PruningConfig(schedule=OneShot(0.5), round_to=8), (1, 28, 28))
    pruner.step(0)
    return shrink(pruner).model


def test_reinitialise_keeps_the_architecture_and_starts_it_like_a_fresh_one():
    from prunekit.models import reinitialise

    small = _shrunk_mobilenet()
    shapes = {k: v.shape for k, v in small.state_dict().items()}
    a = {k: v.clone() for k, v in reinitialise(small, seed=3).state_dict().items()}
    assert {k: v.shape for k, v in a.items()} == shapes  # same architecture
    b = reinitialise(_shrunk_mobilenet(), seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded
    c = reinitialise(_shrunk_mobilenet(), seed=4).state_dict()
    assert not torch.equal(a["blocks.3.pw.conv.weight"], c["blocks.3.pw.conv.weight"])
    # the architecture's own initialiser, not only PyTorch's layer defaults: BatchNorm at 1/0 with fresh
    # statistics, convolutions kaiming-normal over fan-out (MobileNetV1._init_weights)
    assert torch.all(a["blocks.3.pw.bn.weight"] == 1) and torch.all(a["blocks.3.pw.bn.bias"] == 0)
    assert torch.all(a["blocks.3.pw.bn.running_mean"] == 0) and torch.all(a["blocks.3.pw.bn.running_var"] == 1)
    w = a["blocks.3.pw.conv.weight"]
    assert float(w.std()) == pytest.approx((2.0 / w.shape[0]) ** 0.5, rel=0.15)  # fan_out of a 1x1 conv
