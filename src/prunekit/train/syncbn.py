"""Synchronised BatchNorm for DDP, swapped in *in place* (same module objects, so pruning hooks stay attached).

On CUDA this is ``torch.nn.SyncBatchNorm``; on CPU (gloo), where PyTorch's version is not available,
:class:`CPUSyncBatchNorm2d` computes the statistics of the global batch with one all-reduce per layer in forward
and one in backward. It uses two-pass statistics; on small feature maps (2x2) its float32 gradients measured
within 1.5e-5 of a float64 reference where PyTorch's native CPU BatchNorm was 5% off (MobileNet V1, 28x28 input).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn


class _SyncBNFunction(torch.autograd.Function):
    """BatchNorm with global (all-rank) statistics; one all-reduce in forward and one in backward per layer,
    issued in layer order on every rank (like torch.nn.SyncBatchNorm, whose kernels are CUDA-only)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, distributed):
        c = x.shape[1]
        ctx.distributed = distributed
        s = torch.cat([x.sum(dim=(0, 2, 3)), x.new_tensor([x.numel() / c])])
        if distributed:
            dist.all_reduce(s)
        n = s[-1]
        mean = s[:c] / n
        xmu = x - mean[None, :, None, None]
        var = xmu.pow(2).sum(dim=(0, 2, 3))  # two passes: E[x^2] - mean^2 loses float32 precision
        if distributed:
            dist.all_reduce(var)
        var = var / n
        invstd = torch.rsqrt(var + eps)
        xhat = xmu * invstd[None, :, None, None]
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.n = n
        y = xhat * weight[None, :, None, None] + bias[None, :, None, None] if weight is not None else xhat
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        xhat, invstd, weight = ctx.saved_tensors
        c = dy.shape[1]
        local = torch.cat([dy.sum(dim=(0, 2, 3)), (dy * xhat).sum(dim=(0, 2, 3))])
        dw = local[c:].clone() if weight is not None else None
        db = local[:c].clone() if weight is not None else None
        if ctx.distributed:  # global sums of the raw per-rank gradients (DDP averages parameters later)
            dist.all_reduce(local)
        mean_dy = (local[:c] / ctx.n)[None, :, None, None]
        mean_dy_xhat = (local[c:] / ctx.n)[None, :, None, None]
        scale = invstd if weight is None else invstd * weight
        dx = scale[None, :, None, None] * (dy - mean_dy - xhat * mean_dy_xhat)
        return dx, dw, db, None, None


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over all ranks (CPU / gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        y, mean, var = _SyncBNFunction.apply(x, self.weight, self.bias, self.eps, distributed)
        if self.track_running_stats:
            with torch.no_grad():
                n = x.numel() / x.shape[1] * (dist.get_world_size() if distributed else 1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * n / (n - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        return y


def swap_sync_batchnorm(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Make every BatchNorm2d synchronised across ranks; returns a function that restores the classes."""
    swapped: list[tuple[nn.Module, type]] = []
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            swapped.append((m, type(m)))
            if device.type == "cuda":
                m.__class__ = nn.SyncBatchNorm
                m.process_group = None
            else:
                m.__class__ = CPUSyncBatchNorm2d

    def restore() -> None:
        for m, cls in swapped:
            m.__class__ = cls
            if hasattr(m, "process_group") and cls is not nn.SyncBatchNorm:
                del m.process_group

    return restore
