"""The channel dependency graph: groups of channels that must be pruned together.

>>> from prunekit.models import create_model
>>> g = DependencyGraph(create_model("mobilenet_v1", width=0.25, num_classes=10), (3, 64, 64))
>>> [grp.name for grp in g.select("pointwise")][:2]
['blocks.0.pw.conv', 'blocks.1.pw.conv']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PrunekitError
from .analysis import AnalysisState, Analyzer, Slot
from .trace import propagate_shapes, trace

LAYER_PRESETS = ("pointwise", "all")


@dataclass
class Group:
    """Channels that live and die together: the same component index removed from every member."""

    id: int
    name: str
    comps: np.ndarray  # component roots, in the channel order of the first producer
    producers: list[str]
    members: list[str]  # "module.kind" (or "param:<name>") descriptions
    locked: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.comps)

    @property
    def prunable(self) -> bool:
        return self.locked is None and self.size > 1


class DependencyGraph:
    """Trace ``model`` and compute its channel groups.

    Args:
        model: any ``nn.Module``. Submodules that torch.fx cannot trace become leaves: their channels are locked
            with the reason (the model's own ``forward`` must be traceable).
        input_shape: ``(C, H, W)`` of one example input (used for shapes and MAC counts).
        leaf_modules: module names or types not to trace into (their channels are left unpruned).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], leaf_modules: Iterable[str | type] = ()):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.leaf_modules = tuple(leaf_modules)
        self.state = AnalysisState()
        self.modes: list[str] = []
        self.shapes: dict[str, dict[str, Any]] = {}
        was = model.training
        param_owners = {n for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None}
        try:
            model.eval()
            used = self._analyze(model, "eval")
            if param_owners - used:  # e.g. Inception's auxiliary head: only called in train mode
                model.train()
                self._analyze(model, "train")
        finally:
            model.train(was)
        self._build_groups(model)

    def _analyze(self, model: nn.Module, mode: str) -> set[str]:
        gm = trace(model, self.leaf_modules, auto_leaf=True)
        p = next(model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        batch = 1 if mode == "eval" else 2
        shapes = propagate_shapes(gm, torch.zeros(batch, *self.input_shape, device=dev, dtype=dtype))
        Analyzer(gm, shapes, self.state, mode).run()
        self.modes.append(mode)
        self.shapes[mode] = shapes
        used = set()
        for node in gm.graph.nodes:
            if node.op == "call_module":
                used.add(node.target)
                used.update(f"{node.target}.{n}" for n, _ in gm.get_submodule(node.target).named_modules() if n)
            if node.op == "get_attr":
                used.add(node.target.rpartition(".")[0])
        return used

    # -- groups --------------------------------------------------------------------------------
    def _build_groups(self, model: nn.Module) -> None:
        st = self.state
        comp = self.comp_of = st.uf.roots()  # a component's root is its smallest element id
        module_order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        locked_roots: dict[int, str] = {}
        for e, why in st.locks.items():
            locked_roots.setdefault(int(comp[e]), why)
        # Owner keys ranked like (module order, name); then the set of producing owners of every component,
        # vectorised as the unique (root, owner rank) pairs.
        keys, inv = np.unique(np.array(st.owner, dtype=object), return_inverse=True)
        ranked = sorted(range(len(keys)), key=lambda i: (module_order.get(keys[i], 1 << 30), keys[i]))
        rank = np.empty(len(keys), dtype=np.int64)
        rank[ranked] = np.arange(len(keys))
        names = [keys[i] for i in ranked]
        is_real = np.array([not k.startswith(("input:", "opaque:")) for k in names], dtype=bool)
        n_keys = max(1, len(keys))
        pairs = np.unique(comp * n_keys + rank[inv])
        p_root, p_rank = pairs // n_keys, pairs % n_keys
        sel = is_real[p_rank]
        p_root, p_rank = p_root[sel], p_rank[sel]
        producers: dict[int, tuple[str, ...]] = {}
        if len(p_root):  # one padded row of owner ranks per root; few distinct rows (one per layer, typically)
            starts = np.r_[0, np.flatnonzero(np.diff(p_root)) + 1]
            lengths = np.diff(np.r_[starts, len(p_root)])
            seg = np.repeat(np.arange(len(starts)), lengths)
            rows = np.full((len(starts), int(lengths.max())), -1, dtype=np.int64)
            rows[seg, np.arange(len(p_root)) - starts[seg]] = p_rank
            uniq, inv = np.unique(rows, axis=0, return_inverse=True)
            tuples = [tuple(names[j] for j in row if j >= 0) for row in uniq.tolist()]
            producers = dict(zip(p_root[starts].tolist(), (tuples[i] for i in inv.reshape(-1).tolist()), strict=True))
        comps: dict[tuple, list[int]] = {}
        for r in np.unique(comp).tolist():  # ascending roots = channel order of the first producer
            key = (producers.get(r) or (st.owner[r],), r in locked_roots)
            comps.setdefault(key, []).append(r)
        groups: list[Group] = []
        for (prods, is_locked), roots in comps.items():  # prods: producing layers, else the source key
            reason = None
            if is_locked:
                reason = next(locked_roots[r] for r in roots if r in locked_roots)
            elif not prods:
                reason = "no producing layer"
            real = [p for p in prods if not p.startswith(("input:", "opaque:"))]
            label = real[0] if real else _source_label(prods[0])
            groups.append(Group(0, label, np.array(roots, dtype=np.int64), real, [], reason))
        groups.sort(key=lambda g: (module_order.get(g.producers[0], -1) if g.producers else -1, g.locked is not None,
                                   int(g.comps.min())))
        gid_of_root = np.full(len(comp), -1, dtype=np.int64)
        local_of_root = np.full(len(comp), -1, dtype=np.int64)
        for i, g in enumerate(groups):
            gid_of_root[g.comps] = i
            local_of_root[g.comps] = np.arange(g.size)
        members: list[set[str]] = [set() for _ in groups]
        for sl in st.slots:
            desc = f"param:{sl.module}" if sl.kind == "param" else f"{sl.module}.{sl.kind}"
            for gi in np.unique(gid_of_root[comp[sl.labels]]).tolist():
                members[gi].add(desc)
        seen: dict[str, int] = {}
        for i, g in enumerate(groups):
            g.id = i
            g.members = sorted(members[i])
            k = seen.get(g.name, 0)
            seen[g.name] = k + 1
            if k:
                g.name = f"{g.name}#{k}"
        self.groups = groups
        self.by_name = {g.name: g for g in groups}
        self._gid_of_root, self._local_of_root = gid_of_root, local_of_root
        self._modules = dict(model.named_modules())
        for g in groups:
            g.meta["pointwise"] = any(_is_pointwise(self._modules.get(p)) for p in g.producers)

    # -- selection -----------------------------------------------------------------------------
    def select(self, layers: str | Sequence[str] = "pointwise", exclude: str | None = None) -> list[Group]:
        """Prunable groups picked by ``pointwise`` (non-grouped 1x1 convs), ``all``, or regexes over producer names."""
        pats = [layers] if isinstance(layers, str) else list(layers)
        regexes = []
        for p in pats:
            if p in LAYER_PRESETS:
                continue
            try:
                regexes.append(re.compile(p))
            except re.error as e:
                raise PrunekitError(f"invalid layer regex '{p}': {e}") from None
        try:
            excl = re.compile(exclude) if exclude else None
        except re.error as e:
            raise PrunekitError(f"invalid exclude regex '{exclude}': {e}") from None
        out = []
        for g in self.groups:
            if not g.prunable:
                continue
            hit = ("all" in pats) or ("pointwise" in pats and g.meta["pointwise"]) or any(
                r.search(p) for r in regexes for p in g.producers)
            if hit and excl is not None and any(excl.search(p) for p in g.producers):
                hit = False
            if hit:
                out.append(g)
        if not out:
            raise PrunekitError(f"layer selection {pats!r} matches no prunable layer; see `prunekit plan` for the "
                                "groups and their producing layers")
        return out

    # -- channels ------------------------------------------------------------------------------
    def removed_roots(self, removed: Mapping[str, Iterable[int]]) -> np.ndarray:
        """Component roots for ``{group name: [component indices to remove]}``."""
        roots = []
        for name, idx in removed.items():
            g = self.by_name.get(name)
            if g is None:
                raise PrunekitError(f"unknown channel group '{name}'")
            idx = np.asarray(sorted(set(int(i) for i in idx)), dtype=np.int64)
            if len(idx) == 0:
                continue
            if g.locked:
                raise PrunekitError(f"group '{name}' cannot be pruned: {g.locked}")
            if idx.min() < 0 or idx.max() >= g.size:
                raise PrunekitError(f"group '{name}' has {g.size} channels; index {int(idx.max())} is out of range")
            if len(idx) >= g.size:
                raise PrunekitError(f"refusing to remove every channel of group '{name}' ({g.size} channels)")
            roots.append(g.comps[idx])
        return np.concatenate(roots) if roots else np.zeros(0, dtype=np.int64)

    def keep_elements(self, removed: Mapping[str, Iterable[int]]) -> np.ndarray:
        """Boolean keep-flag for every element id."""
        return ~np.isin(self.comp_of, self.removed_roots(removed))

    def slot_components(self, slot: Slot) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """For each group touching ``slot``: (group id, positions in the slot, component index in the group)."""
        roots = self.comp_of[slot.labels]
        gid, loc = self._gid_of_root[roots], self._local_of_root[roots]
        return [(int(g), np.flatnonzero(gid == g), loc[gid == g]) for g in np.unique(gid)]

    def slots_of(self, module: str) -> list[Slot]:
        if not hasattr(self, "_slots_by_module"):
            self._slots_by_module: dict[str, list[Slot]] = {}
            for s in self.state.slots:
                self._slots_by_module.setdefault(s.module, []).append(s)
        return self._slots_by_module.get(module, [])

    # -- reporting -----------------------------------------------------------------------------
    def plan(self, layers: str | Sequence[str] = "pointwise", exclude: str | None = None) -> dict[str, Any]:
        """Every group, whether the selection prunes it, and why the others are left alone."""
        try:
            chosen = {g.id for g in self.select(layers, exclude)}
        except PrunekitError:
            chosen = set()
        rows = []
        for g in self.groups:
            if g.id in chosen:
                status, why = "prune", ""
            elif g.locked:
                status, why = "locked", g.locked
            elif g.size <= 1:
                status, why = "locked", "a single channel"
            else:
                status, why = "skip", "not selected by --layers"
            rows.append({"group": g.name, "channels": g.size, "status": status, "reason": why,
                         "producers": g.producers, "members": g.members})
        return {"input_shape": list(self.input_shape), "modes": self.modes, "layers": layers,
                "selected": len(chosen), "groups": rows}


def _source_label(key: str) -> str:
    """'input:x' -> '(input x)', 'opaque:eval:view' -> '(output of view)'."""
    if key.startswith("input:"):
        return f"(input {key[6:]})"
    if key.startswith("opaque:"):
        return f"(output of {key.split(':', 2)[2]})"
    return key


def _is_pointwise(m: nn.Module | None) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == 1 and tuple(m.kernel_size) == (1, 1))
