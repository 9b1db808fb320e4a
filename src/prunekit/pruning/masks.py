"""Mask state: per-group binary buffers on the model, applied in the forward pass by ``graph.MaskHooks``.

Masks are buffers of a ``prunekit_masks`` submodule, so they travel in every ``state_dict`` (checkpoints,
DDP buffer broadcast). Where a group's mask point is a BatchNorm (or other channel-affine norm) output, the
mask is folded into that module's weight and bias for each call (an O(C) multiply, reading the buffer live);
elsewhere a hook multiplies the activation. Either way the masked model computes exactly what surgery will
produce and the parameters themselves are never modified. ``strip`` removes all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..graph import Group
from ..graph.masking import unfold

MASK_MODULE = "prunekit_masks"


class MaskBank(nn.Module):
    """One float buffer of 1s (keep) and 0s (pruned) per channel group."""

    def __init__(self, groups: Sequence[Group]):
        super().__init__()
        self.group_names = [g.name for g in groups]
        for i, g in enumerate(groups):
            self.register_buffer(f"g{i}", torch.ones(g.size))
        self._flat: tuple[int, torch.Tensor] | None = None
        self._keys = [f"g{i}" for i in range(len(groups))]

    def masks(self) -> list[torch.Tensor]:
        """The mask buffers in group order (read on every forward pass: no ``nn.Module.__getattr__``)."""
        b = self._buffers
        return [b[k] for k in self._keys]

    def version(self) -> int:
        """Changes whenever a mask buffer is modified in place (optimizer-free, DDP broadcast, load) or replaced
        (``.to()``). Called by every mask hook in every forward pass, so it reads ``_buffers`` directly (no
        ``nn.Module.__getattr__``)."""
        v = 0
        for m in self._buffers.values():
            v += m._version + m.data_ptr() % 1_000_003
        return v

    def flat(self) -> torch.Tensor:
        """All masks concatenated, plus a trailing constant 1 (for channels outside the selected groups)."""
        v = self.version()
        if self._flat is None or self._flat[0] != v:
            ms = self.masks()
            one = torch.ones(1, device=ms[0].device if ms else "cpu")
            self._flat = (v, torch.cat(ms + [one]))
        return self._flat[1]

    def get(self, name: str) -> torch.Tensor:
        return getattr(self, f"g{self.group_names.index(name)}")

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError("MaskBank holds masks; it is not a layer")


def attach_bank(model: nn.Module, groups: Sequence[Group]) -> MaskBank:
    if hasattr(model, MASK_MODULE):
        raise ValueError("model already carries prunekit masks; call prunekit.strip(model) first")
    bank = MaskBank(groups)
    p = next(model.parameters(), None)
    if p is not None:
        bank.to(p.device)
    model.add_module(MASK_MODULE, bank)
    return bank


def strip(model: nn.Module, *, copy: bool = False) -> nn.Module:
    """Remove every prunekit hook, folded mask and the mask buffers from ``model`` (in place), or from a deep copy
    of it with ``copy=True`` (the model keeps its masks); returns the stripped model. The weights are left as they
    are: to delete the pruned channels, use :func:`prunekit.shrink`."""
    if copy:
        import copy as copy_module

        bank = getattr(model, MASK_MODULE, None)
        if bank is not None:  # the masks are not copied
            delattr(model, MASK_MODULE)
        try:
            clone = copy_module.deepcopy(model)
        finally:
            if bank is not None:
                model.add_module(MASK_MODULE, bank)
        model = clone
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for k in [k for k, fn in hooks.items() if getattr(fn, "_prunekit", False)]:
                del hooks[k]
        unfold(m)
    if hasattr(model, MASK_MODULE):
        delattr(model, MASK_MODULE)
    return model
