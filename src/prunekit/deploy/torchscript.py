"""TorchScript (``.ts``) and torch.export ExportedProgram (``.pt2``) export, each verified after reloading.

TorchScript uses ``torch.jit.trace`` (deprecated in recent PyTorch but still the format C++/LibTorch
deployments load); the metadata JSON is embedded with ``_extra_files``. The ExportedProgram has a symbolic
batch dimension and embeds the same JSON through ``extra_files``. Both are serialized in memory, reloaded
from those bytes and compared to the eager model at batch 1 and 3 before anything is written.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings

import torch
from torch import nn

from ..errors import PrunekitError
from .metadata import EXTRA_FILE, DeployMeta, write_model_file
from .onnx import check_close, verification_inputs


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0] if s else ''}"[:300]


def _verify(model: nn.Module, reloaded, input_shape, what: str) -> dict:
    diffs = {}
    with torch.no_grad():
        for x in verification_inputs(input_shape):
            diffs[len(x)] = check_close(model(x).numpy(), reloaded(x).detach().numpy(), what)
    return {"max_abs_diff": max(diffs.values()), "batches": sorted(diffs)}


def torchscript_bytes(model: nn.Module, meta: DeployMeta, verify: bool = True) -> tuple[bytes, dict]:
    model = model.eval().cpu()
    example = torch.randn(2, *meta.input_shape)
    try:
        with _no_warnings(), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
    except Exception as e:
        raise PrunekitError(f"TorchScript export (torch.jit.trace) failed: {_first_line(e)}") from None
    info: dict = {}
    if verify:
        buf = io.BytesIO()
        with _no_warnings():
            torch.jit.save(traced, buf)
            reloaded = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")
        info["verification"] = _verify(model, reloaded, meta.input_shape, "TorchScript")
    meta.format, meta.opset = "torchscript", None
    meta.info = {**meta.info, **info, "exporter": "torch.jit.trace"}
    buf = io.BytesIO()
    with _no_warnings():
        torch.jit.save(traced, buf, _extra_files={EXTRA_FILE: meta.to_json()})
    return buf.getvalue(), info


def exported_program_bytes(model: nn.Module, meta: DeployMeta, verify: bool = True) -> tuple[bytes, dict]:
    model = model.eval().cpu()
    example = torch.randn(2, *meta.input_shape)  # batch 2 keeps the batch dimension symbolic
    try:
        with _no_warnings():
            ep = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception as e:
        raise PrunekitError(f"torch.export failed: {_first_line(e)}") from None
    info: dict = {}
    if verify:
        buf = io.BytesIO()
        with _no_warnings():
            torch.export.save(ep, buf)
            reloaded = torch.export.load(io.BytesIO(buf.getvalue())).module()
        info["verification"] = _verify(model, reloaded, meta.input_shape, "ExportedProgram")
    meta.format, meta.opset = "exported-program", None
    meta.info = {**meta.info, **info, "exporter": "torch.export"}
    buf = io.BytesIO()
    with _no_warnings():
        torch.export.save(ep, buf, extra_files={EXTRA_FILE: meta.to_json()})
    return buf.getvalue(), info


def export_torchscript(model: nn.Module, meta: DeployMeta, path: str | os.PathLike, verify: bool = True) -> dict:
    """Trace, verify the reloaded archive, then write ``path`` and ``path.json`` atomically."""
    t0 = time.perf_counter()
    data, info = torchscript_bytes(model, meta, verify)
    side = write_model_file(path, data, meta)
    return {"format": "torchscript", "path": str(path), "sidecar": str(side), "bytes": len(data),
            "exporter": "torch.jit.trace", "max_abs_diff": info.get("verification", {}).get("max_abs_diff"),
            "verified_batches": info.get("verification", {}).get("batches", []), "seconds": time.perf_counter() - t0}


def export_exported_program(model: nn.Module, meta: DeployMeta, path: str | os.PathLike, verify: bool = True) -> dict:
    """torch.export with a dynamic batch, verify the reloaded program, then write atomically."""
    t0 = time.perf_counter()
    data, info = exported_program_bytes(model, meta, verify)
    side = write_model_file(path, data, meta)
    return {"format": "exported-program", "path": str(path), "sidecar": str(side), "bytes": len(data),
            "exporter": "torch.export", "max_abs_diff": info.get("verification", {}).get("max_abs_diff"),
            "verified_batches": info.get("verification", {}).get("batches", []), "seconds": time.perf_counter() - t0}


def load_torchscript(path: str | os.PathLike):
    """(module, metadata JSON or None). TorchScript archives hold TorchScript code, not pickled Python."""
    extra = {EXTRA_FILE: ""}
    try:
        with _no_warnings():
            mod = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:
        raise PrunekitError(f"{path} is not a readable TorchScript archive ({_first_line(e)})") from None
    text = extra.get(EXTRA_FILE) or None
    return mod.eval(), (text.decode() if isinstance(text, bytes) else text)


def check_pt2_safe(path: str | os.PathLike) -> None:
    """Refuse a ``.pt2`` archive whose loading could unpickle arbitrary objects.

    ``torch.export.load`` falls back to ``torch.load(weights_only=False)`` for pickled payloads (sample inputs,
    weights/constants saved with ``use_pickle``, custom or opaque objects). Archives written by
    ``torch.export.save`` for plain CNNs have none of these beyond sample inputs that load with
    ``weights_only=True``; anything else is rejected before torch sees it.
    """
    import json
    import zipfile

    from ..io import require_safe_torch

    require_safe_torch("ExportedProgram", path)
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                low = name.lower()
                if low.endswith((".pt", ".pkl", ".pickle")):
                    try:
                        with _no_warnings():
                            torch.load(io.BytesIO(z.read(name)), map_location="cpu", weights_only=True)
                    except Exception:
                        raise PrunekitError(f"{path}: refusing to load, the archive member {name} holds pickled "
                                            "objects that are not plain tensors") from None
                elif "/custom_obj" in low or "/opaque_obj" in low:
                    raise PrunekitError(f"{path}: refusing to load, the archive holds pickled custom objects ({name})")
                elif low.endswith("_config.json") and ("/weights/" in low or "/constants/" in low):
                    cfg = json.loads(z.read(name)).get("config", {})
                    if any(isinstance(v, dict) and v.get("use_pickle") for v in cfg.values()):
                        raise PrunekitError(f"{path}: refusing to load, {name} lists pickled tensors")
    except zipfile.BadZipFile:
        raise PrunekitError(f"{path} is not a readable ExportedProgram (not a zip archive; truncated?)") from None
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise PrunekitError(f"{path} is not a readable ExportedProgram ({_first_line(e)})") from None


def load_exported_program(path: str | os.PathLike):
    """(callable module, metadata JSON or None) of a ``.pt2`` ExportedProgram (checked for pickles first)."""
    check_pt2_safe(path)
    extra = {EXTRA_FILE: ""}
    try:
        with _no_warnings():
            ep = torch.export.load(str(path), extra_files=extra)
            mod = ep.module()
    except Exception as e:
        raise PrunekitError(f"{path} is not a readable ExportedProgram ({_first_line(e)})") from None
    text = extra.get(EXTRA_FILE) or None
    return mod, (text.decode() if isinstance(text, bytes) else text)
