"""The cost model: parameters and MACs (multiply-accumulates per image) per layer and in total.

MACs count convolutions and linear layers, as the MobileNet paper does (BN/activations are free after
folding). :func:`profile` runs one forward pass with hooks on a single example input. It lives low in the
package (beside the graph) because pruning targets, budgets and reports all read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class LayerRow:
    """One row of the summary table."""

    name: str
    type: str
    in_channels: int
    out_channels: int
    kernel: str
    groups: int
    params: int
    macs: int
    output_shape: list[int]


@dataclass
class Profile:
    """Per-layer rows and totals for one model and input shape."""

    rows: list[LayerRow]
    params: int
    macs: int
    input_shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "macs": self.macs, "input_shape": self.input_shape,
                "layers": [asdict(r) for r in self.rows]}

    def layer(self, name: str) -> LayerRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)


def _row(name: str, m: nn.Module, out: torch.Tensor) -> LayerRow | None:
    own_params = sum(p.numel() for p in m.parameters(recurse=False))
    shape = list(out.shape[1:]) if isinstance(out, torch.Tensor) else []
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        k = list(m.kernel_size)
        macs = out[0].numel() * (m.in_channels // m.groups) * int(torch.tensor(k).prod())
        return LayerRow(name, type(m).__name__, m.in_channels, m.out_channels, "x".join(map(str, k)), m.groups,
                        own_params, int(macs), shape)
    if isinstance(m, nn.Linear):
        rows_per_sample = out[0].numel() // m.out_features
        return LayerRow(name, "Linear", m.in_features, m.out_features, "-", 1, own_params,
                        m.in_features * m.out_features * rows_per_sample, shape)
    if own_params:
        c = shape[0] if shape else 0
        return LayerRow(name, type(m).__name__, c, c, "-", 1, own_params, 0, shape)
    return None


@torch.no_grad()
def profile(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> Profile:
    """Profile ``model`` on one input of shape ``(C, H, W)``; parameters not owned by a called module count too."""
    rows: dict[str, LayerRow] = {}
    hooks = []
    for name, m in model.named_modules():
        if next(m.parameters(recurse=False), None) is None and not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue

        def hook(mod, _inp, out, name=name):
            if name not in rows and (r := _row(name, mod, out)) is not None:
                rows[name] = r

        hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    ordered = [rows[n] for n, _ in model.named_modules() if n in rows]
    total_params = sum(p.numel() for p in model.parameters())
    return Profile(ordered, total_params, sum(r.macs for r in ordered), list(input_shape))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()
