"""Masks folded into BatchNorm/GroupNorm weight and bias compute bitwise what activation-multiplying hooks compute:
outputs, input and parameter gradients, running statistics, whole training runs (with resume), Taylor scores, save/
load and the SyncBatchNorm swap; and they add no activation-sized operation to a training step."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from prunekit.data import synthetic
from prunekit.graph import MaskHooks
from prunekit.models import create_model
from prunekit.pruning import OneShot, PolynomialDecay, PruningConfig, prune_, strip
from prunekit.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """Mask points of every kind: BN -> ReLU; BN -> add -> conv (no ReLU: pruned gamma/beta would get gradient
    if nothing stopped it); GroupNorm -> SiLU; conv -> ReLU without a norm and a BatchNorm called twice (both
    stay hooks)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.g3 = nn.Conv2d(8, 16, 1), nn.GroupNorm(16, 16)
        self.c4 = nn.Conv2d(16, 16, 3, padding=1)
        self.shared = nn.BatchNorm2d(16)
        self.c5 = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        a = F.relu(self.b1(self.c1(x)))
        y = self.c3(self.b2(self.c2(a)) + a)
        z = F.silu(self.g3(y))
        z = self.shared(F.relu(self.c4(z)))
        z = self.shared(z + 1)
        return self.fc(F.relu(self.c5(z)).mean((2, 3)))


def randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (fresh ones would hide bias and eval-mode errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            for n, p in mod.named_parameters(recurse=False):
                if n in ("weight", "bias") and p.ndim == 1:
                    p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def mobilenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True, dropout=0.0)


CASES = {"net": (lambda: randomize(Net()), (3, 8, 8), {"layers": "all"}),
         "mobilenet": (lambda: randomize(mobilenet()), (1, 28, 28), {})}


def unfolded(pruner) -> None:
    """Switch a pruner to the reference: every mask point multiplies the activation."""
    pruner.hooks.remove()
    pruner.hooks = MaskHooks(pruner.model, pruner.hooks.points, pruner.bank.flat, pruner.bank.version, fold=False)


def pair(case: str, sparsity: float = 0.5, criterion: str = "l1"):
    make, shape, kw = CASES[case]
    base = make()
    cfg = PruningConfig(schedule=OneShot(sparsity), criterion=criterion, **kw)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    pa, pb = prune_(a, cfg, shape), prune_(b, cfg, shape)
    unfolded(pb)
    pa.step(0)
    pb.step(0)
    assert pa.removed() == pb.removed() and pa.removed()
    return pa, pb, shape


def assert_same_pass(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Forward + backward with a random output gradient: outputs, input/parameter gradients and buffers equal."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    assert torch.equal(ya, yb)
    w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(4), dtype=ya.dtype)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), n
    for (n, u), v in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(u, v), n


@pytest.mark.parametrize("case,folded", [("net", {"b1", "b2", "g3"}), ("mobilenet", None)])
@pytest.mark.parametrize("train", [True, False])
def test_folded_masks_equal_hook_masks(case, folded, train):
    pa, pb, shape = pair(case)
    a, b = pa.model.train(train), pb.model.train(train)
    points = {p.module for pts in pa.hooks.points.values() for p in pts}
    if folded is None:  # MobileNet: every mask point is a BN output
        folded = {n for n in points if n.endswith(".bn")}
        assert folded == points and len(folded) >= 20
    assert set(pa.hooks.folded) == folded and not pb.hooks.folded
    hooked = {n for n, mod in a.named_modules() if any(getattr(h, "_prunekit", False)
                                                        for h in mod._forward_hooks.values())}
    assert hooked == points - folded  # the rest stay hooks
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(3))
    assert_same_pass(a, b, x)
    if case == "net" and train:  # b2 feeds add -> conv: nothing but the mask stops gradient to pruned gamma/beta
        dead = pa.bank.flat()[torch.as_tensor(next(p.index for p in pa.hooks.points["eval"] if p.module == "b2"))] == 0
        assert dead.any()
        for t in (a.b2.weight.grad, a.b2.bias.grad):
            assert float(t[dead].abs().max()) == 0.0 and float(t[~dead].abs().min()) > 0


def test_mask_updates_and_buffer_replacement_stay_live():
    """Folded masks read the bank's buffers on every call: in-place updates (pruning, DDP broadcast,
    load_state_dict) and replaced buffers (``.to(dtype)``) take effect without any cache to invalidate."""
    pa, pb, shape = pair("mobilenet", 0.25)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(5))
    pa._prune_to(0.5)
    pb._prune_to(0.5)
    assert_same_pass(pa.model, pb.model, x)
    with torch.no_grad():  # what DDP's buffer broadcast does: write into the buffers, bypassing the pruner
        for ma, mb in zip(pa.bank.masks(), pb.bank.masks(), strict=True):
            ma[: len(ma) // 3] = 0
            mb[: len(mb) // 3] = 0
    pb.hooks.invalidate()  # the hook path caches its gathered masks by buffer version; the folded path has no cache
    for m in (pa.model, pb.model):
        m.zero_grad()
    assert_same_pass(pa.model, pb.model, x)
    a, b = pa.model.double(), pb.model.double()
    for m in (a, b):
        m.zero_grad(set_to_none=True)
    assert_same_pass(a, b, x.double())


def test_training_with_folded_masks_equals_hook_masks_also_after_resume(tmp_path):
    """Gradual pruning inside ``fit`` (masks change mid-run, SGD momentum, weight decay): a folded run that is
    stopped and resumed ends with bitwise the weights and masks of an uninterrupted hook run, for L1 and Taylor."""
    data = synthetic(train_size=96, test_size=32)
    sched = PolynomialDecay(0.0, 0.6, begin_step=1, end_step=7, frequency=2)
    tcfg = dict(epochs=3, batch_size=32, lr=0.05, warmup_epochs=0)
    quiet = dict(progress=False, log=lambda s: None)
    for criterion in ("l1", "taylor"):
        cfg = dict(schedule=sched, criterion=criterion, taylor_batches=2)
        ref = mobilenet()
        pr = prune_(ref, PruningConfig(**cfg), (1, 28, 28))
        unfolded(pr)
        fit(ref, data, TrainConfig(**tcfg), tmp_path / f"ref-{criterion}", callbacks=[pr], **quiet)
        m1 = mobilenet()
        p1 = prune_(m1, PruningConfig(**cfg), (1, 28, 28))
        fit(m1, data, TrainConfig(**tcfg, max_steps=4), tmp_path / criterion, callbacks=[p1], **quiet)
        m2 = mobilenet(seed=7)
        p2 = prune_(m2, PruningConfig(**cfg), (1, 28, 28))
        fit(m2, data, TrainConfig(**tcfg), tmp_path / criterion, callbacks=[p2], resume=True, **quiet)
        assert p2.hooks.folded and not pr.hooks.folded
        assert pr.removed() == p2.removed() and p2.sparsity() == pytest.approx(0.6, abs=0.02), criterion
        for (k, u), v in zip(ref.state_dict().items(), m2.state_dict().values(), strict=True):
            assert torch.equal(u, v), (criterion, k)


def test_taylor_scores_unchanged_and_folding_resumes_after_collection():
    pa, pb, shape = pair("mobilenet", 0.25, criterion="taylor")
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randn(8, *shape, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    assert pa.calibrate(batches) == pb.calibrate(batches) == 3
    sa, sb = pa._taylor_scores(), pb._taylor_scores()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert (sa[k] == sb[k]).all(), k
    alive = pa.alive()
    live = np.concatenate([sa[k][alive[k]] for k in sa])
    assert (live > 0).mean() > 0.95  # statistics were really collected (a few channels may be dead after ReLU6)
    assert pa.hooks.observer is None and pa.hooks.folded  # collection over: folded masks again
    pa._prune_to(0.5)
    pb._prune_to(0.5)
    assert pa.removed() == pb.removed()
    assert_same_pass(pa.model, pb.model, batches[0][0])


def test_save_load_restores_folded_masks(tmp_path):
    from prunekit import saved
    from prunekit.models import InputSpec, ModelSpec

    pa, pb, shape = pair("mobilenet", 0.4)
    spec = ModelSpec("mobilenet_v1", {"width": 0.25, "num_classes": 10, "in_channels": 1, "small_input": True,
                                      "dropout": 0.0}, InputSpec([28, 28], 1, [0.5], [0.5]))
    saved.save(pa.model, tmp_path, spec)
    loaded = saved.load(tmp_path)
    assert set(loaded.pruner.hooks.folded) == set(pa.hooks.folded)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(8))
    assert_same_pass(loaded.model.train(), pb.model.train(), x)


def test_syncbn_swap_keeps_folding():
    """train.syncbn swaps BatchNorm classes in place: the folded forward runs the swapped class's own forward."""
    from prunekit.train.syncbn import CPUSyncBatchNorm2d, swap_sync_batchnorm

    pa, pb, shape = pair("mobilenet")
    restore = [swap_sync_batchnorm(m, torch.device("cpu")) for m in (pa.model, pb.model)]
    assert type(pa.model.blocks[2].pw.bn) is CPUSyncBatchNorm2d
    calls = []
    hook = CPUSyncBatchNorm2d.forward

    def spy(self, x):
        calls.append(self)
        return hook(self, x)

    CPUSyncBatchNorm2d.forward = spy
    try:
        assert_same_pass(pa.model.train(), pb.model.train(),
                         torch.randn(4, *shape, generator=torch.Generator().manual_seed(9)))
    finally:
        CPUSyncBatchNorm2d.forward = hook
    assert pa.model.blocks[2].pw.bn in calls
    for r in restore:
        r()
    assert type(pa.model.blocks[2].pw.bn) is nn.BatchNorm2d and pa.hooks.folded


def test_strip_and_strip_copy_remove_folded_forwards():
    pa, _, shape = pair("mobilenet")
    m = pa.model.eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(10))
    masked = m(x)
    clean = strip(m, copy=True)
    assert not any("forward" in mod.__dict__ for mod in clean.modules())
    assert torch.equal(m(x), masked)  # the original keeps its masks
    dense = clean(x)
    assert (dense - masked).abs().max() > 1e-2 * dense.abs().max()
    strip(m)
    assert not any("forward" in mod.__dict__ for mod in m.modules())
    assert torch.equal(m(x), dense)


class OpLog(TorchDispatchMode):
    """(op, output numel) of every aten call."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        n = max((t.numel() for t in outs if isinstance(t, torch.Tensor)), default=0)
        self.ops.append((str(func.overloadpacket), n))
        return out


def test_folded_masks_add_only_per_channel_ops_to_a_training_step():
    """What makes folding cheap, checked by operation rather than by time: a masked MobileNet training step runs
    exactly the dense step's activation-sized operations, plus two O(C) multiplies forward and two backward per
    folded BatchNorm."""
    pa, _, shape = pair("mobilenet")
    dense = strip(pa.model, copy=True)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(11))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(12))
    logs = {}
    for name, m in (("dense", dense), ("masked", pa.model)):
        m.train()
        with OpLog() as log:
            F.cross_entropy(m(x), y).backward()
        logs[name] = Counter(log.ops)
    widest = max(mod.num_features for mod in dense.modules() if isinstance(mod, nn.BatchNorm2d))
    extra = logs["masked"] - logs["dense"]
    assert not logs["dense"] - logs["masked"]
    assert all(op == "aten.mul" and n <= widest for op, n in extra), extra
    assert sum(extra.values()) == 4 * len(pa.hooks.folded)
