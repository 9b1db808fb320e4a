"""Deployment: frozen export (ONNX, TorchScript, ExportedProgram) verified against PyTorch, and int8 ONNX.

>>> from prunekit import load                                         # doctest: +SKIP
>>> from prunekit.deploy import export_model                          # doctest: +SKIP
>>> export_model(load("runs/shrunk"), "onnx", "model.onnx")["max_abs_diff"] < 1e-4   # doctest: +SKIP
True
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..errors import unknown
from .artifact import OBJECTIVES, Candidate, Choice, choose, choose_confirmed
from .cpu import ACTIVATION_TYPES, CPU_CLASSES, WEIGHT_TYPES, CpuInfo, QuantSettings, detect, settings_for
from .metadata import FORMATS, SUFFIXES, DeployMeta, read_sidecar, sha256_file, sidecar_path
from .onnx import DEFAULT_OPSET, EXPORTERS, export_onnx, load_onnx_proto, onnx_meta, ort_session
from .quantize import METHODS, Int8Builder, calibration_batches, default_int8_path, quantize_onnx
from .torchscript import export_exported_program, export_torchscript, load_exported_program, load_torchscript

quantize = quantize_onnx  # the public verb (prunekit.quantize)

__all__ = [
    "ACTIVATION_TYPES", "CPU_CLASSES", "DEFAULT_OPSET", "EXPORTERS", "FORMATS", "METHODS", "OBJECTIVES", "SUFFIXES",
    "WEIGHT_TYPES", "Candidate", "Choice", "CpuInfo", "DeployMeta", "Int8Builder", "QuantSettings",
    "calibration_batches", "choose", "choose_confirmed", "default_int8_path", "deployable", "export", "export_exported_program", "export_model", "export_onnx",
    "export_torchscript", "format_for", "load_exported_program", "load_onnx_proto", "load_torchscript",
    "onnx_meta", "ort_session", "quantize", "quantize_onnx", "read_sidecar", "settings_for", "sha256_file", "sidecar_path", "detect",
]


def deployable(loaded) -> tuple[nn.Module, str | None]:
    """The plain ``nn.Module`` to deploy for a :class:`prunekit.saved.Loaded`, and a note on what was done.

    A model saved with pruning masks computes ``masked(weights)``; exporting its stripped copy would silently
    change the function (pruned channels would come back). We export its *shrunk* form instead: the pruned
    channels physically removed, which is the same function (surgery verifies it to 1e-4) and is smaller.
    """
    from ..pruning import strip

    if loaded.pruner is not None:
        res = loaded.pruner.shrink(check=True)
        note = (f"the model carries pruning masks: exporting its shrunk form ({res.channels_removed} pruned "
                f"channels removed, params {res.params_before:,} -> {res.params_after:,}; surgery check max abs "
                f"diff {res.max_abs_diff:.2e}); save it with `prunekit surgery` to keep that model")
        return res.model.eval().cpu(), note
    return strip(loaded.model, copy=True).eval().cpu(), None


def format_for(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The export format: given explicitly, else from the file suffix (.onnx, .ts, .pt2), else ONNX."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise unknown("export format", fmt, FORMATS)
        return fmt
    suffix = Path(path).suffix.lower()
    for f, s in SUFFIXES.items():
        if suffix == s or (f == "torchscript" and suffix in (".torchscript", ".jit")):
            return f
    return "onnx"


def export(model, out: str | os.PathLike, format: str | None = None, *, spec=None, opset: int = DEFAULT_OPSET,
           exporter: str = "auto", verify: bool = True) -> dict:
    """Export to ``out`` (ONNX, TorchScript ``.ts`` or ExportedProgram ``.pt2``; ``format`` defaults to the
    suffix), verified against PyTorch, with the metadata inference needs embedded and in ``out + ".json"``.

    ``model``: a model directory, a loaded model (:func:`prunekit.load`), or an ``nn.Module`` with its
    ``spec`` (:class:`prunekit.models.ModelSpec`: input size, normalisation, class names). Masked models are
    exported shrunk."""
    if isinstance(model, nn.Module):
        if spec is None:
            from ..errors import PrunekitError

            raise PrunekitError("export(module, out): pass spec=ModelSpec(...) (input size, mean/std, classes)")
        from types import SimpleNamespace

        model = SimpleNamespace(model=model, spec=spec, pruner=None)
    elif isinstance(model, (str, os.PathLike)):
        from ..saved import resolve

        model = resolve(model)
    return export_model(model, format_for(out, format), out, opset=opset, exporter=exporter, verify=verify)


def export_model(loaded, fmt: str, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET, exporter: str = "auto",
                 verify: bool = True) -> dict:
    """Export a loaded model directory (masks -> shrunk) to ``out``; verified, atomic, metadata embedded."""
    if fmt not in FORMATS:
        raise unknown("export format", fmt, FORMATS)
    model, note = deployable(loaded)
    meta = DeployMeta.from_spec(loaded.spec, fmt)
    from ..memory import check_inference

    check_inference(model, meta.input_shape, 3, "export (verified at batch 1 and 3)")  # before tracing
    if loaded.spec.class_names is None:
        import torch

        with torch.no_grad():
            n = model(torch.zeros(1, *meta.input_shape)).shape[-1]
        if n == 1000:
            from ..data.classes import imagenet_classes

            meta.class_names = imagenet_classes()
    if note:
        meta.info["shrunk_from_masks"] = True
    if fmt == "onnx":
        res = export_onnx(model, meta, out, opset=opset, exporter=exporter, verify=verify)
    elif fmt == "torchscript":
        res = export_torchscript(model, meta, out, verify=verify)
    else:
        res = export_exported_program(model, meta, out, verify=verify)
    if not verify:
        res["max_abs_diff"] = None
    res["note"] = note
    return res

