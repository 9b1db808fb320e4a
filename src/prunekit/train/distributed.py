"""torchrun / DistributedDataParallel helpers. Single-process runs use the same code with world=1."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly 1-process) job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a one-line user error."""
    from ..errors import PrunekitError

    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise PrunekitError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PrunekitError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index >= torch.cuda.device_count():
            raise PrunekitError(f"device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def init_distributed(device: str = "auto") -> DistContext:
    """Initialise from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a plain run gets world=1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        atexit.register(_destroy)
    return DistContext(rank, world, local_rank, dev)


def _destroy() -> None:
    """Destroy the process group at exit, while the interpreter is still whole: a rank that exits with a live
    Gloo group can abort in interpreter finalization ("terminate called without an active exception", SIGABRT;
    pytorch/pytorch#190489, #179291), which failed a 2-process test on a loaded 2-core machine. The ranks meet
    first: the abort was seen again (2026-12-02) in a rank that had written its results and torn its group down
    while rank 0 was still saving the model. A rank that never arrives (it died) is waited for at most 60 s."""
    if dist.is_available() and dist.is_initialized():
        try:
            if dist.get_backend() == "gloo" and dist.get_world_size() > 1:
                dist.monitored_barrier(timeout=timedelta(seconds=60), wait_all_ranks=True)
        except Exception:  # a peer is gone: tear down anyway
            pass
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` across ranks in place (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
