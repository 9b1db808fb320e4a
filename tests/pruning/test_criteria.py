import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph import DependencyGraph
from prunekit.pruning import OneShot, PruningConfig, get_criterion, prune_


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 2, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def constructed():
    net = Net().eval()
    with torch.no_grad():
        # channel 0: one big weight (L1 2, L2 2); channel 1: spread (L1 3.5, L2 1.80); 2 tiny; 3 medium
        net.conv1.weight.copy_(torch.tensor([[2, 0, 0, 0], [1, 1, 1, 0.5], [0.1, 0, 0, 0], [1, 1, 0, 0]],
                                            dtype=torch.float).view(4, 1, 2, 2))
        net.bn.weight.copy_(torch.tensor([0.1, 5.0, 1.0, 2.0]))
    g = DependencyGraph(net, (1, 6, 6))
    return net, g, [g.by_name["conv1"]]


def ranking(scores):
    return list(np.argsort(-scores))


def test_l1_filters_ranks_by_the_producing_filters_only():
    net, g, groups = constructed()
    s = get_criterion("l1_filters").scores(net, g, groups)[groups[0].id]
    assert s == pytest.approx([2, 3.5, 0.1, 2])


def test_l1_and_l2_sum_over_the_whole_group():
    """Group-wide norms: producing filter row + BN gamma + the consumer's input column (Torch-Pruning style)."""
    net, g, groups = constructed()
    w1 = net.conv1.weight.detach().flatten(1)
    gamma = net.bn.weight.detach()
    w2 = net.conv2.weight.detach().flatten(1)  # (3, 4): column c reads channel c
    l1 = get_criterion("l1").scores(net, g, groups)[groups[0].id]
    l2 = get_criterion("l2").scores(net, g, groups)[groups[0].id]
    assert l1 == pytest.approx((w1.abs().sum(1) + gamma.abs() + w2.abs().sum(0)).numpy(), rel=1e-6)
    assert l2 == pytest.approx((w1.pow(2).sum(1) + gamma.pow(2) + w2.pow(2).sum(0)).sqrt().numpy(), rel=1e-6)


def test_group_norm_credits_only_channels_that_are_used():
    """A channel with gamma 0 and no reader gains nothing over its filter norm; the used ones gain gamma + column."""
    net, g, groups = constructed()
    with torch.no_grad():
        net.conv1.weight[0] = 10.0
        net.bn.weight[0] = 0.0
        net.conv2.weight[:, 0] = 0.0
        net.conv2.weight[:, 1:] = 1.0
    filters = get_criterion("l1_filters").scores(net, g, groups)[groups[0].id]
    group = get_criterion("l1").scores(net, g, groups)[groups[0].id]
    assert ranking(filters)[0] == 0
    assert group[0] - filters[0] == pytest.approx(0.0) and (group[1:] - filters[1:] > 3).all()


def test_bn_gamma_ranks_by_abs_gamma():
    net, g, groups = constructed()
    s = get_criterion("bn_gamma").scores(net, g, groups)[groups[0].id]
    assert ranking(s) == [1, 3, 2, 0]


def test_taylor_scores_zero_for_a_channel_the_loss_ignores():
    net, g, _ = constructed()
    with torch.no_grad():
        net.conv2.weight[:, 2] = 0  # channel 2 never reaches the loss
    pruner = prune_(net, PruningConfig(schedule=OneShot(0.25), criterion="taylor",
                                       layers="conv1"), (1, 6, 6))
    x = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1))
    assert pruner.calibrate([(x, y)] * 3) == 3
    scores = pruner._taylor_scores()[pruner.groups[0].id]
    assert scores[2] == 0 and (np.delete(scores, 2) > 0).all()
    pruner.step(0)
    assert pruner.removed() == {"conv1": [2]}


def test_random_is_seeded_and_changes_with_step():
    net, g, groups = constructed()
    a = get_criterion("random", seed=1).scores(net, g, groups, step=5)[groups[0].id]
    b = get_criterion("random", seed=1).scores(net, g, groups, step=5)[groups[0].id]
    c = get_criterion("random", seed=1).scores(net, g, groups, step=6)[groups[0].id]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_unknown_criterion():
    with pytest.raises(PrunekitError, match="unknown criterion 'l3'"):
        get_criterion("l3")


def test_group_norm_sums_a_linear_consumers_columns_per_channel():
    """conv -> BN -> flatten -> Linear: each channel's score includes its H*W input columns of the Linear."""

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, bias=False)
            self.bn = nn.BatchNorm2d(3)
            self.fc = nn.Linear(3 * 2 * 2, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))

    net = Head().eval()
    g = DependencyGraph(net, (1, 4, 4))
    group = g.by_name["conv"]
    s = get_criterion("l1").scores(net, g, [group])[group.id]
    fc = net.fc.weight.detach().abs().view(5, 3, 4).sum((0, 2))  # columns of channel c: c*4 .. c*4+3
    expected = net.conv.weight.detach().abs().flatten(1).sum(1) + net.bn.weight.detach().abs() + fc
    assert s == pytest.approx(expected.numpy(), rel=1e-6)
