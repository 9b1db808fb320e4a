"""Network surgery: physically delete channels, verified against the masked model.

>>> import torch
>>> from prunekit.models import create_model
>>> from prunekit.graph import DependencyGraph
>>> m = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True).eval()
>>> g = DependencyGraph(m, (1, 28, 28))
>>> res = shrink(m, (1, 28, 28), {"blocks.0.pw.conv": [0, 1, 2]}, graph=g)
>>> res.max_abs_diff <= 1e-4 and res.params_after < res.params_before
True
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .cost import profile
from .errors import PrunekitError, UnsupportedGraphError, VerificationError
from .graph import DependencyGraph
from .graph.analysis import Slot
from .graph.handlers import handler_for, set_submodule
from .graph.masking import masked

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5


@dataclass
class SurgeryResult:
    """The shrunk model and what surgery measured."""

    model: nn.Module
    max_abs_diff: float | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: int
    channels_removed: int
    seconds: float
    removed: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "params_before": self.params_before,
                "params_after": self.params_after, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "groups": self.groups, "channels_removed": self.channels_removed, "seconds": self.seconds}


# --- which channels -------------------------------------------------------------------------------


def zero_channels(model: nn.Module, graph: DependencyGraph, groups: Sequence[str] | None = None,
                  atol: float = 0.0) -> dict[str, list[int]]:
    """The seed's rule, made exact: channels whose every producing weight (conv/linear rows and biases, BN affine)
    in the coupled group is zero — e.g. a pointwise filter, its BN, and the next depthwise filter and BN, as
    :meth:`prunekit.pruning.Pruner.bake` leaves them. Zero pointwise weights alone are not enough: the next BN
    would still add a constant, and deleting the channel would change the model's outputs."""
    modules = dict(model.named_modules())
    names = set(groups) if groups is not None else {g.name for g in graph.groups if g.prunable}
    nonzero = np.zeros(len(graph.comp_of), dtype=bool)
    for s in graph.state.slots:
        if s.kind not in ("out", "channel"):
            continue
        m = modules[s.module]
        rows = [m.weight] if getattr(m, "weight", None) is not None else []
        if getattr(m, "bias", None) is not None:
            rows.append(m.bias)
        for t in rows:
            mag = t.detach().abs().reshape(t.shape[0], -1).amax(1).cpu().numpy()
            nonzero[s.labels[mag > atol]] = True
    removed: dict[str, list[int]] = {}
    root_nonzero = np.zeros(int(graph.comp_of.max()) + 1, dtype=bool)
    np.logical_or.at(root_nonzero, graph.comp_of, nonzero)
    for g in graph.groups:
        if g.name in names and g.prunable:
            idx = np.flatnonzero(~root_nonzero[g.comps])
            if 0 < len(idx) < g.size:
                removed[g.name] = idx.tolist()
    return removed


# --- surgery --------------------------------------------------------------------------------------


def _module_plan(graph: DependencyGraph, keep_elem: np.ndarray) -> dict[str, dict[str, tuple[np.ndarray, Slot]]]:
    plan: dict[str, dict[str, tuple[np.ndarray, Slot]]] = {}
    for s in graph.state.slots:
        keep = np.flatnonzero(keep_elem[s.labels])
        kinds = plan.setdefault(s.module, {})
        key = f"{s.kind}:{s.dim}" if s.kind == "param" else s.kind
        if key in kinds and not np.array_equal(kinds[key][0], keep):
            raise UnsupportedGraphError(f"layer '{s.module}' is used at several places with different channels; "
                                        "exclude its group from pruning")
        kinds[key] = (keep, s)
    return plan


def _idx(keep: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(keep, dtype=torch.long, device=device)


def _shrink_module(name: str, m: nn.Module, kinds: dict[str, tuple[np.ndarray, Slot]]) -> nn.Module | None:
    h = handler_for(m)
    try:
        if h is None:
            raise NotImplementedError
        return h.shrink(name, m, {k: keep for k, (keep, _) in kinds.items()})
    except NotImplementedError:
        raise UnsupportedGraphError(f"layer '{name}' ({type(m).__name__}) cannot be resized") from None


def apply_surgery(model: nn.Module, graph: DependencyGraph, removed: Mapping[str, Sequence[int]]) -> int:
    """Delete the ``removed`` channels from ``model`` in place; returns how many layers changed."""
    keep_elem = graph.keep_elements(removed)
    plan = _module_plan(graph, keep_elem)
    modules = dict(model.named_modules())
    changed = 0
    for name, kinds in plan.items():
        params = {k: v for k, v in kinds.items() if k.startswith("param:")}
        layer = {k: v for k, v in kinds.items() if not k.startswith("param:")}
        for keep, slot in params.values():
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            old = getattr(owner, attr)
            if len(keep) == old.shape[slot.dim]:
                continue
            data = old.detach().index_select(slot.dim, _idx(keep, old.device)).clone()
            if isinstance(old, nn.Parameter):
                setattr(owner, attr, nn.Parameter(data, requires_grad=old.requires_grad))
            else:
                owner.register_buffer(attr, data)
            changed += 1
        if not layer:
            continue
        if name not in modules:
            raise UnsupportedGraphError(f"layer '{name}' not found in the model")
        full = all(len(keep) == len(slot.labels) and np.array_equal(keep, np.arange(len(slot.labels)))
                   for keep, slot in layer.values())
        if full:
            continue
        new = _shrink_module(name, modules[name], layer)
        if new is not None:
            set_submodule(model, name, new)
            changed += 1
    return changed


# --- verification ---------------------------------------------------------------------------------


def _flatten_out(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten_out(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten_out(o)]
    return []


@torch.no_grad()
def max_abs_diff(a: nn.Module | list[torch.Tensor], b: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between the outputs of two models (or reference outputs) in eval mode."""
    ref = a if isinstance(a, list) else _run_eval(a, inputs)
    got = _run_eval(b, inputs)
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got, strict=True)):
        raise VerificationError(f"output shapes differ: {[list(r.shape) for r in ref]} vs {[list(g.shape) for g in got]}")
    return max((float((r.float() - g.float()).abs().max()) for r, g in zip(ref, got, strict=True)), default=0.0)


def _run_eval(model: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    was = model.training
    model.eval()
    try:
        return [t.detach().clone() for t in _flatten_out(model(inputs))]
    finally:
        model.train(was)


def verify(reference: nn.Module | list[torch.Tensor], shrunk: nn.Module, inputs: torch.Tensor,
           atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> float:
    """Check that ``shrunk`` reproduces ``reference`` (the masked model, or its outputs).

    The tolerance is ``atol + rtol * max|reference|``: 1e-4 for outputs of ordinary size, and float32
    round-off for the astronomically large logits of some untrained deep nets.
    """
    ref = reference if isinstance(reference, list) else _run_eval(reference, inputs)
    diff = max_abs_diff(ref, shrunk, inputs)
    scale = max((float(r.float().abs().max()) for r in ref if r.numel()), default=0.0)
    tol = atol + rtol * scale
    if not diff <= tol:
        raise VerificationError(f"surgery verification failed: max abs diff {diff:.3g} > {tol:.3g} "
                                "(the shrunk model does not reproduce the masked model)")
    return diff


def example_inputs(input_shape: Sequence[int], batch: int = 4, seed: int = 0, device=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_shape, generator=g).to(device or "cpu")


def shrink(model: Any, input_shape: Sequence[int] | None = None,
           removed: Mapping[str, Sequence[int]] | str = "zero", *, graph: DependencyGraph | None = None,
           inplace: bool = False, check: bool = True, inputs: torch.Tensor | None = None,
           atol: float = DEFAULT_ATOL) -> SurgeryResult:
    """Remove channels and return a smaller model whose outputs equal the masked model's.

    ``shrink(pruner)`` removes a :class:`~prunekit.pruning.Pruner`'s pruned channels (its ``shrink()``).

    Args:
        model: the model (unchanged unless ``inplace``), or a pruner.
        input_shape: ``(C, H, W)`` of one input.
        removed: ``{group name: [channel indices]}`` or ``"zero"`` (channels whose weights are all zero).
        graph: a dependency graph of ``model`` (built if not given).
        check: verify against the masked model (``max_abs_diff <= atol`` in fp32 eval mode) and raise otherwise.
    """
    if not isinstance(model, nn.Module) and hasattr(model, "removed") and hasattr(model, "shrink"):
        return model.shrink(check=check, inputs=inputs)  # a Pruner (surgery does not import pruning)
    if input_shape is None:
        raise PrunekitError("shrink(model, input_shape, removed): input_shape (C, H, W) is required")
    t0 = time.perf_counter()
    graph = graph or DependencyGraph(model, input_shape)
    if isinstance(removed, str):
        if removed != "zero":
            raise PrunekitError(f"unknown channel rule '{removed}' (use 'zero' or a mapping of group -> indices)")
        removed = zero_channels(model, graph)
    removed = {k: sorted(set(int(i) for i in v)) for k, v in removed.items() if len(v)}
    graph.removed_roots(removed)  # validates names, ranges, locks
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    before = profile(model, input_shape)
    x = inputs if inputs is not None else example_inputs(input_shape, device=device)
    reference = None
    if check:
        with masked(model, graph, removed):
            reference = _run_eval(model, x)
    target = model if inplace else copy.deepcopy(model)
    apply_surgery(target, graph, removed)
    diff = verify(reference, target, x, atol) if check else None
    after = profile(target, input_shape)
    return SurgeryResult(target, diff, before.params, after.params, before.macs, after.macs, len(removed),
                         sum(len(v) for v in removed.values()), time.perf_counter() - t0, dict(removed))
