"""Layer handlers for timm's building blocks, registered through :func:`~prunekit.graph.register_handler`.

timm is optional: this module imports it only inside :func:`register`, which :mod:`prunekit.graph.handlers` runs
lazily the first time the graph meets a module whose type comes from the ``timm`` package (a ``timm:NAME`` model,
or a user's model built from timm layers). Handlers a user registered before keep precedence.

What each timm block does with channels:

* ``BatchNormAct2d`` / ``SyncBatchNormAct`` / ``FrozenBatchNormAct2d``: BatchNorm with per-channel statistics and
  affine parameters, then dropout and an activation. One leaf: sliced like BatchNorm when its activation is a
  known per-channel function (any torch or timm activation); an output mask folds into its affine parameters
  when that activation maps 0 to 0 (ReLU, SiLU, hard-swish, GELU, ...), else a hook multiplies the output.
* ``GroupNormAct`` / ``GroupNorm1Act`` and timm's ``GroupNorm`` / ``GroupNorm1``: like GroupNorm: channels go in
  whole groups (statistics are per group); a single group normalises across all channels: locked.
* ``Conv2dSame`` (the dynamic TF "same" padding of the ``tf_*`` models): a convolution whose input is padded with
  zeros by size arithmetic: a leaf with the convolution's channel behaviour (its control flow is never traced).
* ``StdConv2d`` / ``ScaledStdConv2d`` (BiT, NFNet): weight standardisation over each filter's inputs, so the input
  channels are locked (removing one changes the statistics of every filter); filters (outputs) are prunable.
* ``MixedConv2d`` (MixNet): the channels split into constant-size parts, one convolution each; a leaf whose part
  sizes surgery updates, each part convolution sliced by its own handler.
* ``EcaModule`` / ``CecaModule``: a 1-D convolution *across* channels computes each channel's gate from its
  neighbours, so removing a channel changes its neighbours' gates: its channels are locked, saying so.
* ``BlurPool2d`` (anti-aliased downsampling): a fixed per-channel depthwise blur.
* timm's activation modules (``Swish``, ``HardSwish``, ``GELU``, the memory-efficient ``*Me`` versions, ...):
  per-channel elementwise functions.

Squeeze-and-excitation (``SEModule``, ``SqueezeExcite``, ESE's ``EffectiveSEModule``), the classifier heads of
``create_classifier`` and RepVGG / MobileOne's parallel branches are traced: the graph understands their
operations (pooling, 1x1 convolutions, gates, sums).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from torch import nn

from .handlers import (
    ConvHandler,
    ElementwiseHandler,
    Flow,
    GroupNormHandler,
    LayerHandler,
    LinearHandler,
    PerChannelHandler,
    PReLUHandler,
    _empty_like,
    _sel,
    _with_tensors,
    handler_for,
    register_handler,
)


def _activation_problem(m: nn.Module) -> str | None:
    """Why the dropout/activation inside a norm + act module is not understood (None: it is)."""
    for attr in ("drop", "act"):
        sub = getattr(m, attr, None)
        if sub is None:
            continue
        if not isinstance(handler_for(sub), ElementwiseHandler):
            return f"{attr} {type(sub).__name__} inside {type(m).__name__} is not a known per-channel function"
    return None


def _keeps_zero(m: nn.Module) -> bool:
    return all(getattr(handler_for(sub), "kind", None) == "zp" for sub in
               (getattr(m, a, None) for a in ("drop", "act")) if sub is not None)


class _WithAct:
    """A norm followed by dropout + activation inside the same module: opaque unless those are per-channel
    functions; the output keeps zeros only if they do."""

    def flow(self, f: Flow) -> Any:
        why = _activation_problem(f.module)
        if why is not None:
            return f.opaque(why)
        return super().flow(f)

    def folds_output(self, m):
        return _keeps_zero(m)


class NormActHandler(_WithAct, PerChannelHandler):
    """BatchNorm + dropout + activation in one module (timm's ``BatchNormAct2d``)."""

    def __init__(self, size_attr: str | None = "num_features"):
        super().__init__(zero_preserving=False, size_attr=size_attr)


class GroupNormActHandler(_WithAct, GroupNormHandler):
    """GroupNorm + dropout + activation (timm's ``GroupNormAct``, ``GroupNorm1Act``)."""


class StdConvHandler(ConvHandler):
    """A weight-standardised convolution: filters are prunable, input channels are locked. ``gain``: the
    per-filter gain parameter of ``ScaledStdConv2d``, sliced with the filters."""

    def __init__(self, gain: bool = False):
        self.gain = gain

    def flow(self, f: Flow) -> Any:
        x = f.x
        if x.cdim == 1 and len(x.labels) == f.module.in_channels:
            f.lock(x.labels, "weight standardisation: every input channel enters the statistics of each filter")
        return super().flow(f)

    def resize(self, m, shape):
        new = super().resize(m, shape)
        if self.gain:
            new._parameters["gain"] = nn.Parameter(_empty_like(m.gain, (shape["out_channels"], *m.gain.shape[1:])),
                                                   requires_grad=m.gain.requires_grad)
        return new

    def shrink(self, name, m, keep):
        new = super().shrink(name, m, keep)
        if new is not None and self.gain and "out" in keep:
            new._parameters["gain"] = nn.Parameter(_sel(m.gain, keep["out"], 0), requires_grad=m.gain.requires_grad)
        return new


class MixedConvHandler(LayerHandler):
    """timm's ``MixedConv2d``: ``torch.split(x, self.splits, 1)``, one convolution per part, ``torch.cat``. Each
    part's convolution gets its own slots (a child of this module); this module keeps the part sizes."""

    def flow(self, f: Flow) -> Any:
        m, x = f.module, f.x
        convs = list(m.items())
        if x.cdim != 1 or len(x.labels) != sum(m.splits) or len(convs) != len(m.splits):
            return f.opaque("MixedConv2d input does not match its splits")
        outs, start = [], 0
        for (key, conv), n in zip(convs, m.splits, strict=True):
            if not isinstance(handler_for(conv), ConvHandler) or conv.in_channels != n:
                return f.opaque(f"MixedConv2d part {key} ({type(conv).__name__}) is not a plain convolution")
            outs.append(ConvHandler.channels(f, conv, x.labels[start:start + n], child=key))
            start += n
        out = np.concatenate(outs)
        f.slot("split_in", 1, x.labels)
        f.slot("split_out", 1, out)
        return f.output(out, 1, "producer")

    def shape(self, m):
        return {"type": type(m).__name__, "splits": list(m.splits), "in_channels": m.in_channels,
                "out_channels": m.out_channels}

    def resize(self, m, shape):
        return _with_tensors(m, {"splits": list(shape["splits"]), "in_channels": shape["in_channels"],
                                 "out_channels": shape["out_channels"]}, {})

    def shrink(self, name, m, keep):  # the parts themselves are shrunk through their own slots
        splits = list(m.splits)
        if "split_in" in keep:
            ends, kept = np.cumsum([0, *splits]), keep["split_in"]
            splits = [int(((kept >= ends[i]) & (kept < ends[i + 1])).sum()) for i in range(len(splits))]
        out = len(keep["split_out"]) if "split_out" in keep else m.out_channels
        if splits == list(m.splits) and out == m.out_channels:
            return None
        return _with_tensors(m, {"splits": splits, "in_channels": sum(splits), "out_channels": out}, {})


class EcaHandler(LayerHandler):
    """ECA attention: ``x * gate(conv1d(mean(x)))`` with the 1-D convolution running across channels."""

    def flow(self, f: Flow) -> Any:
        x = f.x
        if x.cdim != 1:
            return f.opaque("ECA over a non-channel dimension")
        f.lock(x.labels, "ECA attention: a 1-D convolution across channels gates each channel by its neighbours, "
               "so removing one would change the others")
        return f.output(x.labels, 1, "zp")


class BlurPoolHandler(PerChannelHandler):
    """``BlurPool2d``: a fixed depthwise blur, one identical filter per channel (``channels=None``: shared)."""

    def __init__(self):
        super().__init__(zero_preserving=True, size_attr="channels")

    def flow(self, f: Flow) -> Any:
        if f.module.channels is None:
            return f.output(f.x.labels, f.x.cdim, "zp")
        return super().flow(f)

    def shape(self, m):
        return None if m.channels is None else super().shape(m)

    def resize(self, m, shape):  # the filter is a non-persistent buffer: rebuild it, not left uninitialised
        n = shape["channels"]
        return _with_tensors(m, {"channels": n}, {"filt": m.filt[:1].repeat(n, *([1] * (m.filt.ndim - 1)))})


def _types(module: Any, *names: str) -> list[type]:
    """The classes ``names`` of ``module`` (those missing from this timm version are skipped)."""
    return [t for n in names if isinstance(t := getattr(module, n, None), type)]


_ZERO_PRESERVING = ("Swish", "Mish", "Tanh", "HardSwish", "HardMish", "GELU", "GELUTanh", "QuickGELU", "SwishMe",
                    "MishMe", "HardSwishMe", "HardMishMe")
_NOT_ZERO_PRESERVING = ("Sigmoid", "HardSigmoid", "HardSigmoidMe")


def register() -> None:
    """Register the handlers of timm's layers (idempotent; a handler already registered for a type wins)."""
    import timm.layers as tl
    from timm.layers import activations, activations_me

    reg = functools.partial(register_handler, override=False)
    reg(*_types(tl, "BatchNormAct2d", "SyncBatchNormAct"))(NormActHandler())
    reg(*_types(tl, "FrozenBatchNormAct2d"))(NormActHandler(size_attr=None))
    reg(*_types(tl, "GroupNormAct", "GroupNorm1Act"))(GroupNormActHandler())
    reg(*_types(tl, "GroupNorm", "GroupNorm1"))(GroupNormHandler())
    reg(*_types(tl, "Conv2dSame"))(ConvHandler())
    reg(*_types(tl, "StdConv2d", "StdConv2dSame"))(StdConvHandler())
    reg(*_types(tl, "ScaledStdConv2d", "ScaledStdConv2dSame"))(StdConvHandler(gain=True))
    reg(*_types(tl, "MixedConv2d"))(MixedConvHandler())
    reg(*_types(tl, "EcaModule", "CecaModule"))(EcaHandler())
    reg(*_types(tl, "BlurPool2d"))(BlurPoolHandler())
    reg(*_types(tl, "Linear"))(LinearHandler())
    reg(*_types(activations, "PReLU"))(PReLUHandler())
    acts = (activations, activations_me)
    reg(*[t for m in acts for t in _types(m, *_ZERO_PRESERVING)])(ElementwiseHandler(zero_preserving=True))
    reg(*[t for m in acts for t in _types(m, *_NOT_ZERO_PRESERVING)])(ElementwiseHandler(zero_preserving=False))
