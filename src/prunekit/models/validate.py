"""Check a saved model directory against itself *before* allocating anything.

``model.json`` says what to build; ``model.safetensors`` holds the weights. Both may lie (hand edits, a foreign
file, a bug elsewhere). :func:`validate_model_dir` therefore

1. bounds every size-like field of ``model.json`` (:mod:`prunekit.models.limits`);
2. reads only the safetensors *header* (dtype, shape and byte range of every tensor, checked against the file's
   real size) without loading a byte of data;
3. builds the architecture on the ``meta`` device (shapes, no storage) and resizes its layers as recorded;
4. compares every tensor's name, shape and dtype with the header; a mismatch names the tensor;
5. estimates the memory of building the model and running one image (:mod:`prunekit.memory`) and refuses
   what would not fit.

Only then does :func:`prunekit.models.load_model` build the model for real and load the weights. Builders that
cannot run on ``meta`` (torchvision's RegNets compute widths with tensor ops) skip steps 3-5; the weights file
still bounds what is loaded, and the bounded builder arguments what is built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import PrunekitError
from ..memory import Activations, activations, human_bytes, require, state_bytes
from . import limits

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: str | Path, what: str = "model weights") -> dict[str, TensorInfo]:
    """Name -> (dtype, shape) of every tensor in a safetensors file, from its header alone.

    Checks what the loader would trust: the header length, that every byte range fits the file and matches its
    dtype and shape, and that the ranges tile the data section exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"{what} not found: {path}")

    def corrupt(why: str) -> PrunekitError:
        return PrunekitError(f"{what} {path} is corrupt or not a safetensors file ({why})")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise corrupt(f"header length {n} exceeds the file ({size} bytes) or {MAX_HEADER_BYTES:,} bytes")
        raw = f.read(n)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise corrupt(f"header is not JSON: {type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise corrupt("header is not a JSON object")
    data_bytes = size - 8 - n
    out: dict[str, TensorInfo] = {}
    spans = []
    for name, info in doc.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and info.get("dtype") in DTYPES and isinstance(info.get("shape"), list)
                and len(info["shape"]) <= limits.MAX_TENSOR_DIMS
                and all(limits.bounded_int(s, 0, 1 << 40) for s in info["shape"])
                and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
                and all(limits.is_int(o) for o in info["data_offsets"])):
            raise corrupt(f"bad header entry for tensor '{name}'")
        shape = tuple(info["shape"])
        numel = 1
        for s in shape:
            numel *= s
        begin, end = info["data_offsets"]
        itemsize = torch.empty(0, dtype=DTYPES[info["dtype"]]).element_size()
        if not 0 <= begin <= end <= data_bytes or end - begin != numel * itemsize:
            raise corrupt(f"tensor '{name}' {info['dtype']}{list(shape)} claims bytes {begin}..{end} of a "
                          f"{data_bytes}-byte data section")
        spans.append((begin, end))
        out[name] = TensorInfo(info["dtype"], shape)
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise corrupt("tensor byte ranges overlap or leave gaps")
        pos = end
    if pos != data_bytes:
        raise corrupt(f"the tensors cover {pos} of {data_bytes} data bytes")
    return out


def check_model_doc(doc: dict[str, Any], where: str) -> None:
    """Bounds on every size-like field of a ``model.json`` document (already parsed by ``read_spec``)."""
    limits.check_tree(doc, where)
    limits.check_arch(doc.get("arch"), where)
    limits.check_kwargs(doc.get("kwargs", {}), where)
    limits.check_class_names(doc.get("class_names"), where)
    limits.check_layers(doc.get("layers", {}), where)
    limits.check_tensor_shapes(doc.get("tensors", {}), where)
    extra = doc.get("extra") or {}
    if isinstance(extra, dict):
        limits.check_pruning_plan(extra.get("pruning"), where)


_META_UNSUPPORTED = (NotImplementedError, RuntimeError)  # e.g. "Cannot copy out of meta tensor", .item() on meta


def on_meta() -> bool:
    return torch.empty(0).device.type == "meta"


class _SkipRandomInit(TorchFunctionMode):
    """On meta tensors, random initialisation is a no-op; skipping it avoids torch's Python reference
    kernels for ``normal_`` on meta, whose first use imports torch._dynamo (over a second)."""

    NAMES = frozenset({"normal_", "uniform_", "random_", "exponential_", "geometric_", "log_normal_", "cauchy_",
                       "bernoulli_", "erfinv_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.NAMES:
            t = args[0] if args else kwargs.get("tensor")  # nn.init.* pass everything by keyword
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


def meta_build(arch: str, kwargs: dict[str, Any], where: str) -> nn.Module | None:
    """The architecture on the ``meta`` device, or None when its builder cannot run there."""
    from ._registry import create_model

    try:
        with torch.device("meta"), _SkipRandomInit():
            return create_model(arch, **kwargs)
    except PrunekitError:
        raise
    except _META_UNSUPPORTED:
        return None
    except Exception as e:  # the builder refused these arguments (TypeError, ValueError, AssertionError ...)
        msg = " ".join(str(e).split())[:200]
        raise PrunekitError(f"{where}: cannot build '{arch}' with these kwargs ({type(e).__name__}: {msg})") from None


def check_build(arch: str, kwargs: dict[str, Any]) -> None:
    """Before a real build: bounded arguments, and parameters that fit in memory (counted on ``meta``)."""
    limits.check_kwargs(kwargs, arch)
    model = meta_build(arch, kwargs, arch)
    if model is not None:
        # the parameters, plus as much again for initialisation temporaries
        require(2 * state_bytes(model), f"building '{arch}' ({sum(p.numel() for p in model.parameters()):,} "
                                        "parameters)", "check the model's width, classes and other arguments")


def meta_architecture(spec, doc: dict[str, Any], header: dict[str, TensorInfo], where: str) -> nn.Module | None:
    """``spec``'s architecture on ``meta``, resized like ``doc['layers']`` and the header's plain tensors."""
    from .serialization import _resize_plain_tensors, apply_layer_shapes

    model = meta_build(spec.arch, spec.kwargs, where)
    if model is None:
        return None
    try:
        apply_layer_shapes(model, doc.get("layers", {}))
    except PrunekitError:
        raise
    except (ValueError, TypeError) as e:  # a module constructor refusing the recorded sizes
        raise PrunekitError(f"{where}: 'layers' cannot be built ({type(e).__name__}: {e})"[:300]) from None
    fake = {k: torch.empty(t.shape, dtype=DTYPES[t.dtype], device="meta") for k, t in header.items()}
    _resize_plain_tensors(model, fake, doc.get("tensors", {}))
    return model


def compare_with_header(model: nn.Module, header: Mapping[str, Any], weights: Path, arch: str) -> None:
    """Every tensor the architecture expects is in the file, with its shape and dtype, and nothing else.

    ``header``: name -> anything with ``shape`` and ``dtype`` (a safetensors header's :class:`TensorInfo`, whose
    dtype is the file's name for it, or the loaded tensors themselves)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in header]
    extra = [k for k in header if k not in expected]
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise PrunekitError(f"{weights} does not match model.json ({arch}): {what}")
    for k, v in expected.items():
        got = header[k]
        if tuple(got.shape) != tuple(v.shape):
            raise PrunekitError(f"{weights} does not match model.json: '{k}' has shape {list(got.shape)}, the "
                                f"architecture expects {list(v.shape)}")
        dtype = DTYPES[got.dtype] if isinstance(got.dtype, str) else got.dtype
        if dtype != v.dtype:
            raise PrunekitError(f"{weights} does not match model.json: '{k}' is {DTYPE_NAMES.get(dtype, dtype)}, "
                                f"the architecture expects {DTYPE_NAMES.get(v.dtype, str(v.dtype))}")


def validate_model_dir(directory: Path, spec, doc: dict[str, Any]) -> Activations | None:
    """Steps 1-5 of the module docstring. Returns the per-image activation estimate (None: not on meta)."""
    from .serialization import MODEL_JSON, WEIGHTS, _check_input_channels

    where = str(directory / MODEL_JSON)
    check_model_doc(doc, where)
    header = read_header(directory / WEIGHTS)
    model = meta_architecture(spec, doc, header, where)
    if model is None:
        return None
    compare_with_header(model, header, directory / WEIGHTS, spec.arch)
    _check_input_channels(model, spec, directory / MODEL_JSON)
    shape = (spec.input.channels, *spec.input.size)
    acts = activations(model, shape)
    # building + the loaded weights (two copies of the parameters, a third while initialising), and every
    # activation of one image kept at once (shape propagation in `plan`, profiling in `summary`)
    need = 3 * acts.params + acts.input + acts.total
    require(need, f"{directory}: loading the model and running one {'x'.join(map(str, shape))} input "
                  f"({human_bytes(acts.params)} of weights)", "the input size or the layer sizes in model.json "
                                                              "are too large for this machine")
    return acts
