"""Saved model directories: ``model.json`` (how to rebuild) + ``model.safetensors`` (weights). No pickle.

``model.json`` records the registry builder and its kwargs, the input the model expects, class names,
and the shape of every resizable layer (conv, linear, norm). Loading builds the architecture from the
registry, resizes the layers that surgery shrank, then loads the weights strictly. It works for our
models and for ``torchvision:NAME`` and ``timm:NAME`` models alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..data.classes import IMAGENET_MEAN, IMAGENET_STD
from ..errors import PrunekitError
from ..graph.handlers import layer_shape, layer_shapes, resized, set_submodule
from ..io import load_tensors, read_json, save_tensors, write_json
from ._registry import check_arch, create_model

FORMAT = "prunekit-model"
SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"


@dataclass
class InputSpec:
    """What the model expects: image size (H, W), channels, normalisation, optional resize-then-crop."""

    size: list[int] = field(default_factory=lambda: [224, 224])
    channels: int = 3
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    resize: int | None = None  # resize shorter side to this before a center crop of `size` (ImageNet: 256)

    def validate(self) -> InputSpec:
        ok_size = isinstance(self.size, (list, tuple)) and len(self.size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.size)
        if not ok_size:
            raise PrunekitError(f"input.size must be [height, width] of positive integers, got {self.size!r}")
        if not (isinstance(self.channels, int) and not isinstance(self.channels, bool) and self.channels >= 1):
            raise PrunekitError(f"input.channels must be a positive integer, got {self.channels!r}")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if not (isinstance(v, (list, tuple)) and len(v) == self.channels
                    and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
                raise PrunekitError(f"input.{key} must be {self.channels} finite numbers, got {v!r}")
        if any(s <= 0 for s in self.std):
            raise PrunekitError(f"input.std must be positive, got {self.std!r}")
        if self.resize is not None and not (isinstance(self.resize, int) and self.resize >= 1):
            raise PrunekitError(f"input.resize must be a positive integer or null, got {self.resize!r}")
        from .limits import check_input

        check_input(self.size, self.channels, self.resize)
        self.size = [int(s) for s in self.size]
        self.mean = [float(x) for x in self.mean]
        self.std = [float(x) for x in self.std]
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        _check_keys("input", d, {f for f in cls.__dataclass_fields__})
        return cls(**d).validate()


@dataclass
class ModelSpec:
    """Everything needed to rebuild and use a model, apart from its weights."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input: InputSpec = field(default_factory=InputSpec)
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. "pruning", "history", "metrics"

    def build(self) -> nn.Module:
        return create_model(self.arch, **self.kwargs)


_TOP_KEYS = {"format", "schema_version", "prunekit_version", "arch", "kwargs", "input", "class_names",
             "layers", "tensors", "stats", "extra"}
_EXTRA_KEYS = {"pruning", "history", "metrics", "source", "reinitialised_from"}


def _check_keys(where: str, d: Any, allowed: set[str]) -> None:
    if not isinstance(d, dict):
        raise PrunekitError(f"{where} must be a mapping, got {type(d).__name__}")
    bad = sorted(set(d) - allowed)
    if bad:
        raise PrunekitError(f"{where}: unknown field '{bad[0]}'; valid: {', '.join(sorted(allowed))}")


# --- layer shapes (the layer handlers of prunekit.graph know each type's resizable sizes) ----------------

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def apply_layer_shapes(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> None:
    """Resize ``model``'s layers in place to match recorded shapes (the inverse of :func:`layer_shapes`)."""
    if not isinstance(shapes, dict):
        raise PrunekitError("model.json: 'layers' must be a mapping")
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        m = modules.get(name)
        current = layer_shape(m) if m is not None else None
        if current is None:
            raise PrunekitError(f"model.json: layer '{name}' does not exist in the architecture (or is not resizable)")
        if not isinstance(shape, dict) or set(shape) != set(current) or shape.get("type") != current["type"]:
            raise PrunekitError(f"model.json: layer '{name}' should be {current['type']} with fields "
                                f"{sorted(current)}, got {shape!r}")
        for k, v in shape.items():
            if k == "type":
                continue
            vals = v if isinstance(v, list) else [v]
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in vals):
                raise PrunekitError(f"model.json: layer '{name}': {k} must be positive integer(s), got {v!r}")
        if shape != current:
            set_submodule(model, name, resized(m, shape))


# --- save / load ---------------------------------------------------------------------------------


def _owner_is_resizable(model: nn.Module, key: str) -> bool:
    owner = key.rpartition(".")[0]
    try:
        return layer_shape(model.get_submodule(owner)) is not None if owner else False
    except AttributeError:
        return False


def save_model(model: nn.Module, directory: str | Path, spec: ModelSpec,
               state_dict: dict[str, torch.Tensor] | None = None, stats: dict[str, Any] | None = None) -> Path:
    """Write ``directory/model.json`` and ``directory/model.safetensors`` (atomically, file by file)."""
    directory = Path(directory)
    spec.input.validate()
    sd = model.state_dict() if state_dict is None else state_dict
    tensors = {k: list(v.shape) for k, v in sd.items() if not _owner_is_resizable(model, k)}
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "prunekit_version": __version__,
        "arch": spec.arch,
        "kwargs": spec.kwargs,
        "input": asdict(spec.input),
        "class_names": spec.class_names,
        "layers": layer_shapes(model),
        "tensors": tensors,
        "stats": stats or {},
        "extra": spec.extra,
    }
    # one metadata key: safetensors orders its metadata map arbitrarily, and byte-identical files need one order
    save_tensors(directory / WEIGHTS, sd, metadata={"format": f"{FORMAT}/{SCHEMA_VERSION}"})
    write_json(directory / MODEL_JSON, doc)
    return directory


def read_spec(directory: str | Path) -> tuple[ModelSpec, dict[str, Any]]:
    """Parse and validate ``model.json``; returns the spec and the raw document."""
    directory = Path(directory)
    if not directory.exists():
        raise PrunekitError(f"model directory not found: {directory}")
    if directory.is_file():
        raise PrunekitError(f"expected a model directory (with {MODEL_JSON} and {WEIGHTS}), got a file: {directory}")
    doc = read_json(directory / MODEL_JSON, "model description")
    _check_keys(str(directory / MODEL_JSON), doc, _TOP_KEYS)
    if doc.get("format") != FORMAT:
        raise PrunekitError(f"{directory / MODEL_JSON}: not a prunekit model (format={doc.get('format')!r})")
    ver = doc.get("schema_version")
    if ver != SCHEMA_VERSION:
        raise PrunekitError(f"{directory / MODEL_JSON}: unsupported schema_version {ver!r} (this prunekit reads "
                            f"{SCHEMA_VERSION})")
    arch = doc.get("arch")
    if not isinstance(arch, str):
        raise PrunekitError(f"{directory / MODEL_JSON}: 'arch' must be a string")
    check_arch(arch, f"{directory / MODEL_JSON}: arch")
    kwargs = doc.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise PrunekitError(f"{directory / MODEL_JSON}: 'kwargs' must be a mapping")
    names = doc.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise PrunekitError(f"{directory / MODEL_JSON}: 'class_names' must be a list of strings")
    extra = doc.get("extra", {}) or {}
    _check_keys(f"{directory / MODEL_JSON} extra", extra, _EXTRA_KEYS)
    try:
        inp = InputSpec.from_dict(doc.get("input", {}))
    except PrunekitError as e:
        raise PrunekitError(f"{directory / MODEL_JSON}: {e}") from None
    spec = ModelSpec(arch, kwargs, inp, names, extra)
    return spec, doc


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild a saved model (never unpickles). Raises ``PrunekitError`` on any mismatch."""
    directory = Path(directory)
    spec, doc = read_spec(directory)
    from .validate import compare_with_header, validate_model_dir

    validate_model_dir(directory, spec, doc)  # sizes, header vs architecture and memory, before allocating
    weights = load_tensors(directory / WEIGHTS, "model weights")
    model = spec.build()
    apply_layer_shapes(model, doc.get("layers", {}))
    _resize_plain_tensors(model, weights, doc.get("tensors", {}))
    compare_with_header(model, weights, directory / WEIGHTS, spec.arch)  # the header was checked; now the tensors
    model.load_state_dict(weights, strict=True)
    _check_input_channels(model, spec, directory / MODEL_JSON)
    model.eval()
    return model.to(device), spec


def _check_input_channels(model: nn.Module, spec: ModelSpec, where: Path) -> None:
    """``input.channels`` must be what the first convolution takes (else every forward fails later). The first
    resizable layer with input channels decides: a conv, or a block that splits its input among several convs
    (timm's MixedConv2d) before its parts."""
    for name, m in model.named_modules():
        shape = layer_shape(m) if not isinstance(m, _CONVS) else None
        cin = m.in_channels if isinstance(m, _CONVS) else (shape or {}).get("in_channels")
        if isinstance(cin, int):
            if cin != spec.input.channels:
                raise PrunekitError(f"{where}: input.channels is {spec.input.channels} but the model's first "
                                    f"convolution '{name}' takes {cin} channels")
            return


def _resize_plain_tensors(model: nn.Module, weights: dict[str, torch.Tensor], shapes: dict[str, Any]) -> None:
    """Parameters/buffers owned by non-resizable modules (e.g. ConvNeXt layer_scale) take the file's shape."""
    if not isinstance(shapes, dict):
        raise PrunekitError("model.json: 'tensors' must be a mapping")
    sd = model.state_dict()
    for key, shape in shapes.items():
        if key not in sd or key not in weights or list(weights[key].shape) != list(shape):
            continue
        if list(sd[key].shape) == list(shape):
            continue
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        old = getattr(owner, attr)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            owner.register_buffer(attr, new, persistent=True)
