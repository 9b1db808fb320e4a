"""CUDA paths (marked ``cuda``; skipped without a GPU, run by ``benchmarks/gpu_check.sh``): GPU-resident data with
on-device augmentation, bf16 autocast + channels_last training with folded masks, the CUDA SyncBatchNorm swap,
masks under torch.compile with Inductor/Triton, and DDP over NCCL through torchrun."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit.data import iterate_batches, synthetic
from prunekit.graph import MaskHooks
from prunekit.models import create_model
from prunekit.pruning import OneShot, PolynomialDecay, PruningConfig, prune_
from prunekit.train import TrainConfig, fit
from prunekit.train.distributed import DistContext

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = torch.device("cuda")
SHAPE = (1, 28, 28)
WORKER = Path(__file__).with_name("ddp_cuda_worker.py")


def model(seed: int = 0, width: float = 0.25):
    torch.manual_seed(seed)
    return create_model("mobilenet_v1", width=width, num_classes=10, in_channels=1, small_input=True, dropout=0.0)


def folded_and_reference(sparsity: float = 0.5):
    """A masked model (folded masks) and its activation-hook twin, both on the GPU."""
    base = model()
    with torch.no_grad():
        for q in base.parameters():
            q.add_(torch.randn_like(q) * 0.1)
    a, b = copy.deepcopy(base).to(DEV), copy.deepcopy(base).to(DEV)
    cfg = PruningConfig(schedule=OneShot(sparsity))
    pa, pb = prune_(a, cfg, SHAPE), prune_(b, cfg, SHAPE)
    pb.hooks.remove()
    pb.hooks = MaskHooks(b, pb.hooks.points, pb.bank.flat, pb.bank.version, fold=False)
    pa.step(0)
    pb.step(0)
    assert pa.hooks.folded and pa.removed() == pb.removed()
    return pa, pb


def test_gpu_resident_data_and_on_device_augmentation_equal_the_cpu_batches():
    data = synthetic(train_size=128, test_size=32)
    gpu = data.to(DEV)
    assert gpu.train.images.is_cuda
    cpu_b = list(iterate_batches(data, "train", 32, train=True, seed=3, epoch=1, device="cpu", augment=True))
    gpu_b = list(iterate_batches(gpu, "train", 32, train=True, seed=3, epoch=1, device=DEV, augment=True))
    assert len(cpu_b) == len(gpu_b) == 4
    for (xc, yc), (xg, yg) in zip(cpu_b, gpu_b, strict=True):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)


@pytest.fixture
def deterministic_cudnn():
    """Deterministic convolution algorithms, so that the folded and the hook model may be compared closely."""
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


@pytest.mark.parametrize("channels_last", [True, False])
def test_folded_masks_under_bf16_autocast_equal_hook_masks(channels_last, deterministic_cudnn):
    pa, pb = folded_and_reference()
    a, b = pa.model.train(), pb.model.train()
    x = torch.randn(16, *SHAPE, device=DEV, generator=torch.Generator(DEV).manual_seed(1))
    if channels_last:
        a, b = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    outs = []
    for m in (a, b):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = m(x)
        assert y.dtype == torch.bfloat16
        y.float().pow(2).sum().backward()
        outs.append(y.float())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-2, atol=1e-2)
    gid = next(g.id for g in pa.groups if g.name == "blocks.3.pw.conv")
    dead = torch.as_tensor(~pa.alive()[gid], device=DEV)
    assert dead.any()
    for m in (a, b):
        blk = m.blocks[3].pw
        rows = blk.conv.weight.grad.flatten(1).abs().sum(1)
        assert float(rows[dead].max()) == 0.0 and float(rows[~dead].max()) > 0  # pruned filters: no gradient
        assert float(blk.bn.weight.grad[dead].abs().max()) == 0.0 and float(blk.bn.bias.grad[dead].abs().max()) == 0.0
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=1e-3, msg=n)


def test_cuda_syncbatchnorm_swap_keeps_folded_masks():
    from prunekit.train.syncbn import swap_sync_batchnorm

    pa, pb = folded_and_reference()
    restore = [swap_sync_batchnorm(m, DEV) for m in (pa.model, pb.model)]
    assert type(pa.model.blocks[2].pw.bn) is torch.nn.SyncBatchNorm
    x = torch.randn(8, *SHAPE, device=DEV, generator=torch.Generator(DEV).manual_seed(2))
    ya, yb = pa.model.train()(x), pb.model.train()(x)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    for r in restore:
        r()
    assert type(pa.model.blocks[2].pw.bn) is torch.nn.BatchNorm2d


def test_fit_on_gpu_bf16_channels_last_gradual_taylor_pruning_then_exact_surgery(tmp_path):
    """``fit`` on the GPU (GPU-resident data, on-device augmentation, bf16, channels_last) with gradual Taylor
    pruning; the trained masked model, back on the CPU in fp32, equals its surgery result."""
    data = synthetic(train_size=512, test_size=128)
    m = model()
    sched = PolynomialDecay(0.0, 0.5, begin_step=2, end_step=20, frequency=4)
    p = prune_(m, PruningConfig(schedule=sched, criterion="taylor", taylor_batches=2), SHAPE)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_epochs=0, amp=True, channels_last=True)
    res = fit(m, data, cfg, tmp_path, callbacks=[p], ctx=DistContext(device=DEV), progress=False, log=lambda s: None)
    assert res["steps"] == 32 and math.isfinite(res["test"]["loss"])
    assert next(m.parameters()).is_cuda
    assert p.sparsity() == pytest.approx(0.5, abs=0.02) and len(p.history) >= 4
    assert p.hooks.folded and p.hooks.observer is None
    m.cpu().float().eval()
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(3))
    r = p.shrink(inputs=x)
    assert r.max_abs_diff <= 1e-4 and r.params_after < r.params_before


def test_compiled_masked_model_on_gpu_follows_its_masks():
    torch._dynamo.reset()
    pa, _ = folded_and_reference(0.25)
    dense = copy.deepcopy(pa.model)
    from prunekit.pruning import strip

    strip(dense)
    x = torch.randn(16, *SHAPE, device=DEV, generator=torch.Generator(DEV).manual_seed(4))
    m = pa.model.eval()
    with torch.no_grad():
        torch.compile(dense.eval())(x)  # a dense graph of the same class must not be reused for the masked model
        cm = torch.compile(m)
        for s in (0.25, 0.5):
            pa._prune_to(s)
            torch.testing.assert_close(cm(x), m(x), rtol=1e-3, atol=1e-3)  # TF32 convolutions
        assert (m(x) - dense(x)).abs().max() > 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_over_nccl_with_torchrun(tmp_path):
    """torchrun with one process per GPU (at most 2): NCCL, DistributedDataParallel, SyncBatchNorm, bf16 and
    Taylor pruning; every rank holds identical masks at every step and reaches the target."""
    nproc = min(2, torch.cuda.device_count())
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(WORKER), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(nproc)]
    for rk in ranks:
        assert rk["world"] == nproc and rk["backend"] == "nccl" and rk["ddp"]
        assert rk["digests"] == ranks[0]["digests"] and rk["removed"] == ranks[0]["removed"]
        assert rk["syncbn"] and rk["folded"] > 0
        assert rk["dead_filter_grad_max"] == 0.0
    assert len({d[1] for d in ranks[0]["digests"]}) >= 3  # the masks changed along the schedule
    assert ranks[0]["digests"][-1][2] == pytest.approx(0.5, abs=0.02)
