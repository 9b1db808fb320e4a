import pytest
import torch

from prunekit.cost import profile
from prunekit.errors import PrunekitError
from prunekit.models import create_model, scale_channels


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parity_with_the_paper():
    m = create_model("mobilenet_v1", width=1.0, num_classes=1000)
    assert n_params(m) == 4_231_976
    macs = profile(m, (3, 224, 224)).macs
    assert abs(macs - 569e6) / 569e6 < 0.005  # paper: 569 M mult-adds


def test_fashion_mnist_reference_sizes():
    # The reference: dense 3.22 M params; width 0.5 0.82 M params.
    assert n_params(create_model("mobilenet_v1", num_classes=10, in_channels=1, small_input=True)) == 3_216_650
    assert n_params(create_model("mobilenet_v1", width=0.5, num_classes=10, in_channels=1, small_input=True)) == 823_434


@pytest.mark.parametrize("width,expected", [(0.25, [8, 16, 32, 256]), (0.75, [24, 48, 96, 768]), (0.3, [9, 19, 38, 307])])
def test_width_rounds_like_keras(width, expected):
    m = create_model("mobilenet_v1", width=width)
    got = [m.stem.conv.out_channels, m.blocks[0].pw.conv.out_channels, m.blocks[1].pw.conv.out_channels,
           m.blocks[12].pw.conv.out_channels]
    assert got == expected == [scale_channels(c, width) for c in (32, 64, 128, 1024)]


def test_small_input_first_conv_stride_and_output_shape():
    m = create_model("mobilenet_v1", width=0.25, num_classes=7, in_channels=1, small_input=True).eval()
    assert m.stem.conv.stride == (1, 1)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    big = create_model("mobilenet_v1", width=0.25)
    assert big.stem.conv.stride == (2, 2)


def test_pointwise_convs_are_named_for_regex_selection():
    import re

    m = create_model("mobilenet_v1", width=0.25)
    pw = [n for n, mod in m.named_modules() if re.fullmatch(r"blocks\.\d+\.pw\.conv", n)]
    assert len(pw) == 13
    assert all(m.get_submodule(n).kernel_size == (1, 1) and m.get_submodule(n).groups == 1 for n in pw)
    dw = m.get_submodule("blocks.3.dw.conv")
    assert dw.groups == dw.in_channels == dw.out_channels


def test_tf_padding_matches_keras_same_on_stride_two():
    m = create_model("mobilenet_v1", width=0.25, padding="tf", bn_eps=1e-3).eval()
    assert isinstance(m.stem.pad, torch.nn.ZeroPad2d) and m.stem.conv.padding == (0, 0)
    assert m.blocks[0].dw.conv.padding == (1, 1)  # stride 1 keeps symmetric padding
    assert m(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("kwargs,msg", [
    ({"width": 0}, "width"), ({"width": -1.0}, "width"), ({"num_classes": 0}, "num_classes"),
    ({"in_channels": 2.5}, "in_channels"), ({"dropout": 1.0}, "dropout"), ({"act": "gelu"}, "act"),
    ({"padding": "same"}, "padding"), ({"depth": 3}, "unknown argument 'depth'"),
])
def test_bad_arguments_are_clear(kwargs, msg):
    with pytest.raises(PrunekitError, match=msg):
        create_model("mobilenet_v1", **kwargs)
