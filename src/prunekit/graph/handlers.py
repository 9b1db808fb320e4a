"""Layer handlers: for each module type, how its channels flow (graph analysis) and how surgery resizes it.

One table serves the whole engine. :class:`prunekit.graph.DependencyGraph` asks a module's handler what the
module does with the channels of its input; surgery asks it to slice the module's tensors; the saved-model
format asks it for the module's resizable shape (``model.json``) and to rebuild a resized module on load.
Modules with a handler are leaves for torch.fx (never traced into), so a handler is also how a model's own
block — a fused norm + activation, a convolution with dynamic padding — becomes prunable.

Register your own module type with :func:`register_handler`; a handler defines :meth:`LayerHandler.flow`
and, if surgery may resize the module, :meth:`LayerHandler.shape`, :meth:`LayerHandler.resize` and
:meth:`LayerHandler.shrink`. Most custom layers are one of three kinds, each a ready class here:
:class:`ElementwiseHandler` (per-channel, no parameters: activations, pooling),
:class:`PerChannelHandler` (per-channel parameters: norms, scales), and :class:`ConvHandler` /
:class:`LinearHandler` for layers that produce channels.

>>> import torch
>>> from torch import nn
>>> class Scale(nn.Module):                      # a learnable per-channel scale, y = x * w[c]
...     def __init__(self, c):
...         super().__init__()
...         self.weight = nn.Parameter(torch.ones(c))
...     def forward(self, x):
...         return x * self.weight.view(1, -1, 1, 1)
>>> _ = register_handler(Scale)(PerChannelHandler(zero_preserving=True, size_attr=None))

A subclass of a registered type uses its base's handler only when it changes nothing that matters: it
does not override ``forward`` and owns no other parameters or buffers. Anything else (e.g. a convolution
that pads itself before calling ``conv2d``) needs its own registration, or the graph treats it as an opaque
module and locks its channels with a reason.

Handlers of an optional library register lazily: :func:`register_lazy_handlers` runs a loader the first time the
graph meets a module type from that package. timm's handlers (:mod:`prunekit.graph.timm_layers`) come this way,
so ``import prunekit`` never imports timm. docs/handlers.md has the full guide and a worked example.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

# --- the table ------------------------------------------------------------------------------------------

HANDLERS: dict[type, LayerHandler] = {}
# top-level package name -> function registering the handlers of that package's module types (run once, the
# first time the graph meets a module whose type, or a base of it, is defined in that package)
LAZY_HANDLERS: dict[str, Callable[[], None]] = {}
_LAZY_PENDING: set[str] = set()  # packages whose loader has not run yet


def register_handler(*types: type, override: bool = True) -> Callable[[LayerHandler], LayerHandler]:
    """Register a handler (an instance of a :class:`LayerHandler` subclass) for module ``types``; returns it.

    Registering a type again replaces its handler (a user's handler may override a built-in one);
    ``override=False`` keeps a handler already registered (how lazily loaded library handlers defer to a user's)."""

    def deco(handler: LayerHandler) -> LayerHandler:
        if not isinstance(handler, LayerHandler):
            raise TypeError("register_handler(...) decorates a LayerHandler instance")
        for t in types:
            if override or t not in HANDLERS:
                HANDLERS[t] = handler
        return handler

    return deco


def register_lazy_handlers(package: str, loader: Callable[[], None]) -> None:
    """Run ``loader`` (which calls :func:`register_handler`) the first time :func:`handler_for` meets a module
    whose type (or a base type) comes from the top-level ``package``. This is how the handlers of an optional
    library (timm) are registered without importing it when prunekit is imported."""
    LAZY_HANDLERS[package] = loader
    _LAZY_PENDING.add(package)


def _load_lazy(t: type) -> bool:
    loaded = False
    for cls in t.__mro__:
        pkg = cls.__module__.partition(".")[0]
        if pkg in _LAZY_PENDING and pkg in LAZY_HANDLERS:
            _LAZY_PENDING.discard(pkg)
            LAZY_HANDLERS[pkg]()
            loaded = True
    return loaded


def handler_for(m: nn.Module) -> LayerHandler | None:
    """The handler of ``m``'s type, or of a base type that ``m``'s type merely renames (see the module doc)."""
    t = type(m)
    h = HANDLERS.get(t)
    if h is not None:
        return h
    if _LAZY_PENDING and _load_lazy(t):
        return handler_for(m)
    for base in t.__mro__[1:]:
        h = HANDLERS.get(base)
        if h is None:
            continue
        plain = t.forward is base.forward and set(m._parameters) | set(m._buffers) <= _STANDARD_TENSORS
        return h if plain else None
    return None


# the tensors of the built-in types (what their handlers slice)
_STANDARD_TENSORS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def is_leaf(m: nn.Module) -> bool:
    """Whether torch.fx should treat ``m`` as one node (it has a handler)."""
    return handler_for(m) is not None and type(m) not in _CONTAINERS


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


# --- what a handler sees of the analysis ----------------------------------------------------------------


class Flow:
    """The analysis at one call of a module: its input's channel labels and what the handler may record.

    Attributes: ``name`` (qualified module name), ``module``, ``x`` (the input value: ``x.labels`` one id per
    channel, ``x.cdim`` the channel dimension, ``x.shape``).
    """

    def __init__(self, analyzer: Any, node: Any, name: str, module: nn.Module, x: Any):
        self._a, self._node = analyzer, node
        self.name, self.module, self.x = name, module, x

    @property
    def out_shape(self) -> Any:
        return self._a.shapes.get(self._node.name)

    def slot(self, kind: str, dim: int, labels: np.ndarray, child: str | None = None) -> None:
        """Record a tensor dimension of this module that surgery slices: ``out`` (rows of a producer's weight),
        ``in`` (a consumer's input columns), ``in_grouped`` (a grouped conv's input), ``channel`` (per-channel
        parameters). Other kinds are the handler's own bookkeeping (surgery passes their kept positions to its
        :meth:`LayerHandler.shrink`; criteria and costs ignore them). ``child``: the slot belongs to the submodule
        of that (dotted) name, which surgery shrinks with its own handler (a container module's parts)."""
        self._a.slot(self._qual(child), kind, dim, labels, self._node)

    def new(self, n: int, child: str | None = None) -> np.ndarray:
        """Fresh channel ids for ``n`` output channels produced by this module (or by its submodule ``child``)."""
        return self._a.s.new(self._qual(child), n)

    def lock(self, labels: np.ndarray, why: str) -> None:
        """Never prune these channels, saying ``why`` (the node and module type are appended)."""
        self._a.s.lock(labels, f"{why} at node '{self._node.name}' ({type(self.module).__name__})")

    def _qual(self, child: str | None) -> str:
        return f"{self.name}.{child}" if child else self.name

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """These channels live and die together (element by element)."""
        self._a.s.uf.union_arrays(a, b)

    def output(self, labels: np.ndarray, cdim: int, kind: str) -> Any:
        """The module's output value. ``kind``: ``producer`` (creates channels), ``zp`` (a zero input channel
        stays zero: ReLU, pooling), ``nzp`` (it may not: BatchNorm, sigmoid)."""
        v = self._a.out_tv(self._node, labels, cdim)
        self._a.rec(self._node, kind, v, self.name)
        return v

    def opaque(self, why: str) -> Any:
        """Give up on this call: its input channels are locked with ``why`` (shown by ``prunekit plan``)."""
        return self._a.opaque(self._node, why)

    def reshape(self) -> Any:
        return self._a.reshape(self._node, self.x)

    def layer_norm(self, n_norm: int) -> Any:
        return self._a.layer_norm(self._node, self.x, n_norm, self.name)

    def norm_dim(self, d: int) -> int:
        return d + len(self.x.shape) if d < 0 else d


# --- handlers -------------------------------------------------------------------------------------------


class LayerHandler:
    """How a module type treats channels. Subclasses implement :meth:`flow`; resizable ones the rest."""

    def flow(self, f: Flow) -> Any:
        """Analyse one call: record slots, return the output value (``f.output(...)`` or ``f.opaque(...)``)."""
        raise NotImplementedError

    def shape(self, m: nn.Module) -> dict[str, Any] | None:
        """The sizes surgery may change (recorded in ``model.json``), or None when the module is not resizable."""
        return None

    def folds_output(self, m: nn.Module) -> bool:
        """Whether a mask on the output of this (channel-affine norm) module may be folded into its ``weight`` and
        ``bias``: true when the output *is* ``norm(x) * weight + bias``, or something that maps 0 to 0 of it."""
        return False

    def resize(self, m: nn.Module, shape: dict[str, Any]) -> nn.Module:
        """A copy of ``m`` with ``shape``'s sizes and uninitialised tensors on ``m``'s device (meta stays meta)."""
        raise NotImplementedError(f"{type(m).__name__} cannot be resized")

    def shrink(self, name: str, m: nn.Module, keep: dict[str, np.ndarray]) -> nn.Module | None:
        """``m`` without the removed channels: ``keep[kind]`` holds the kept indices of each slot kind recorded
        by :meth:`flow`. None when nothing changes."""
        raise NotImplementedError(f"{type(m).__name__} cannot be resized")


def _copy_module(m: nn.Module) -> nn.Module:
    """A shallow copy that owns its parameter, buffer, submodule and hook tables (no constructor call, so it
    works for any subclass)."""
    new = copy.copy(m)
    new.__dict__ = {k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in m.__dict__.items()}
    return new


def _with_tensors(m: nn.Module, attrs: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    new = _copy_module(m)
    for k, v in attrs.items():
        setattr(new, k, v)
    for k, t in tensors.items():
        if k in m._parameters and m._parameters[k] is not None:
            new._parameters[k] = nn.Parameter(t, requires_grad=m._parameters[k].requires_grad)
        elif k in m._buffers and m._buffers[k] is not None:
            new._buffers[k] = t
    return new


def _empty_like(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.empty(shape, dtype=t.dtype, device=t.device)


def _sel(t: torch.Tensor, keep: np.ndarray, dim: int) -> torch.Tensor:
    return t.detach().index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=t.device)).clone()


def _check_sizes(name: str, sizes: list[int]) -> None:
    if min(sizes) == 0:
        from ..errors import PrunekitError

        raise PrunekitError(f"surgery would remove every channel of layer '{name}'")


class ConvHandler(LayerHandler):
    """Conv1d/2d/3d: produces ``out_channels``. Depthwise convolutions and convolutions with many small groups tie
    each group's input and output channels (whole groups are removed together); a few large groups (ResNeSt's
    radix split) tie the same position of every group instead (each group keeps as many channels)."""

    def flow(self, f: Flow) -> Any:
        m, x = f.module, f.x
        if x.cdim != 1 and len(x.shape) == len(m.weight.shape):
            return f.opaque("convolution along the channel dimension (it mixes neighbouring channels, as ECA "
                            "attention does)")
        if x.cdim != 1 or len(x.labels) != m.in_channels:
            return f.opaque("convolution input does not match in_channels")
        return f.output(self.channels(f, m, x.labels), 1, "producer")

    @staticmethod
    def channels(f: Flow, m: nn.Module, labels: np.ndarray, child: str | None = None) -> np.ndarray:
        """Record the slots of convolution ``m`` (``f``'s module, or its submodule ``child``) reading channels
        ``labels``; returns the ids of its output channels."""
        out = f.new(m.out_channels, child)
        f.slot("out", 0, out, child)
        if m.groups == 1:
            f.slot("in", 1, labels, child)
        else:
            ipg, opg = m.in_channels // m.groups, m.out_channels // m.groups
            if m.groups < min(ipg, opg):  # a few large groups: position j of every group goes together
                for k in range(1, m.groups):
                    f.union(labels[:ipg], labels[k * ipg:(k + 1) * ipg])
                    f.union(out[:opg], out[k * opg:(k + 1) * opg])
            else:
                for k in range(m.groups):  # depthwise, many small groups: a group's channels live and die together
                    members = np.concatenate([labels[k * ipg:(k + 1) * ipg], out[k * opg:(k + 1) * opg]])
                    f.union(members[:-1], members[1:])
            f.slot("in_grouped", 1, labels, child)
        return out

    def shape(self, m):
        return {"type": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                "groups": m.groups}

    def resize(self, m, shape):
        w = m.weight
        tensors = {"weight": _empty_like(w, (shape["out_channels"], shape["in_channels"] // shape["groups"],
                                             *w.shape[2:]))}
        if m.bias is not None:
            tensors["bias"] = _empty_like(m.bias, (shape["out_channels"],))
        return _with_tensors(m, {k: shape[k] for k in ("in_channels", "out_channels", "groups")}, tensors)

    def shrink(self, name, m, keep):
        from ..errors import UnsupportedGraphError

        keep_out = keep.get("out", np.arange(m.out_channels))
        w = m.weight
        if m.groups == 1:
            keep_in = keep.get("in", np.arange(m.in_channels))
            weight, groups = _sel(_sel(w, keep_out, 0), keep_in, 1), 1
        else:
            ipg, opg = m.in_channels // m.groups, m.out_channels // m.groups
            keep_in = keep.get("in_grouped", np.arange(m.in_channels))
            kept_groups = np.unique(keep_out // opg)
            want_out = (kept_groups[:, None] * opg + np.arange(opg)[None, :]).ravel()
            want_in = (kept_groups[:, None] * ipg + np.arange(ipg)[None, :]).ravel()
            pos_out, pos_in = _same_positions(keep_out, opg, m.groups), _same_positions(keep_in, ipg, m.groups)
            if np.array_equal(want_out, keep_out) and np.array_equal(want_in, keep_in):
                weight, groups = _sel(w, keep_out, 0), len(kept_groups)  # whole groups
            elif pos_out is not None and pos_in is not None:
                weight, groups = _sel(_sel(w, keep_out, 0), pos_in, 1), m.groups  # the same positions of each group
            else:
                raise UnsupportedGraphError(f"grouped conv '{name}': channels must be removed in whole groups or at "
                                            "the same positions of every group")
        _check_sizes(name, [len(keep_out), len(keep_in)])
        if len(keep_out) == m.out_channels and len(keep_in) == m.in_channels:
            return None
        tensors = {"weight": weight}
        if m.bias is not None:
            tensors["bias"] = _sel(m.bias, keep_out, 0)
        return _with_tensors(m, {"in_channels": len(keep_in), "out_channels": len(keep_out), "groups": groups},
                             tensors)


def _same_positions(keep: np.ndarray, per_group: int, groups: int) -> np.ndarray | None:
    """The kept positions within a group when every group keeps the same ones (and at least one), else None."""
    pos = keep[keep < per_group]
    if len(pos) == 0 or len(keep) != len(pos) * groups:
        return None
    want = (np.arange(groups)[:, None] * per_group + pos[None, :]).ravel()
    return pos if np.array_equal(want, keep) else None


class LinearHandler(LayerHandler):
    """Linear over the last dimension: consumes its input channels, produces ``out_features``."""

    def flow(self, f: Flow) -> Any:
        m, x = f.module, f.x
        if x.cdim != len(x.shape) - 1 or len(x.labels) != m.in_features:
            return f.opaque("Linear over a non-channel dimension")
        f.slot("in", 1, x.labels)
        out = f.new(m.out_features)
        f.slot("out", 0, out)
        return f.output(out, x.cdim, "producer")

    def shape(self, m):
        return {"type": type(m).__name__, "in_features": m.in_features, "out_features": m.out_features}

    def resize(self, m, shape):
        tensors = {"weight": _empty_like(m.weight, (shape["out_features"], shape["in_features"]))}
        if m.bias is not None:
            tensors["bias"] = _empty_like(m.bias, (shape["out_features"],))
        return _with_tensors(m, {"in_features": shape["in_features"], "out_features": shape["out_features"]},
                             tensors)

    def shrink(self, name, m, keep):
        keep_out = keep.get("out", np.arange(m.out_features))
        keep_in = keep.get("in", np.arange(m.in_features))
        _check_sizes(name, [len(keep_out), len(keep_in)])
        if len(keep_out) == m.out_features and len(keep_in) == m.in_features:
            return None
        tensors = {"weight": _sel(_sel(m.weight, keep_out, 0), keep_in, 1)}
        if m.bias is not None:
            tensors["bias"] = _sel(m.bias, keep_out, 0)
        return _with_tensors(m, {"in_features": len(keep_in), "out_features": len(keep_out)}, tensors)


class ElementwiseHandler(LayerHandler):
    """A per-channel op without channel-sized state (activations, pooling, dropout, upsampling).

    ``zero_preserving``: a zero channel stays zero (ReLU, max/avg pooling); otherwise (sigmoid) the mask must be
    applied after it."""

    def __init__(self, zero_preserving: bool = True):
        self.kind = "zp" if zero_preserving else "nzp"

    def flow(self, f: Flow) -> Any:
        return f.output(f.x.labels, f.x.cdim, self.kind)


class PerChannelHandler(LayerHandler):
    """A module with one value per channel in each of its parameters/buffers along dimension 0 (BatchNorm,
    InstanceNorm, a learnable scale). ``size_attr`` names the attribute holding the channel count (updated by
    surgery); ``channel_dim`` where the channels are in the input (1 for NCHW)."""

    def __init__(self, zero_preserving: bool = False, size_attr: str | None = "num_features", channel_dim: int = 1):
        self.kind = "zp" if zero_preserving else "nzp"
        self.size_attr, self.channel_dim = size_attr, channel_dim

    def has_state(self, m: nn.Module) -> bool:
        return any(t is not None and t.ndim >= 1 for t in (*m._parameters.values(), *m._buffers.values()))

    def channels(self, m: nn.Module) -> int | None:
        if self.size_attr is not None:
            return getattr(m, self.size_attr)
        ts = [t for t in (*m._parameters.values(), *m._buffers.values()) if t is not None and t.ndim >= 1]
        return int(ts[0].shape[0]) if ts else None

    def flow(self, f: Flow) -> Any:
        m, x = f.module, f.x
        c = self.channels(m)
        if x.cdim != self.channel_dim or (c is not None and len(x.labels) != c):
            return f.opaque("per-channel layer over a non-channel dimension")
        if self.has_state(m):
            f.slot("channel", 0, x.labels)
        return f.output(x.labels, x.cdim, self.kind)

    def shape(self, m):
        if self.size_attr is None:
            return None
        return {"type": type(m).__name__, self.size_attr: getattr(m, self.size_attr)}

    def _tensors(self, m: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: fn(t) for k, t in (*m._parameters.items(), *m._buffers.items())
                if t is not None and t.ndim >= 1 and k != "num_batches_tracked"}

    def resize(self, m, shape):
        n = shape[self.size_attr]
        return _with_tensors(m, {self.size_attr: n}, self._tensors(m, lambda t: _empty_like(t, (n, *t.shape[1:]))))

    def shrink(self, name, m, keep):
        k = keep["channel"]
        _check_sizes(name, [len(k)])
        if len(k) == self.channels(m) and np.array_equal(k, np.arange(len(k))):
            return None
        attrs = {self.size_attr: len(k)} if self.size_attr else {}
        return _with_tensors(m, attrs, self._tensors(m, lambda t: _sel(t, k, 0)))


class BatchNormHandler(PerChannelHandler):
    """BatchNorm/InstanceNorm: per-channel statistics and affine parameters (a zero input channel comes out
    as ``beta - gamma * mean / std``, so the mask goes after it)."""

    def flow(self, f: Flow) -> Any:
        m, x = f.module, f.x
        if x.cdim != 1 or len(x.labels) != m.num_features:
            return f.opaque("normalisation over a non-channel dimension")
        if m.affine or m.track_running_stats:
            f.slot("channel", 0, x.labels)
        return f.output(x.labels, 1, "nzp")

    def folds_output(self, m):
        return True


class GroupNormHandler(PerChannelHandler):
    """GroupNorm: statistics per group of ``C / G`` channels, so channels go in whole groups (``GroupNorm(C, C)``:
    any channel; ``num_groups`` shrinks with them). One group normalises across all channels: locked."""

    def __init__(self):
        super().__init__(size_attr="num_channels")

    def flow(self, f: Flow) -> Any:
        m, x = f.module, f.x
        if x.cdim != 1 or len(x.labels) != m.num_channels:
            return f.opaque("GroupNorm over a non-channel dimension")
        if m.num_groups == 1 and m.num_channels > 1:
            return f.opaque("GroupNorm normalises across channels (groups=1)")
        per = m.num_channels // m.num_groups
        for k in range(m.num_groups if per > 1 else 0):  # removing part of a group would change its statistics
            f.union(x.labels[k * per:(k + 1) * per - 1], x.labels[k * per + 1:(k + 1) * per])
        f.slot("channel", 0, x.labels)  # also without affine tensors: num_groups must follow
        return f.output(x.labels, 1, "nzp")

    def folds_output(self, m):
        return True

    def shape(self, m):
        return {"type": type(m).__name__, "num_groups": m.num_groups, "num_channels": m.num_channels}

    def resize(self, m, shape):
        new = super().resize(m, shape)
        new.num_groups = shape["num_groups"]
        return new

    def shrink(self, name, m, keep):
        from ..errors import UnsupportedGraphError

        per = m.num_channels // m.num_groups
        k = keep["channel"]
        rows = k.reshape(-1, per) if len(k) % per == 0 else None
        if rows is None or not ((rows[:, 0] % per == 0) & (rows == rows[:, :1] + np.arange(per)).all(1)).all():
            raise UnsupportedGraphError(f"GroupNorm '{name}': channels must be removed in whole groups")
        new = super().shrink(name, m, keep)
        if new is not None:
            new.num_groups = len(k) // per
        return new


class PReLUHandler(PerChannelHandler):
    """PReLU: one slope per channel (or one shared slope, which needs no slicing)."""

    def __init__(self):
        super().__init__(zero_preserving=True, size_attr="num_parameters")

    def flow(self, f: Flow) -> Any:
        m, x = f.module, f.x
        if m.num_parameters > 1:
            if x.cdim != 1:
                return f.opaque("PReLU over a non-channel dimension")
            f.slot("channel", 0, x.labels)
        return f.output(x.labels, x.cdim, "zp")


class LayerNormHandler(LayerHandler):
    """LayerNorm: fine over non-channel dimensions (the channel is a batch-like axis), opaque across channels."""

    def flow(self, f: Flow) -> Any:
        return f.layer_norm(len(f.module.normalized_shape))

    def shape(self, m):
        return {"type": type(m).__name__, "normalized_shape": list(m.normalized_shape)}

    def resize(self, m, shape):
        ns = tuple(shape["normalized_shape"])
        tensors = {k: _empty_like(t, ns) for k, t in m._parameters.items() if t is not None}
        return _with_tensors(m, {"normalized_shape": ns}, tensors)


class ReshapeHandler(LayerHandler):
    """Flatten/Unflatten: channel ids follow the reshape."""

    def flow(self, f: Flow) -> Any:
        return f.reshape()


class SoftmaxHandler(LayerHandler):
    """Softmax over a non-channel dimension is per-channel; over channels it mixes them."""

    def flow(self, f: Flow) -> Any:
        d = f.module.dim if f.module.dim is not None else 1
        if f.norm_dim(d) == f.x.cdim:
            return f.opaque("softmax over channels")
        return f.output(f.x.labels, f.x.cdim, "nzp")


class ConstantPadHandler(LayerHandler):
    """Spatial padding; a non-zero padding value turns a zero channel into a non-zero one."""

    def flow(self, f: Flow) -> Any:
        m, x = f.module, f.x
        if len(x.shape) - x.cdim <= len(m.padding) // 2:
            return f.opaque("padding of the channel dimension")
        zero = isinstance(m, nn.ZeroPad2d) or m.value == 0
        return f.output(x.labels, x.cdim, "zp" if zero else "nzp")


register_handler(nn.Conv1d, nn.Conv2d, nn.Conv3d)(ConvHandler())
register_handler(nn.Linear)(LinearHandler())
register_handler(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                 nn.InstanceNorm3d)(BatchNormHandler())
register_handler(nn.GroupNorm)(GroupNormHandler())
register_handler(nn.PReLU)(PReLUHandler())
register_handler(nn.LayerNorm)(LayerNormHandler())
register_handler(nn.Flatten, nn.Unflatten)(ReshapeHandler())
register_handler(nn.Softmax, nn.LogSoftmax)(SoftmaxHandler())
register_handler(nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad2d)(ConstantPadHandler())
register_handler(nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Hardswish,
                 nn.Mish, nn.Tanh, nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                 nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ReflectionPad2d,
                 nn.ReplicationPad2d)(ElementwiseHandler(zero_preserving=True))
register_handler(nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid, nn.Softsign)(
    ElementwiseHandler(zero_preserving=False))


def _register_timm() -> None:
    from .timm_layers import register

    register()


register_lazy_handlers("timm", _register_timm)  # timm's layers: see prunekit.graph.timm_layers


# --- the saved-model view: shapes and resizing ----------------------------------------------------------


def layer_shape(m: nn.Module) -> dict[str, Any] | None:
    """The resizable shape of a layer (what surgery may change), or None for other modules."""
    h = handler_for(m)
    return h.shape(m) if h is not None else None


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{qualified_name: shape}`` for every resizable layer."""
    return {n: s for n, m in model.named_modules() if (s := layer_shape(m)) is not None}


def resized(m: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """``m`` with ``shape``'s sizes (uninitialised tensors on ``m``'s device)."""
    h = handler_for(m)
    if h is None:
        from ..errors import PrunekitError

        raise PrunekitError(f"cannot resize module of type {type(m).__name__}")
    return h.resize(m, shape)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
