"""Worker for test_distributed.py: gradual pruning under torchrun; records mask digests on every rank."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from prunekit.data import load_data
from prunekit.io import save_tensors
from prunekit.models import create_model
from prunekit.pruning import PolynomialDecay, PruningConfig, prune_
from prunekit.train import TrainConfig, fit, init_distributed


class Recorder:
    """Runs after the pruner each step: digest of this rank's masks."""

    def __init__(self, pruner):
        self.pruner, self.digests = pruner, []

    def step(self, step):
        flat = self.pruner.bank.flat().detach().cpu().numpy().tobytes()
        self.digests.append([step, hashlib.sha1(flat).hexdigest()[:12], round(self.pruner.sparsity(), 4)])

    def state_dict(self):
        return {}

    def load_state_dict(self, s):
        pass


def main(out: str, criterion: str, steps: int, end_step: int) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    data = load_data("bundled")
    model = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True, dropout=0.0)
    # float64, so that comparing 1 and 2 processes tests DDP rather than rounding. Training is chaotic: even in
    # one process a 1e-12 change to one weight grows to 0.1 after 12 steps, so runs are compared over a few steps.
    model.double()
    sched = PolynomialDecay(0.1, 0.5, begin_step=0, end_step=end_step, frequency=max(1, end_step // 5))
    pruner = prune_(model, PruningConfig(schedule=sched, criterion=criterion, taylor_batches=2), (1, 28, 28))
    rec = Recorder(pruner)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, warmup_epochs=0, max_steps=steps, sync_bn=True)
    fit(model, data, cfg, None, callbacks=[pruner, rec], ctx=ctx, progress=False, log=lambda s: None)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{ctx.rank}.json").write_text(json.dumps({"world": ctx.world, "digests": rec.digests,
                                                                "removed": pruner.removed()}))
    if ctx.is_main:
        save_tensors(Path(out) / "model.safetensors", model.state_dict())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
