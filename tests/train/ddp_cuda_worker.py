"""Worker for test_cuda.py::test_ddp_over_nccl_with_torchrun: gradual Taylor pruning under DDP over NCCL with
SyncBatchNorm, bf16 autocast and channels_last; records per-step mask digests on every rank.

With two or more processes it runs ``prunekit.fit`` (which wraps the model in DDP and swaps SyncBatchNorm in).
With one GPU, ``fit`` runs without DDP (world 1), so the worker drives DDP over a one-rank NCCL group itself.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from prunekit.data import iterate_batches, synthetic
from prunekit.models import create_model
from prunekit.pruning import PolynomialDecay, PruningConfig, prune_
from prunekit.train import TrainConfig, fit, init_distributed
from prunekit.train.syncbn import swap_sync_batchnorm

STEPS = 12


class Recorder:
    """Runs after the pruner each step: digest of this rank's masks, and whether SyncBatchNorm is in place."""

    def __init__(self, pruner, model):
        self.pruner, self.model, self.digests, self.syncbn = pruner, model, [], []

    def step(self, step):
        flat = self.pruner.bank.flat().detach().cpu().numpy().tobytes()
        self.digests.append([step, hashlib.sha1(flat).hexdigest()[:12], round(self.pruner.sparsity(), 4)])
        self.syncbn.append(type(self.model.blocks[1].pw.bn) is nn.SyncBatchNorm)

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


def main(out: str) -> None:
    ctx = init_distributed("cuda")
    torch.manual_seed(0)
    data = synthetic(train_size=64 * STEPS, test_size=64)
    model = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True, dropout=0.0)
    sched = PolynomialDecay(0.1, 0.5, begin_step=0, end_step=10, frequency=2)
    pruner = prune_(model, PruningConfig(schedule=sched, criterion="taylor", taylor_batches=2), (1, 28, 28))
    rec = Recorder(pruner, model)
    if ctx.world > 1:
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_epochs=0, max_steps=STEPS, sync_bn=True, amp=True,
                          channels_last=True)
        fit(model, data, cfg, None, callbacks=[pruner, rec], ctx=ctx, progress=False, log=lambda s: None)
    else:
        dev = ctx.device
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl")
        model.to(dev).to(memory_format=torch.channels_last)
        restore = swap_sync_batchnorm(model, dev)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index], broadcast_buffers=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        batches = iterate_batches(data.to(dev), "train", 64, train=True, device=dev)
        for step, (x, y) in zip(range(STEPS), batches, strict=False):
            pruner.step(step)
            rec.step(step)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(ddp(x.contiguous(memory_format=torch.channels_last)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        restore()
    gid = next(g.id for g in pruner.groups if g.name == "blocks.3.pw.conv")
    dead = torch.as_tensor(~pruner.alive()[gid])
    rows = model.blocks[3].pw.conv.weight.grad.flatten(1).abs().sum(1).cpu()
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{dist.get_rank()}.json").write_text(json.dumps({
        "world": dist.get_world_size(), "backend": dist.get_backend(), "ddp": True, "digests": rec.digests,
        "removed": pruner.removed(), "syncbn": all(rec.syncbn), "folded": len(pruner.hooks.folded),
        "dead_filter_grad_max": float(rows[dead].max()) if dead.any() else None}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
