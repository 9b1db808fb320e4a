"""Channel-label analysis over a torch.fx graph.

Every channel of every tensor carries an *element id*. Producers (conv/linear outputs) mint new ids;
per-channel ops pass ids through; ``add``/``mul`` union the ids of their operands channel by channel;
``cat`` concatenates id lists; a flatten before a Linear repeats each id ``H*W`` times; grouped and
depthwise convolutions union input and output channels group by group. Connected components of the
union-find are the atomic pruning units: removing one removes the same channel everywhere it appears.

Anything the analysis does not understand is *opaque*: its input channels are locked (never pruned)
and its outputs get fresh, locked ids, so the op sees exactly the tensors it saw before surgery. Locks
carry a reason naming the node, which ``prunekit plan`` shows to the user.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from .handlers import ConvHandler, Flow, LinearHandler, handler_for

# --- union-find ----------------------------------------------------------------------------------


class UnionFind:
    """Union-find over integer element ids with path halving."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def make(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            if x != y:
                self.union(x, y)

    def roots(self) -> np.ndarray:
        """The root of every element (vectorised pointer jumping)."""
        p = np.asarray(self.parent, dtype=np.int64)
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q


# --- values --------------------------------------------------------------------------------------


@dataclass
class TV:
    """A tensor flowing through the graph: channel labels along ``cdim`` (None: no channel structure)."""

    labels: np.ndarray | None
    cdim: int
    shape: tuple[int, ...]


@dataclass
class PV:
    """A parameter or buffer read with ``get_attr`` (e.g. ConvNeXt's layer_scale), or a view of one that only adds
    size-1 dimensions (``gamma.view(1, -1, 1, 1)``): ``dim`` maps each dimension of ``shape`` to the parameter's
    own (None: an added one)."""

    target: str
    shape: tuple[int, ...]
    dim: tuple[int | None, ...] | None = None

    def own_dim(self, pos: int) -> int | None:
        return pos if self.dim is None else self.dim[pos]


@dataclass
class Slot:
    """A tensor dimension that must be sliced when channels are removed.

    kind: ``out`` (producer weight rows), ``in`` (consumer weight columns), ``in_grouped`` (input of a
    grouped conv: whole groups go), ``channel`` (per-channel module such as BatchNorm), ``param`` (a
    plain parameter/buffer broadcast against channels).
    """

    module: str
    kind: str
    dim: int
    labels: np.ndarray
    node: str
    mode: str


@dataclass
class NodeRec:
    """What masking needs to know about one node: how it treats zeros, and its channel labels."""

    name: str
    op: str
    module: str | None
    kind: str  # producer | nzp | zp | mul | add | div | opaque | input | output
    inputs: list[str]
    labels: np.ndarray | None
    cdim: int
    ndim: int
    users: list[str] = field(default_factory=list)


@dataclass
class AnalysisState:
    """Shared across the traces of one model (eval and, when different, train mode)."""

    uf: UnionFind = field(default_factory=UnionFind)
    owner: list[str] = field(default_factory=list)  # element id -> producing key
    produced: dict[str, np.ndarray] = field(default_factory=dict)  # key -> element ids
    slots: list[Slot] = field(default_factory=list)
    locks: dict[int, str] = field(default_factory=dict)  # element -> reason
    records: dict[str, list[NodeRec]] = field(default_factory=dict)  # mode -> node records
    module_calls: dict[str, dict[str, int]] = field(default_factory=dict)  # mode -> module -> call count
    first_slot: dict[tuple[str, str, int], Slot] = field(default_factory=dict)  # (module, kind, dim) -> first

    def new(self, key: str, n: int) -> np.ndarray:
        if key in self.produced:
            if len(self.produced[key]) != n:
                raise ValueError(f"{key}: produced {n} channels, previously {len(self.produced[key])}")
            return self.produced[key]
        ids = self.uf.make(n)
        self.owner.extend([key] * n)
        self.produced[key] = ids
        return ids

    def add_slot(self, slot: Slot) -> None:
        """Record ``slot``. A layer called at several places (or traced in both modes) has one weight, so the
        channels it sees at every call are the same channels: they are united, and prune together."""
        first = self.first_slot.setdefault((slot.module, slot.kind, slot.dim), slot)
        if first is not slot and len(first.labels) == len(slot.labels):
            self.uf.union_arrays(first.labels, slot.labels)
        self.slots.append(slot)

    def lock(self, labels: np.ndarray | None, reason: str) -> None:
        if labels is None:
            return
        for e in labels.tolist():
            self.locks.setdefault(e, reason)


# --- op tables -----------------------------------------------------------------------------------

_ZP_UNARY = {  # per-channel and f(0) == 0
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "gelu", "silu", "silu_",
    "hardswish", "hardswish_", "mish", "tanh", "tanh_", "elu", "elu_", "celu", "selu", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous", "clone", "detach", "float",
    "half", "bfloat16", "double", "to", "type", "type_as", "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool2d",
    "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "stochastic_depth", "neg", "abs",
    "square", "relu6_", "identity", "max_pool2d_with_indices",
}
_NZP_UNARY = {"sigmoid", "sigmoid_", "hardsigmoid", "softplus", "exp", "cos", "log_sigmoid", "sqrt", "log1p",
              "softsign", "erf", "sign"}
# f(0) is +-inf: a pruned (zero) channel would turn into inf, and masking it (inf * 0) into NaN
_POLE_UNARY = {"reciprocal", "reciprocal_", "rsqrt", "rsqrt_", "log", "log_", "log2", "log10"}
_ADD = {"add", "add_", "iadd", "sub", "sub_", "isub", "rsub"}
_MUL = {"mul", "mul_", "imul"}
_DIV = {"truediv", "div", "div_", "itruediv"}
_RESHAPE = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as"}
_PERMUTE = {"permute", "transpose", "swapaxes", "movedim"}
_REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "nansum", "nanmean"}
_CAT = {"cat", "concat", "concatenate"}
_SPLIT = {"chunk", "split", "tensor_split", "unbind"}
_SHAPE_ATTRS = {"size", "dim", "numel", "shape", "dtype", "device", "ndim", "is_cuda"}
# functional norms and their per-channel tensor arguments (positions 1..4)
_NORM_PARAMS = {"batch_norm": ("running_mean", "running_var", "weight", "bias"),
                "instance_norm": ("running_mean", "running_var", "weight", "bias")}


def op_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return str(t)
    if t is operator.getitem:
        return "getitem"
    return getattr(t, "__name__", str(t)).lstrip("_") if node.op == "call_function" else str(t)


def _iter_values(v: Any):
    if isinstance(v, (TV, PV)):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _iter_values(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _iter_values(x)


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class Analyzer:
    """Walks one traced graph in topological order and records labels, slots, locks and node records."""

    def __init__(self, gm: fx.GraphModule, shapes: dict[str, Any], state: AnalysisState, mode: str):
        self.gm, self.shapes, self.s, self.mode = gm, shapes, state, mode
        self.modules = dict(gm.named_modules())
        self.values: dict[str, Any] = {}
        self.recs: list[NodeRec] = []
        self.calls: dict[str, int] = {}

    # -- helpers --
    def arg(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.values.get(a.name)
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a) if not hasattr(a, "_fields") else tuple(self.arg(x) for x in a)
        if isinstance(a, dict):
            return {k: self.arg(v) for k, v in a.items()}
        return a

    def tv_inputs(self, node: fx.Node) -> list[str]:
        names = []
        for a in node.all_input_nodes:
            if any(isinstance(v, TV) and v.labels is not None for v in _iter_values(self.values.get(a.name))):
                names.append(a.name)
        return names

    def out_tv(self, node: fx.Node, labels: np.ndarray | None, cdim: int) -> TV:
        shape = self.shapes.get(node.name)
        shape = shape if isinstance(shape, tuple) and all(isinstance(x, int) for x in shape) else ()
        return TV(labels, cdim, shape)

    def rec(self, node: fx.Node, kind: str, value: Any, module: str | None = None) -> None:
        if node.op == "call_module":
            module = node.target
        tv = value if isinstance(value, TV) else None
        self.recs.append(NodeRec(node.name, node.op, module, kind, self.tv_inputs(node),
                                 tv.labels if tv is not None else None, tv.cdim if tv else 1,
                                 len(tv.shape) if tv else 0))

    def opaque(self, node: fx.Node, why: str) -> Any:
        """Lock every input channel; outputs get fresh locked ids."""
        reason = f"{why} at node '{node.name}' ({op_name(node)})"
        for a in node.all_input_nodes:
            for v in _iter_values(self.values.get(a.name)):
                if isinstance(v, TV):
                    self.s.lock(v.labels, reason)

        # An op that keeps its input's shape keeps its channel dimension (e.g. LayerNorm over channels-last).
        same = [v.cdim for a in node.all_input_nodes for v in _iter_values(self.values.get(a.name))
                if isinstance(v, TV) and v.labels is not None and v.shape == self.shapes.get(node.name)]

        def fresh(shape: Any, k: str) -> Any:
            if isinstance(shape, tuple) and all(isinstance(x, int) for x in shape):
                if len(shape) >= 2:
                    cdim = same[0] if same else 1
                    ids = self.s.new(f"opaque:{self.mode}:{k}", shape[cdim])
                    self.s.lock(ids, reason)
                    return TV(ids, cdim, shape)
                return TV(None, 1, shape)
            if isinstance(shape, (list, tuple)):
                return tuple(fresh(x, f"{k}.{i}") for i, x in enumerate(shape))
            return None

        out = fresh(self.shapes.get(node.name), node.name)
        self.rec(node, "opaque", out, node.target if node.op == "call_module" else None)
        return out

    # -- main loop --
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.values[node.name] = self.visit(node)
        by_name = {r.name: r for r in self.recs}
        for r in self.recs:
            for i in r.inputs:
                if i in by_name:
                    by_name[i].users.append(r.name)
        self.s.records[self.mode] = self.recs
        self.s.module_calls[self.mode] = self.calls

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            shape = self.shapes.get(node.name)
            if isinstance(shape, tuple) and len(shape) >= 2:
                ids = self.s.new(f"input:{node.name}", shape[1])
                self.s.lock(ids, "network input")
                v = TV(ids, 1, shape)
                self.rec(node, "input", v)
                return v
            return None
        if node.op == "get_attr":
            t = _fetch_attr(self.gm, node.target)
            return PV(node.target, tuple(t.shape)) if isinstance(t, torch.Tensor) else None
        if node.op == "output":
            for v in _iter_values(self.arg(node.args[0])):
                if isinstance(v, TV):
                    self.s.lock(v.labels, "model output")
            self.rec(node, "output", None)
            return None
        if node.op == "call_module":
            self.calls[node.target] = self.calls.get(node.target, 0) + 1
            return self.visit_module(node, self.modules[node.target])
        return self.visit_function(node, op_name(node))

    # -- modules: the handler table says what each module type does with channels --
    def visit_module(self, node: fx.Node, m: nn.Module) -> Any:
        h = handler_for(m)
        x = self.arg(node.args[0]) if node.args else None
        if not isinstance(x, TV) or x.labels is None:
            if isinstance(h, (ConvHandler, LinearHandler)) or any(
                    isinstance(v, TV) for v in _iter_values(self.arg(node.args))):
                return self.opaque(node, "input without channel structure")
            return self.opaque(node, "module without tensor input")
        if h is None:
            why = self.gm.meta.get("untraceable", {}).get(node.target)
            if why is not None:
                return self.opaque(node, f"module {type(m).__name__} that torch.fx cannot trace ({why})")
            return self.opaque(node, f"unsupported module type {type(m).__name__}")
        return h.flow(Flow(self, node, node.target, m, x))

    def slot(self, module: str, kind: str, dim: int, labels: np.ndarray, node: fx.Node) -> None:
        self.s.add_slot(Slot(module, kind, dim, labels, node.name, self.mode))

    def layer_norm(self, node: fx.Node, x: TV, n_norm: int, module: str | None) -> Any:
        if x.cdim >= len(x.shape) - n_norm:
            return self.opaque(node, "LayerNorm normalises across channels")
        v = self.out_tv(node, x.labels, x.cdim)
        self.rec(node, "nzp", v, module)
        return v

    # -- functions and methods --
    def visit_function(self, node: fx.Node, name: str) -> Any:
        args = [self.arg(a) for a in node.args]
        kwargs = {k: self.arg(v) for k, v in node.kwargs.items()}
        x = args[0] if args else kwargs.get("input")
        if name == "getattr":
            return None  # x.shape, x.device, ...
        if name in _SHAPE_ATTRS:
            return None
        if name == "getitem":
            if isinstance(x, PV):
                return self.param_view(node, x, args[1])
            return self.getitem(node, x, args[1])
        if name in _CAT:
            return self.cat(node, args[0] if args else kwargs["tensors"], args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if name == "stack":
            return self.stack(node, args[0] if args else kwargs["tensors"], args[1] if len(args) > 1 else kwargs.get(
                "dim", 0))
        if name in _ADD or name in _MUL or name in _DIV:
            return self.binary(node, name, args, kwargs)
        if isinstance(x, PV) and name in ("view", "reshape", "unsqueeze"):
            return self.param_view(node, x, None)
        if not isinstance(x, TV) or x.labels is None:
            if any(isinstance(v, (TV, PV)) for v in _iter_values(args)) or any(
                    isinstance(v, (TV, PV)) for v in _iter_values(kwargs)):
                if all(not (isinstance(v, TV) and v.labels is not None) for v in _iter_values((args, kwargs))):
                    return self.passthrough_nochannel(node)
                return self.opaque(node, "unsupported operation")
            return None  # arithmetic on sizes, etc.
        if name in _POLE_UNARY:
            return self.opaque(node, "not finite at zero (a pruned channel would become inf)")
        if name in _ZP_UNARY or name in _NZP_UNARY:
            v = self.out_tv(node, x.labels, x.cdim)
            self.rec(node, "zp" if name in _ZP_UNARY else "nzp", v)
            return v
        if name == "clamp" or name == "clamp_" or name == "clip":
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
            zp = (lo is None or (isinstance(lo, (int, float)) and lo <= 0)) and (
                hi is None or (isinstance(hi, (int, float)) and hi >= 0))
            v = self.out_tv(node, x.labels, x.cdim)
            self.rec(node, "zp" if zp else "nzp", v)
            return v
        if name == "pad":
            pad = args[1] if len(args) > 1 else kwargs.get("pad")
            value = args[3] if len(args) > 3 else kwargs.get("value", 0)
            if not isinstance(pad, (list, tuple)) or len(x.shape) - x.cdim <= len(pad) // 2:
                return self.opaque(node, "padding of the channel dimension")
            v = self.out_tv(node, x.labels, x.cdim)
            self.rec(node, "zp" if not value else "nzp", v)
            return v
        if name in _RESHAPE:
            return self.reshape(node, x)
        if name in _PERMUTE:
            return self.permute(node, name, x, args[1:], kwargs)
        if name in _REDUCE or name in ("max", "min") and (len(args) > 1 or "dim" in kwargs):
            return self.reduce(node, name, x, args, kwargs)
        if name in ("softmax", "log_softmax"):
            d = args[1] if len(args) > 1 else kwargs.get("dim")
            if d is None or _norm_dim(d, len(x.shape)) == x.cdim:
                return self.opaque(node, "softmax over channels")
            v = self.out_tv(node, x.labels, x.cdim)
            self.rec(node, "nzp", v)
            return v
        if name == "layer_norm":
            ns = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
            n = len(ns) if isinstance(ns, (list, tuple)) else 1
            return self.layer_norm(node, x, n, None)
        if name in _NORM_PARAMS:
            return self.functional_norm(node, name, x, args, kwargs)
        if name == "group_norm":
            return self.opaque(node, "group_norm with a constant number of groups (an nn.GroupNorm module can be "
                               "resized)")
        if name in _SPLIT:
            return self.split(node, name, x, args, kwargs)
        return self.opaque(node, "unsupported operation")

    def functional_norm(self, node: fx.Node, name: str, x: TV, args: list, kwargs: dict) -> Any:
        """``F.batch_norm`` / ``F.instance_norm`` called with a module's own tensors (timm's BatchNormAct2d, a
        hand-written norm): per-channel, each statistic/affine parameter is sliced like the channels."""
        if x.cdim != 1:
            return self.opaque(node, f"{name} over a non-channel dimension")
        c = len(x.labels)
        for i, key in enumerate(_NORM_PARAMS[name], start=1):
            t = args[i] if len(args) > i else kwargs.get(key)
            if t is None:
                continue
            if not isinstance(t, PV) or t.shape != (c,):
                return self.opaque(node, f"{name} with a computed {key} (only a module's own tensors are sliced)")
        for i, key in enumerate(_NORM_PARAMS[name], start=1):
            t = args[i] if len(args) > i else kwargs.get(key)
            if isinstance(t, PV):
                self.s.add_slot(Slot(t.target, "param", 0, x.labels, node.name, self.mode))
        v = self.out_tv(node, x.labels, 1)
        self.rec(node, "nzp", v)
        return v

    def param_view(self, node: fx.Node, x: PV, index: Any) -> Any:
        """A parameter viewed with size-1 dimensions added (``view(1, -1, 1, 1)``, ``unsqueeze``, ``p[:, None]``):
        still the parameter, for slicing. A literal size for one of its own dimensions would not fit after pruning."""
        out = self.shapes.get(node.name)
        if not isinstance(out, tuple):
            return self.passthrough_nochannel(node)
        own = [d for d in range(len(x.shape))]
        kept = [n for n in out if n != 1]
        if kept != [n for n in x.shape if n != 1] or (index is not None and not all(
                e is None or e == slice(None) or e is Ellipsis for e in (index if isinstance(index, tuple) else (index,)))):
            return self.passthrough_nochannel(node)
        sizes = _reshape_sizes(node, len(out))
        dims: list[int | None] = []
        it = iter([x.own_dim(d) for d in own if x.shape[d] != 1])
        for i, n in enumerate(out):
            if n == 1:
                dims.append(None)
                continue
            if sizes is not None and isinstance(sizes[i], int) and sizes[i] != -1:
                return self.passthrough_nochannel(node)  # view(1, 64, 1, 1): a constant size
            dims.append(next(it))
        return PV(x.target, out, tuple(dims))

    def passthrough_nochannel(self, node: fx.Node) -> Any:
        shape = self.shapes.get(node.name)
        if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
            return TV(None, 1, shape)
        return None

    def getitem(self, node: fx.Node, x: Any, idx: Any) -> Any:
        if isinstance(x, (tuple, list)):
            v = x[idx] if isinstance(idx, int) and -len(x) <= idx < len(x) else None
            if isinstance(v, TV):
                self.rec(node, "zp", v)
            return v
        if not isinstance(x, TV):
            return None
        if x.labels is None:
            return self.passthrough_nochannel(node)
        entries = list(idx) if isinstance(idx, tuple) else [idx]
        if any(not (e is None or e is Ellipsis or isinstance(e, (int, slice))) for e in entries):
            return self.opaque(node, "advanced indexing")
        n_real = sum(1 for e in entries if e is not None and e is not Ellipsis)
        if Ellipsis in entries:
            i = entries.index(Ellipsis)
            entries = entries[:i] + [slice(None)] * (len(x.shape) - n_real) + entries[i + 1:]
        dim, out_dim = 0, 0
        cdim_out = None
        labels = x.labels
        for e in entries:
            if e is None:
                out_dim += 1
                continue
            if dim == x.cdim:
                if not isinstance(e, slice):
                    return self.opaque(node, "indexing of the channel dimension")
                if e != slice(None):
                    labels = self.channel_range(node, x.labels, e)
                    if labels is None:
                        return self.opaque(node, "strided or empty slice of the channel dimension")
                cdim_out = out_dim
            if not isinstance(e, int):
                out_dim += 1
            dim += 1
        if cdim_out is None:
            cdim_out = out_dim + (x.cdim - dim)
        v = self.out_tv(node, labels, cdim_out)
        self.rec(node, "zp", v)
        return v

    def channel_range(self, node: fx.Node, labels: np.ndarray, sl: slice) -> np.ndarray | None:
        """``x[:, a:b]`` with constant bounds (DPN's dual path, ReXNet's partial shortcut, GhostNet's crop): after
        surgery the same constants must select the same channels, so no channel before ``a`` may go, nor any
        before ``b`` when ``b`` is not the end. The slice of everything from ``a`` on stays prunable."""
        if not all(isinstance(v, int) or v is None for v in (sl.start, sl.stop, sl.step)):
            return None
        c = len(labels)
        a, b, step = sl.indices(c)
        if step != 1 or b <= a:
            return None
        fixed = b if b < c else a
        if fixed:
            self.s.lock(labels[:fixed], f"the slice [{a}:{b}] of {c} channels has constant bounds: channels before "
                        f"{fixed} keep their positions at node '{node.name}' (getitem)")
        return labels[a:b]

    def cat(self, node: fx.Node, tensors: Any, dim: int) -> Any:
        vals = list(tensors) if isinstance(tensors, (list, tuple)) else []
        tvs = [v for v in vals if isinstance(v, TV)]
        if not tvs or len(tvs) != len(vals) or any(v.labels is None for v in tvs):
            return self.opaque(node, "concatenation of tensors without channel structure")
        cdims = {v.cdim for v in tvs}
        if len(cdims) != 1:
            return self.opaque(node, "concatenation of tensors with different channel dimensions")
        cdim = cdims.pop()
        if _norm_dim(dim, len(tvs[0].shape)) == cdim:
            v = self.out_tv(node, np.concatenate([t.labels for t in tvs]), cdim)
        else:
            for t in tvs[1:]:
                if len(t.labels) != len(tvs[0].labels):
                    return self.opaque(node, "concatenation with mismatched channels")
                self.s.uf.union_arrays(tvs[0].labels, t.labels)
            v = self.out_tv(node, tvs[0].labels, cdim)
        self.rec(node, "add", v)  # zero iff every part is zero at that channel
        return v

    def stack(self, node: fx.Node, tensors: Any, dim: Any) -> Any:
        """``torch.stack`` (SK's paths): the parts share channels position by position."""
        vals = list(tensors) if isinstance(tensors, (list, tuple)) else []
        if not vals or not all(isinstance(v, TV) and v.labels is not None for v in vals) or not isinstance(dim, int):
            return self.opaque(node, "stack of tensors without channel structure")
        if len({v.cdim for v in vals}) != 1 or len({len(v.labels) for v in vals}) != 1:
            return self.opaque(node, "stack of tensors with different channels")
        for v in vals[1:]:
            self.s.uf.union_arrays(vals[0].labels, v.labels)
        cdim = vals[0].cdim
        out = self.out_tv(node, vals[0].labels, cdim + 1 if _norm_dim(dim, len(vals[0].shape) + 1) <= cdim else cdim)
        self.rec(node, "add", out)  # zero where every part is zero
        return out

    def binary(self, node: fx.Node, name: str, args: list, kwargs: dict) -> Any:
        operands = list(args[:2]) + [kwargs[k] for k in ("other",) if k in kwargs]
        if name in _DIV and len(operands) > 1 and isinstance(operands[1], TV) and operands[1].labels is not None:
            return self.opaque(node, "division by a tensor with channels (a pruned channel would divide by zero)")
        out_shape = self.shapes.get(node.name)
        if not isinstance(out_shape, tuple) or not all(isinstance(s, int) for s in out_shape):
            if any(isinstance(o, TV) and o.labels is not None for o in operands):
                return self.opaque(node, "elementwise op with unknown output shape")
            return None
        nd = len(out_shape)
        tvs = [o for o in operands if isinstance(o, TV) and o.labels is not None]
        if not tvs:
            return self.passthrough_nochannel(node) if any(isinstance(o, (TV, PV)) for o in operands) else None
        cdims = {nd - (len(t.shape) - t.cdim) for t in tvs}
        if len(cdims) != 1:
            return self.opaque(node, "elementwise op between tensors with different channel dimensions")
        cdim = cdims.pop()
        if cdim < 1:
            return self.opaque(node, "elementwise op broadcasting channels into the batch dimension")
        c = out_shape[cdim]
        full = [t for t in tvs if len(t.labels) == c]
        if not full:
            return self.opaque(node, "elementwise op with broadcast channels")
        for t in tvs:
            if len(t.labels) not in (1, c):
                return self.opaque(node, "elementwise op with mismatched channels")
        for t in full[1:]:
            self.s.uf.union_arrays(full[0].labels, t.labels)
        labels = full[0].labels
        plain = True  # all other operands are scalars/broadcast
        for o in operands:
            if isinstance(o, PV):
                pos = len(o.shape) - (nd - cdim)
                if 0 <= pos < len(o.shape) and o.shape[pos] == c and c > 1:
                    if o.own_dim(pos) is None:
                        return self.opaque(node, "parameter broadcast against channels")
                    self.s.add_slot(Slot(o.target, "param", o.own_dim(pos), labels, node.name, self.mode))
                elif 0 <= pos < len(o.shape) and o.shape[pos] not in (1, c):
                    return self.opaque(node, "parameter broadcast against channels")
                plain = False
            elif isinstance(o, TV) and o.labels is None:
                pos = len(o.shape) - (nd - cdim)
                if 0 <= pos < len(o.shape) and o.shape[pos] != 1:
                    return self.opaque(node, "elementwise op with a computed tensor that spans channels")
                plain = False
            elif isinstance(o, (int, float, bool)) or o is None:
                continue
            elif not isinstance(o, TV):
                return self.opaque(node, "elementwise op with an unsupported operand")
        if name in _MUL:
            kind = "mul"
        elif name in _DIV:
            kind = "div" if isinstance(operands[0], TV) and operands[0].labels is not None else "nzp"
        else:
            scalars = [o for o in operands if not isinstance(o, TV)]
            kind = "add" if plain and all(o in (0, None) for o in scalars) else "nzp"
            if len(full) < len(tvs) or any(isinstance(o, TV) and o.labels is None for o in operands):
                kind = "nzp"
        v = TV(labels, cdim, out_shape)
        self.rec(node, kind, v)
        return v

    def reshape(self, node: fx.Node, x: TV) -> Any:
        out_shape = self.shapes.get(node.name)
        if not isinstance(out_shape, tuple) or not x.shape:
            return self.opaque(node, "reshape with unknown shape")
        if out_shape == x.shape:
            v = self.out_tv(node, x.labels, x.cdim)
            self.rec(node, "zp", v)
            return v
        numel = int(np.prod(x.shape))
        if numel > 50_000_000:
            return self.opaque(node, "reshape of a very large tensor")
        shape = [1] * len(x.shape)
        shape[x.cdim] = x.shape[x.cdim]
        chan = np.broadcast_to(np.arange(x.shape[x.cdim]).reshape(shape), x.shape).reshape(out_shape)
        varying = [d for d in range(len(out_shape)) if out_shape[d] > 1 and
                   not (np.take(chan, [0], axis=d) == chan).all()]
        sizes = _reshape_sizes(node, len(out_shape))
        if len(varying) > 1 and 0 not in varying:
            return self.reshape_split(node, x, chan, varying, sizes)
        if len(varying) != 1 or varying[0] == 0:
            return self.opaque(node, "reshape that mixes channels with other dimensions")
        d = varying[0]
        # A literal size in the channel-carrying output dimension would be wrong after pruning.
        if sizes is not None and isinstance(sizes[d], int) and sizes[d] != -1:
            return self.opaque(node, f"reshape with a hard-coded size {sizes[d]} in the channel dimension")
        idx = [0] * len(out_shape)
        idx[d] = slice(None)
        labels = x.labels[chan[tuple(idx)]]
        v = self.out_tv(node, labels, d)
        self.rec(node, "zp", v)
        return v

    def reshape_split(self, node: fx.Node, x: TV, chan: np.ndarray, dims: list[int], sizes: list | None) -> Any:
        """The channel dimension split into several (ResNeSt's radix, SK's paths, a channel shuffle's groups):
        ``view(B, k, C // k, H, W)``. The dimensions given as constants keep their sizes after surgery, so their
        positions are coupled: removing a channel of the one computed size (or -1) removes it from each of the
        ``k`` parts, and the view still fits."""
        if sizes is None:
            return self.opaque(node, "reshape that splits channels into several dimensions of unknown sizes")
        free = [d for d in dims if not (isinstance(sizes[d], int) and sizes[d] != -1)]
        if len(free) != 1:
            return self.opaque(node, "reshape that splits channels into several dimensions (none or more than one of "
                               "them computed)")
        d = free[0]
        idx = tuple(slice(None) if k in dims else 0 for k in range(chan.ndim))
        sub = np.moveaxis(chan[idx], dims.index(d), 0).reshape(chan.shape[d], -1)
        for row in sub:
            self.s.uf.union_arrays(x.labels[row[:1]].repeat(len(row) - 1), x.labels[row[1:]])
        v = self.out_tv(node, x.labels[sub[:, 0]], d)
        self.rec(node, "zp", v)
        return v

    def permute(self, node: fx.Node, name: str, x: TV, rest: list, kwargs: dict) -> Any:
        nd = len(x.shape)
        try:
            if name == "permute":
                dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
                dims = dims or kwargs.get("dims")
                perm = [_norm_dim(int(d), nd) for d in dims]
                cdim = perm.index(x.cdim)
            elif name == "movedim":
                src, dst = _norm_dim(int(rest[0]), nd), _norm_dim(int(rest[1]), nd)
                order = [d for d in range(nd) if d != src]
                order.insert(dst, src)
                cdim = order.index(x.cdim)
            else:
                a = _norm_dim(int(rest[0] if rest else kwargs["dim0"]), nd)
                b = _norm_dim(int(rest[1] if len(rest) > 1 else kwargs["dim1"]), nd)
                cdim = b if x.cdim == a else a if x.cdim == b else x.cdim
        except (TypeError, ValueError, KeyError, IndexError):
            return self.opaque(node, "permutation with dynamic dimensions")
        if cdim == 0:
            return self.opaque(node, "permutation moving channels to the batch dimension")
        v = self.out_tv(node, x.labels, cdim)
        self.rec(node, "zp", v)
        return v

    def reduce(self, node: fx.Node, name: str, x: TV, args: list, kwargs: dict) -> Any:
        nd = len(x.shape)
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dims is None:
            return self.opaque(node, "reduction over all dimensions")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims):
            return self.opaque(node, "reduction over dynamic dimensions")
        dims = [_norm_dim(d, nd) for d in dims]
        if x.cdim in dims or 0 in dims:
            return self.opaque(node, "reduction over channels")
        cdim = x.cdim if keep else x.cdim - sum(1 for d in dims if d < x.cdim)
        v = self.out_tv(node, x.labels, cdim)
        if name in ("max", "min"):  # returns (values, indices)
            self.rec(node, "zp", v)
            shape = self.shapes.get(node.name)
            if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
                return (TV(x.labels, cdim, shape[0]), TV(x.labels, cdim, shape[1]))
            return v
        self.rec(node, "zp", v)
        return v

    def split(self, node: fx.Node, name: str, x: TV, args: list, kwargs: dict) -> Any:
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) if name != "unbind" else kwargs.get(
            "dim", args[1] if len(args) > 1 else 0)
        if not isinstance(dim, int):
            return self.opaque(node, "split along a dynamic dimension")
        shapes = self.shapes.get(node.name)
        if not isinstance(shapes, (tuple, list)) or not all(isinstance(t, tuple) for t in shapes):
            return self.opaque(node, f"{name} with unknown output")
        if _norm_dim(dim, len(x.shape)) == x.cdim:
            return self.split_channels(node, name, x, args, kwargs, shapes)
        if name == "unbind":
            return self.opaque(node, "unbind")
        outs = tuple(TV(x.labels, x.cdim, s) for s in shapes)
        self.rec(node, "zp", None)
        return outs

    def split_channels(self, node: fx.Node, name: str, x: TV, args: list, kwargs: dict, shapes: Any) -> Any:
        """Split along channels. ``chunk(k)`` (sizes computed from the channel count at run time): the k parts are
        coupled position by position, so each keeps the same count. ``split(n)`` (a constant size): every part
        but the last keeps its size, so those channels are locked; the last part is the rest, prunable. A list of
        constant sizes fixes every part: all locked."""
        sizes = [s[x.cdim] for s in shapes]
        c = len(x.labels)
        arg = args[1] if len(args) > 1 else kwargs.get("chunks", kwargs.get("split_size_or_sections",
                                                                            kwargs.get("split_size")))
        ends = np.cumsum([0, *sizes])
        parts = [x.labels[ends[i]:ends[i + 1]] for i in range(len(sizes))]
        if name == "unbind" or not parts:
            return self.opaque(node, f"{name} along the channel dimension")
        if name == "chunk" or (name == "tensor_split" and isinstance(arg, int)):
            if len(set(sizes)) != 1:
                return self.opaque(node, f"{name} of {c} channels into unequal parts")
            for part in parts[1:]:
                self.s.uf.union_arrays(parts[0], part)
        elif name in ("split", "tensor_split") and (isinstance(arg, int) or (
                name == "tensor_split" and isinstance(arg, (list, tuple)))):
            if len(parts) > 1:
                self.s.lock(x.labels[:ends[-2]], f"{name} of the channel dimension at constant positions: the "
                            f"parts before the last keep their sizes at node '{node.name}' ({name})")
        else:
            return self.opaque(node, f"{name} of the channel dimension into constant sizes")
        outs = tuple(TV(p, x.cdim, s) for p, s in zip(parts, shapes, strict=True))
        self.rec(node, "zp", None)
        return outs


def _reshape_sizes(node: fx.Node, ndim: int) -> list | None:
    """The sizes passed to ``view`` / ``reshape`` (ints, or nodes for computed sizes); None for other reshapes."""
    sizes: Any = None
    if node.op == "call_method" and node.target in ("view", "reshape"):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = sizes[0]
        sizes = sizes or node.kwargs.get("shape") or node.kwargs.get("size")
    elif node.op == "call_function" and getattr(node.target, "__name__", "") == "reshape":
        sizes = node.args[1] if len(node.args) > 1 else node.kwargs.get("shape")
    if isinstance(sizes, (list, tuple)) and len(sizes) == ndim:
        return list(sizes)
    return None


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
