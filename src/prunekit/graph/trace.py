"""torch.fx tracing with a readable error for untraceable code, plus shape propagation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from ..errors import PrunekitError
from .handlers import is_leaf


class _Tracer(fx.Tracer):
    """A tracer that remembers which module it was inside when tracing failed, and honours user leaves."""

    def __init__(self, leaf_modules: Iterable[str | type] = ()):
        super().__init__()
        self.leaf_names = {x for x in leaf_modules if isinstance(x, str)}
        self.leaf_types = tuple(x for x in leaf_modules if isinstance(x, type))
        self.stack: list[tuple[str, str]] = []
        self.failed: tuple[str, str] | None = None  # innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)) or is_leaf(m):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append((self.path_of_module(m), type(m).__name__))
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:  # the stack unwinds before trace() sees the error: remember it here
                self.failed = self.stack[-1]
            raise
        finally:
            self.stack.pop()
        self.failed = None  # an error raised inside was caught by the module's own code
        return out


def trace(model: nn.Module, leaf_modules: Iterable[str | type] = (), auto_leaf: bool = False) -> fx.GraphModule:
    """Symbolically trace ``model``; a failure names the innermost module and suggests marking it a leaf.

    ``auto_leaf``: instead of failing, make the innermost module that cannot be traced a leaf and trace again
    (the analysis then locks its channels); ``gm.meta["untraceable"]`` maps each such module to the reason.
    """
    leaves = list(leaf_modules)
    untraceable: dict[str, str] = {}
    while True:
        tracer = _Tracer(leaves)
        try:
            graph = tracer.trace(model)
            break
        except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, RuntimeError ...
            where = tracer.failed or (tracer.stack[-1] if tracer.stack else None)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if auto_leaf and where and where[0] and where[0] not in untraceable and len(untraceable) < 256:
                untraceable[where[0]] = first
                leaves.append(where[0])
                continue
            if where and where[0]:
                raise PrunekitError(
                    f"cannot trace the model with torch.fx inside module '{where[0]}' ({where[1]}): {first}. "
                    f"Mark it as a leaf (leaf_modules=['{where[0]}'] / --leaf {where[0]}); its channels are then "
                    "left unpruned") from None
            raise PrunekitError(f"cannot trace the model with torch.fx: {type(e).__name__} in the model itself: {first}") from None
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta["untraceable"] = untraceable
    return gm


_BN_DIMS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}


def _conv2d_out_hw(mod: nn.Conv2d, h: int, w: int) -> tuple[int, int] | None:
    """Output height/width of a Conv2d with numeric padding (None: let the real kernel decide)."""
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        return None
    out = []
    for size, k, s, p, d in zip((h, w), mod.kernel_size, mod.stride, mod.padding, mod.dilation, strict=True):
        o = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if o < 1:
            return None  # too small an input: the real call raises the proper error
        out.append(o)
    return out[0], out[1]


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, fast: bool = False):
        super().__init__(gm)
        self.shapes: dict[str, Any] = {}
        self.fast = fast

    def call_module(self, target, args, kwargs):
        # Under fake tensors, BatchNorm's decomposition is most of the cost of shape propagation (ResNet-50:
        # ~0.4 of 0.5 s); its output has its input's shape, so skip it when the input fits the layer.
        if self.fast and not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
            mod = self.fetch_attr(target)
            x = args[0]
            dims = _BN_DIMS.get(type(mod))
            if dims and x.dim() in dims and x.shape[1] == mod.num_features and x.is_floating_point():
                return torch.empty_like(x)
            if type(mod) is nn.Conv2d and x.dim() == 4 and x.shape[1] == mod.in_channels and x.is_floating_point():
                hw = _conv2d_out_hw(mod, x.shape[2], x.shape[3])  # the conv meta kernel is the next largest cost
                if hw is not None:
                    return x.new_empty((x.shape[0], mod.out_channels, *hw))
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n.name] = _shape_of(out)
        return out


def _shape_of(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (list, tuple)) and not isinstance(v, torch.Size):
        return tuple(_shape_of(x) for x in v)
    return None


@torch.no_grad()
def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, Any]:
    """Run ``gm`` once on ``example`` and return ``{node name: output shape}`` (tuples for tuple outputs).

    Shapes are computed with fake tensors (no arithmetic: 5-10x faster on large inputs); models with ops that
    fake tensors do not support run for real. Buffers (BN running stats) are restored either way, so tracing in
    train mode leaves the model unchanged.
    """
    saved = {k: v.clone() for k, v in gm.named_buffers()}
    try:
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode(allow_non_fake_inputs=True)
            with mode:
                rec = _ShapeRecorder(gm, fast=True)
                rec.run(mode.from_tensor(example))
            return rec.shapes
        except Exception:  # unsupported op under fake tensors, or a data-dependent shape: run it for real
            pass
        rec = _ShapeRecorder(gm)
        try:
            rec.run(example)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PrunekitError(f"the model fails on an input of shape {list(example.shape)}: {first}") from None
        return rec.shapes
    finally:
        bufs = dict(gm.named_buffers())
        for k, v in saved.items():
            bufs[k].copy_(v)
