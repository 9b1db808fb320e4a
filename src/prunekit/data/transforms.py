"""Batched tensor augmentation and normalisation (same code on CPU and GPU).

Images travel as uint8 ``(N, C, H, W)`` batches; ``augment`` draws its randomness from an explicit
generator so every batch is reproducible from ``(seed, epoch, batch_index)`` alone — which is what makes
resume-from-any-step identical to an uninterrupted run.
"""

from __future__ import annotations

import torch


def batch_generator(seed: int, epoch: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose state depends only on (seed, epoch, batch index)."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch * 10_007 + index) % (2**63 - 1))
    return g


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float32 normalised with per-channel mean/std (given on the 0..1 scale)."""
    x = x.float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
