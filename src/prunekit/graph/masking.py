"""Where channel masks must be applied so that a masked model computes exactly what surgery will produce.

A pruned channel must reach every consumer (conv/linear input) as zero. Producers (conv/linear) and
per-channel ops that do not preserve zero (BatchNorm, sigmoid, ``x + c`` ...) get an output mask; ops that
preserve zero (ReLU, pooling, ``mul``, ``add`` of zeros, reshapes) pass it on. Where a non-zero value can
only be stopped at a consumer (a functional op, or a module called at several places), the consumer's
input is masked instead. The rule "skip a mask when every user masks anyway" keeps the common
conv -> BN -> ReLU chain at a single multiply after BN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .analysis import NodeRec
from .groups import DependencyGraph, Group


@dataclass
class MaskPoint:
    """Multiply a module's output (or input) at one call site by a channel mask."""

    module: str
    where: str  # "output" | "input"
    call: int  # which call of the module in one forward pass (0-based)
    cdim: int
    index: np.ndarray  # per position: index into the flat mask vector (last entry is a constant 1)


def mask_points(graph: DependencyGraph, groups: Sequence[Group]) -> dict[str, list[MaskPoint]]:
    """Mask points per trace mode for masks on ``groups``; the flat vector is ``cat(masks of groups) + [1]``."""
    offsets, total = {}, 0
    for g in groups:
        offsets[g.id] = total
        total += g.size
    flat_of_root = {}
    for g in groups:
        for j, r in enumerate(g.comps.tolist()):
            flat_of_root[r] = offsets[g.id] + j
    selected = np.zeros(len(graph.comp_of), dtype=bool)
    sel_roots = np.array(list(flat_of_root), dtype=np.int64)
    selected[np.isin(graph.comp_of, sel_roots)] = True

    def index_of(labels: np.ndarray) -> np.ndarray:
        roots = graph.comp_of[labels]
        return np.array([flat_of_root.get(int(r), total) for r in roots], dtype=np.int64)

    out: dict[str, list[MaskPoint]] = {}
    for mode, recs in graph.state.records.items():
        by_name = {r.name: r for r in recs}
        calls: dict[str, int] = {}
        safe: dict[str, bool] = {}
        points: list[MaskPoint] = []

        def relevant(r: NodeRec) -> bool:
            return r.labels is not None and bool(selected[r.labels].any())

        for r in recs:
            call = -1
            if r.op == "call_module" and r.module is not None:
                call = calls.get(r.module, 0)
                calls[r.module] = call + 1
            ins = [safe.get(i, True) for i in r.inputs]
            # Consumers: a conv/linear must see zeros at pruned input channels.
            if r.kind == "producer" and r.inputs:
                src = by_name.get(r.inputs[0])
                if src is not None and relevant(src) and not safe.get(src.name, True):
                    points.append(MaskPoint(r.module, "input", call, src.cdim, index_of(src.labels)))
            if not relevant(r):
                safe[r.name] = True if r.labels is not None else all(ins)
                continue
            if r.kind in ("zp", "input"):
                ok = all(ins)
            elif r.kind == "mul":
                ok = any(ins)
            elif r.kind == "add":
                ok = all(ins)
            elif r.kind == "div":
                ok = ins[0] if ins else False
            else:  # producer, nzp, opaque
                ok = False
            if not ok and r.op == "call_module" and r.module is not None:
                users = [by_name[u] for u in r.users if u in by_name]
                covered = users and all(u.kind == "nzp" and u.op == "call_module" and len(u.inputs) == 1
                                        for u in users)
                if not covered:
                    points.append(MaskPoint(r.module, "output", call, r.cdim, index_of(r.labels)))
                    ok = True
            safe[r.name] = ok
        out[mode] = points
    return out


def _mark(fn):
    """Tag a hook as ours so that ``prunekit.strip`` can find it, even on a deep copy of the model."""
    fn._prunekit = True
    return fn


class MaskHooks:
    """Installs mask points as forward hooks; ``flat()`` returns the current flat mask vector (+ trailing 1)."""

    def __init__(self, model: nn.Module, points: dict[str, list[MaskPoint]], flat: Callable[[], torch.Tensor],
                 version: Callable[[], int] = lambda: 0):
        self.model, self.points, self.flat, self.version = model, points, flat, version
        self.handles: list = []
        self._cache: dict[tuple, tuple[int, torch.Tensor]] = {}
        self._calls: dict[str, int] = {}
        # observer(point, tensor before mask, tensor after mask): used to collect Taylor importance
        self.observer: Callable[[MaskPoint, torch.Tensor, torch.Tensor], None] | None = None
        self._install()

    def _mode(self) -> str:
        return "train" if self.model.training and "train" in self.points else "eval"

    def _mask(self, p: MaskPoint, key: tuple, like: torch.Tensor) -> torch.Tensor:
        ver = self.version()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == ver and hit[1].device == like.device and hit[1].dtype == like.dtype:
            return hit[1]
        flat = self.flat().to(like.device)
        m = flat[torch.as_tensor(p.index, device=like.device)].to(like.dtype)
        shape = [1] * like.ndim
        shape[p.cdim] = -1
        m = m.view(shape)
        self._cache[key] = (ver, m)
        return m

    def _install(self) -> None:
        modules = dict(self.model.named_modules())
        table: dict[tuple[str, str], dict[str, dict[int, MaskPoint]]] = {}
        for mode, pts in self.points.items():
            for p in pts:
                table.setdefault((p.module, p.where), {}).setdefault(mode, {})[p.call] = p
        counting = any(p.call > 0 for pts in self.points.values() for p in pts)
        calls = self._calls

        def lookup(name: str, by_mode: dict[str, dict[int, MaskPoint]]) -> MaskPoint | None:
            pts = by_mode.get(self._mode()) or by_mode.get("eval") or {}
            return pts.get(calls.get(name, 0))

        for (name, where), by_mode in table.items():
            if where == "output":
                def hook(mod, inp, out, name=name, by_mode=by_mode):
                    p = lookup(name, by_mode)
                    if p is None or not isinstance(out, torch.Tensor):
                        return None
                    y = out * self._mask(p, (name, "o", p.call, self._mode()), out)
                    if self.observer is not None:
                        self.observer(p, out, y)
                    return y

                self.handles.append(modules[name].register_forward_hook(_mark(hook)))
            else:
                def pre_hook(mod, args, name=name, by_mode=by_mode):
                    p = lookup(name, by_mode)
                    if p is None or not args or not isinstance(args[0], torch.Tensor):
                        return None
                    x = args[0]
                    y = x * self._mask(p, (name, "i", p.call, self._mode()), x)
                    if self.observer is not None:
                        self.observer(p, x, y)
                    return (y,) + tuple(args[1:])

                self.handles.append(modules[name].register_forward_pre_hook(_mark(pre_hook)))
        if counting:  # modules called at several places: count calls within one forward pass
            def reset(mod, args):
                calls.clear()

            def count(mod, inp, out, name):
                calls[name] = calls.get(name, 0) + 1

            self.handles.append(self.model.register_forward_pre_hook(_mark(reset)))
            for name in {n for n, _ in table}:
                self.handles.append(modules[name].register_forward_hook(
                    _mark(lambda mod, inp, out, name=name: count(mod, inp, out, name))))

    def invalidate(self) -> None:
        self._cache.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self._cache.clear()


def group_masks(graph: DependencyGraph, removed: dict[str, Sequence[int]],
                groups: Sequence[Group] | None = None) -> tuple[list[Group], torch.Tensor]:
    """Groups touched by ``removed`` and their flat mask vector (1 = keep) with a trailing constant 1."""
    if groups is None:
        groups = [graph.by_name[n] for n in removed if len(removed[n])]
    parts = []
    for g in groups:
        m = torch.ones(g.size)
        idx = list(removed.get(g.name, []))
        if idx:
            m[torch.as_tensor(idx, dtype=torch.long)] = 0
        parts.append(m)
    return list(groups), torch.cat(parts + [torch.ones(1)])


@contextlib.contextmanager
def masked(model: nn.Module, graph: DependencyGraph, removed: dict[str, Sequence[int]]) -> Iterator[nn.Module]:
    """Temporarily make ``model`` behave as if the ``removed`` channels were deleted (for verification)."""
    groups, flat = group_masks(graph, removed)
    if not groups:
        yield model
        return
    hooks = MaskHooks(model, mask_points(graph, groups), lambda: flat)
    try:
        yield model
    finally:
        hooks.remove()
