"""Model registry: ``register_model`` / ``create_model`` (timm style), plus ``torchvision:NAME`` and ``timm:NAME``
adapters (timm is optional: imported only when a ``timm:`` model is used)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import PrunekitError, closest, unknown
from .timm_models import TIMM_PREFIX, check_timm_name, create_timm, timm_default_input

TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder and the input it expects by default."""

    name: str
    builder: Callable[..., nn.Module]
    default_input: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, default_input: dict[str, Any] | None = None):
    """Decorator: register a builder ``fn(**kwargs) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = ModelEntry(name, fn, dict(default_input or {}))
        return fn

    return deco


def list_models(include_torchvision: bool = False) -> list[str]:
    """Names accepted by :func:`create_model`."""
    names = sorted(_REGISTRY)
    if include_torchvision:
        names += [TORCHVISION_PREFIX + n for n in torchvision_classification_models()]
    return names


def torchvision_classification_models() -> list[str]:
    """All classification architectures in ``torchvision.models`` (CNNs and transformers)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str, where: str = "model") -> None:
    """Raise a one-line ``PrunekitError`` unless ``arch`` is a registry name, ``torchvision:NAME`` or ``timm:NAME``
    (the latter needs timm installed)."""
    if arch.startswith(TIMM_PREFIX):
        check_timm_name(arch[len(TIMM_PREFIX):], where)
    elif arch.startswith(TORCHVISION_PREFIX):
        tv = arch[len(TORCHVISION_PREFIX):]
        names = torchvision_classification_models()
        if tv not in names:
            raise PrunekitError(f"{where}: unknown torchvision model '{arch}'{closest(tv, names)}")
    elif arch not in _REGISTRY:
        raise PrunekitError(f"{where}: unknown arch '{arch}'{closest(arch, list(_REGISTRY))}; valid: "
                            f"{', '.join(sorted(_REGISTRY))}, {TORCHVISION_PREFIX}NAME, {TIMM_PREFIX}NAME")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by registry name, ``torchvision:NAME`` or ``timm:NAME`` (random weights); unknown
    names/arguments raise ``PrunekitError``.

    >>> m = create_model("mobilenet_v1", width=0.25, num_classes=10)
    >>> type(m).__name__
    'MobileNetV1'
    """
    from .validate import check_build, on_meta

    if not on_meta():  # bounded arguments, and parameters that fit in memory, before allocating them
        check_build(name, kwargs)
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX):], **kwargs)
    if name.startswith(TIMM_PREFIX):
        return create_timm(name[len(TIMM_PREFIX):], **kwargs)
    if name not in _REGISTRY:
        raise unknown("model", name, list(_REGISTRY) + ["torchvision:<name>", "timm:<name>"])
    entry = _REGISTRY[name]
    _check_kwargs(name, entry.builder, kwargs)
    return entry.builder(**kwargs)


def _check_kwargs(name: str, fn: Callable, kwargs: dict[str, Any]) -> None:
    target = fn
    # Builders that forward **kwargs to a class: validate against the class signature.
    ann = inspect.signature(fn).return_annotation
    if isinstance(ann, str):
        ann = fn.__globals__.get(ann, ann)
    if inspect.isclass(ann) and ann is not inspect.Signature.empty:
        target = ann.__init__
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n != "self"]
    for k in kwargs:
        if k not in valid:
            raise PrunekitError(f"{name}: unknown argument '{k}'{closest(k, valid)}; valid: {', '.join(valid)}")


def default_input(name: str) -> dict[str, Any]:
    """The input spec (size, channels; for timm models also mean, std and resize) a model expects unless told
    otherwise."""
    if name.startswith(TIMM_PREFIX):
        return timm_default_input(name[len(TIMM_PREFIX):])
    if name.startswith(TORCHVISION_PREFIX):
        tv = name[len(TORCHVISION_PREFIX):]
        size = {"inception_v3": 299}.get(tv, 224)
        return {"size": [size, size], "channels": 3}
    if name not in _REGISTRY:
        raise unknown("model", name, list(_REGISTRY))
    return dict(_REGISTRY[name].default_input)


def _create_torchvision(tv_name: str, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    import torchvision

    names = torchvision_classification_models()
    if tv_name not in names:
        raise unknown("torchvision model", tv_name, names)
    if "weights" in kwargs and kwargs["weights"] is not None:
        raise PrunekitError("torchvision weights are not downloaded; build with weights=None and load a file")
    kwargs.pop("weights", None)
    if tv_name in ("googlenet", "inception_v3"):
        kwargs.setdefault("init_weights", True)
    try:
        model = torchvision.models.get_model(tv_name, weights=None, **kwargs)
    except TypeError as e:
        raise PrunekitError(f"torchvision:{tv_name}: {e}") from None
    if in_channels != 3:
        _replace_first_conv(model, tv_name, in_channels)
    return model


def _replace_first_conv(model: nn.Module, tv_name: str, in_channels: int) -> None:
    if not (isinstance(in_channels, int) and in_channels >= 1):
        raise PrunekitError(f"in_channels must be a positive integer, got {in_channels!r}")
    if getattr(model, "transform_input", False):
        raise PrunekitError(f"torchvision:{tv_name}: transform_input=True needs 3 input channels")
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                break
            new = nn.Conv2d(in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, 1, mod.bias is not None, mod.padding_mode)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise PrunekitError(f"torchvision:{tv_name}: cannot find a first Conv2d to adapt to {in_channels} input channels")


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """Fresh weights for ``model``'s architecture as it is now (e.g. after surgery), seeded: every layer's
    ``reset_parameters`` (BatchNorm statistics included), then the architecture's own initialiser when it has one
    that takes no arguments (``_init_weights`` / ``init_weights``), so that a pruned architecture starts the way
    the same architecture built fresh would."""
    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    for name in ("_init_weights", "init_weights"):
        fn = getattr(model, name, None)
        if callable(fn):
            try:
                required = [p for p in inspect.signature(fn).parameters.values()
                            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            except (TypeError, ValueError):
                continue
            if not required:
                fn()
                break
    return model
