"""Where channel masks must be applied so that a masked model computes exactly what surgery will produce, and how.

*Where.* A pruned channel must reach every consumer (conv/linear input) as zero. Producers (conv/linear) and
per-channel ops that do not preserve zero (BatchNorm, sigmoid, ``x + c`` ...) get an output mask; ops that
preserve zero (ReLU, pooling, ``mul``, ``add`` of zeros, reshapes) pass it on. Where a non-zero value can
only be stopped at a consumer (a functional op, or a module called at several places), the consumer's
input is masked instead. The rule "skip a mask when every user masks anyway" keeps the common
conv -> BN -> ReLU chain at a single mask point, on the BN output.

*How.* A mask point on the output of a channel-affine normalisation (BatchNorm, SyncBatchNorm, InstanceNorm,
GroupNorm; affine, called once per forward pass; a norm + activation module such as timm's ``BatchNormAct2d``
only when its handler says the activation maps 0 to 0) is *folded* into its affine parameters: the module runs its
own ``forward`` with ``weight * m`` and ``bias * m`` in place of ``weight`` and ``bias`` (swapped into
``_parameters`` for the call, restored in ``finally``). Since ``norm(x) * gamma * m + beta * m ==
(norm(x) * gamma + beta) * m`` with the batch statistics untouched, this is exact: kept channels use the
very same parameter values (``* 1``), pruned channels come out as zero, the input gradient of a pruned
channel is ``gamma * m = 0`` times the usual term, and the parameter gradients pass through ``* m``, so pruned
gamma/beta get exactly zero. It costs two O(C) multiplies forward and two backward per folded module, instead
of multiplying an N x C x H x W activation forward and backward. All other points (consumer inputs, modules
called at several places, conv/linear outputs, non-affine norms) keep a forward (pre-)hook that multiplies
the activation.

Rejected alternatives: (1) zeroing gamma/beta in place at every ``pruner.step()`` (plus gradient hooks)
costs nothing per forward but rewrites the weights: ``strip`` would no longer give back the dense model,
momentum revives pruned entries between ``optimizer.step()`` and the next ``pruner.step()`` (an evaluation
there is wrong), and an in-place write between two forwards and one backward breaks autograd. (2) The same
swap in a forward pre-hook / forward hook pair: dynamo does not guard on module hooks by default
(``skip_nnmodule_hook_guards``), so a graph compiled for a dense model of the same class is silently reused for
the masked one (this still applies to the remaining hook points); an instance ``forward`` is guarded.
(3) Re-implementing each norm's forward around ``F.batch_norm``: duplicates torch code per class
(SyncBatchNorm, ``CPUSyncBatchNorm2d``); the swap runs each class's own forward, looked up at call time, so
the in-place class swap of ``train.syncbn`` keeps working.

While Taylor statistics are collected (``MaskHooks.observer`` set) a folded point multiplies the activation
instead, so the observer sees the activation before and after the mask exactly as with a hook; forward and
gradients are bitwise the same either way.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .analysis import NodeRec
from .groups import DependencyGraph, Group
from .handlers import handler_for

# Channel-affine normalisations: output channel c is linear in (weight[c], bias[c]) with statistics that do not
# depend on them, so an output mask can be folded into the two vectors.
FOLDABLE = (nn.modules.batchnorm._NormBase, nn.GroupNorm)


@dataclass
class MaskPoint:
    """Multiply a module's output (or input) at one call site by a channel mask."""

    module: str
    where: str  # "output" | "input"
    call: int  # which call of the module in one forward pass (0-based)
    cdim: int
    index: np.ndarray  # per position: index into the flat mask vector (last entry is a constant 1)
    calls: int = 0  # how many times the module is called in one forward pass (0: unknown)


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
        for p in points:
            p.calls = calls.get(p.module, 0)
        out[mode] = points
    return out


def _mark(fn):
    """Tag a hook (or replacement forward) as ours so that ``prunekit.strip`` can find it, even on a deep copy."""
    fn._prunekit = True
    return fn


class MaskHooks:
    """Applies mask points: folded into norm parameters where possible (see the module docstring), else as forward
    (pre-)hooks that multiply the activation.

    ``flat()`` returns the current flat mask vector (+ trailing 1) and ``version()`` changes whenever it may have
    changed. ``parts()``, if given, returns the tensors that ``flat`` concatenates (e.g. a MaskBank's buffers):
    a folded point whose channels are a contiguous run of one part reads a view of it, live, with no copy.
    ``fold=False`` multiplies activations everywhere (the reference the folded masks are tested against).
    """

    def __init__(self, model: nn.Module, points: dict[str, list[MaskPoint]], flat: Callable[[], torch.Tensor],
                 version: Callable[[], int] = lambda: 0, parts: Callable[[], Sequence[torch.Tensor]] | None = None,
                 fold: bool = True):
        self.model, self.points, self.flat, self.version, self.parts = model, points, flat, version, parts
        self.fold = fold
        self.handles: list = []
        self.folded: dict[str, nn.Module] = {}  # module name -> module whose forward we replaced
        self._cache: dict[tuple, tuple[int, torch.Tensor]] = {}
        self._calls: dict[str, int] = {}
        self._views: dict[int, tuple[int, slice | None]] = {}  # id(point) -> (part, slice or whole part)
        # observer(point, tensor before mask, tensor after mask): used to collect Taylor importance
        self.observer: Callable[[MaskPoint, torch.Tensor, torch.Tensor], None] | None = None
        self._install()

    def _mode(self) -> str:
        return "train" if self.model.training and "train" in self.points else "eval"

    def _mask(self, p: MaskPoint, key: tuple, like: torch.Tensor, vector: bool = False) -> torch.Tensor:
        """``flat()[p.index]`` shaped to broadcast along ``p.cdim`` of ``like`` (or 1-D), cached per mask version."""
        ver = self.version()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == ver and hit[1].device == like.device and hit[1].dtype == like.dtype:
            return hit[1]
        flat = self.flat().to(like.device)
        m = flat[torch.as_tensor(p.index, device=like.device)].to(like.dtype)
        if not vector:
            shape = [1] * like.ndim
            shape[p.cdim] = -1
            m = m.view(shape)
        self._cache[key] = (ver, m)
        return m

    def _vector(self, p: MaskPoint, like: torch.Tensor) -> torch.Tensor:
        """The 1-D mask of a folded point, on ``like``'s device and dtype: a live view of a part when possible."""
        view = self._views.get(id(p))
        if view is None:
            return self._mask(p, ("v", id(p)), like, vector=True)
        m = self.parts()[view[0]]
        if view[1] is not None:
            m = m[view[1]]
        if m.device != like.device or m.dtype != like.dtype:
            m = m.to(device=like.device, dtype=like.dtype)
        return m

    def _multiply(self, p: MaskPoint, key: tuple, x: torch.Tensor) -> torch.Tensor:
        y = x * self._mask(p, key, x)
        if self.observer is not None:
            self.observer(p, x, y)
        return y

    def _plan_views(self) -> None:
        if self.parts is None:
            return
        sizes = [int(t.numel()) for t in self.parts()]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        for pts in self.points.values():
            for p in pts:
                n = len(p.index)
                if n == 0 or not np.array_equal(p.index, np.arange(p.index[0], p.index[0] + n)):
                    continue
                j = int(np.searchsorted(offsets, p.index[0], side="right")) - 1
                if 0 <= j < len(sizes) and p.index[-1] < offsets[j + 1]:
                    a = int(p.index[0] - offsets[j])
                    self._views[id(p)] = (j, None if a == 0 and n == sizes[j] else slice(a, a + n))

    @staticmethod
    def _foldable(mod: nn.Module, by_mode: dict[str, dict[int, MaskPoint]]) -> bool:
        if not isinstance(mod, FOLDABLE) or "forward" in mod.__dict__:
            return False
        h = handler_for(mod)  # a norm + activation module folds only if its activation keeps zeros zero
        if h is not None and not h.folds_output(mod):
            return False
        w, b = mod._parameters.get("weight"), mod._parameters.get("bias")
        if w is None or b is None or w.ndim != 1 or b.shape != w.shape:
            return False
        return all(p.call == 0 and p.calls == 1 and p.cdim == 1 and len(p.index) == w.numel()
                   for pts in by_mode.values() for p in pts.values())

    def _install(self) -> None:
        modules = dict(self.model.named_modules())
        table: dict[tuple[str, str], dict[str, dict[int, MaskPoint]]] = {}
        for mode, pts in self.points.items():
            for p in pts:
                table.setdefault((p.module, p.where), {}).setdefault(mode, {})[p.call] = p
        self._plan_views()
        calls = self._calls

        def lookup(name: str, by_mode: dict[str, dict[int, MaskPoint]]) -> MaskPoint | None:
            pts = by_mode.get(self._mode()) or by_mode.get("eval") or {}
            return pts.get(calls.get(name, 0))

        hooked = set()
        for (name, where), by_mode in table.items():
            if where == "output" and self.fold and self._foldable(modules[name], by_mode):
                self._fold(modules[name], name, by_mode, lookup)
            elif where == "output":
                def hook(mod, inp, out, name=name, by_mode=by_mode):
                    p = lookup(name, by_mode)
                    if p is None or not isinstance(out, torch.Tensor):
                        return None
                    return self._multiply(p, (name, "o", p.call, self._mode()), out)

                self.handles.append(modules[name].register_forward_hook(_mark(hook)))
                hooked.add(name)
            else:
                def pre_hook(mod, args, name=name, by_mode=by_mode):
                    p = lookup(name, by_mode)
                    if p is None or not args or not isinstance(args[0], torch.Tensor):
                        return None
                    return (self._multiply(p, (name, "i", p.call, self._mode()), args[0]),) + tuple(args[1:])

                self.handles.append(modules[name].register_forward_pre_hook(_mark(pre_hook)))
                hooked.add(name)
        if any(p.call > 0 for pts in self.points.values() for p in pts):
            # modules called at several places (never folded): count calls within one forward pass
            def reset(mod, args):
                calls.clear()

            def count(mod, inp, out, name):
                calls[name] = calls.get(name, 0) + 1

            self.handles.append(self.model.register_forward_pre_hook(_mark(reset)))
            for name in hooked:
                self.handles.append(modules[name].register_forward_hook(
                    _mark(lambda mod, inp, out, name=name: count(mod, inp, out, name))))

    def _fold(self, mod: nn.Module, name: str, by_mode: dict[str, dict[int, MaskPoint]],
              lookup: Callable[[str, dict], MaskPoint | None]) -> None:
        """Replace ``mod.forward`` (instance attribute) by its class's forward run with masked weight and bias."""
        hooks = self

        def forward(module, *args, **kwargs):
            run = type(module).forward
            p = lookup(name, by_mode)
            params = module._parameters
            w, b = params.get("weight"), params.get("bias")
            if p is None or w is None or b is None:
                return run(module, *args, **kwargs)
            if hooks.observer is not None:  # Taylor statistics: the observer needs the activation before the mask
                out = run(module, *args, **kwargs)
                return hooks._multiply(p, (name, "o", p.call, hooks._mode()), out)
            m = hooks._vector(p, w)
            params["weight"], params["bias"] = w * m, b * m
            try:
                return run(module, *args, **kwargs)
            finally:
                params["weight"], params["bias"] = w, b

        mod.forward = types.MethodType(_mark(forward), mod)
        self.folded[name] = mod

    def invalidate(self) -> None:
        self._cache.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for mod in self.folded.values():
            unfold(mod)
        self.folded.clear()
        self._cache.clear()


def unfold(module: nn.Module) -> None:
    """Remove a folded mask's replacement ``forward`` from ``module`` (if any)."""
    fn = module.__dict__.get("forward")
    if fn is not None and getattr(fn, "_prunekit", False):
        del module.__dict__["forward"]


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
    parts = list(flat[:-1].split([g.size for g in groups]))
    hooks = MaskHooks(model, mask_points(graph, groups), lambda: flat, parts=lambda: parts)
    try:
        yield model
    finally:
        hooks.remove()
