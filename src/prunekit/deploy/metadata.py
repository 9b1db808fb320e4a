"""What a deployed model carries so that it can be used without its model directory.

Every exported file (ONNX fp32/int8, TorchScript, ExportedProgram) embeds the same JSON document —
architecture, input size/channels, mean/std, resize, class names, prunekit version, precision — and a copy
is written next to it as ``PATH + ".json"`` (the *sidecar*, with the file's SHA-256 so a stale sidecar is
never trusted). In ONNX the document lives in ``metadata_props`` (key ``prunekit``, plus one readable key per
field for other tools); in TorchScript and ExportedProgram archives it is the extra file ``prunekit.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import PrunekitError
from ..models import InputSpec, ModelSpec

META_FORMAT = "prunekit-deploy"
META_VERSION = 1
META_KEY = "prunekit"  # ONNX metadata_props key holding the whole JSON document
EXTRA_FILE = "prunekit.json"  # TorchScript / ExportedProgram extra file
SIDECAR_SUFFIX = ".json"
FORMATS = ("onnx", "torchscript", "exported-program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2"}


@dataclass
class DeployMeta:
    """Everything inference needs besides the graph and weights."""

    arch: str
    kwargs: dict[str, Any]
    input: InputSpec
    class_names: list[str] | None
    format: str = "onnx"  # onnx | torchscript | exported-program
    precision: str = "fp32"  # fp32 | int8
    prunekit_version: str = __version__
    opset: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # export/quantization details (exporter, verification...)

    @classmethod
    def from_spec(cls, spec: ModelSpec, fmt: str, **kw: Any) -> DeployMeta:
        return cls(spec.arch, dict(spec.kwargs), InputSpec(**asdict(spec.input)).validate(),
                   list(spec.class_names) if spec.class_names is not None else None, fmt, **kw)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input.channels, *self.input.size)

    def spec(self) -> ModelSpec:
        """A :class:`ModelSpec` view (for the data helpers that adapt a dataset to a model's input)."""
        return ModelSpec(self.arch, dict(self.kwargs), self.input, self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {"format_name": META_FORMAT, "version": META_VERSION, "prunekit_version": self.prunekit_version,
                "arch": self.arch, "kwargs": self.kwargs, "input": asdict(self.input),
                "class_names": self.class_names, "format": self.format, "precision": self.precision,
                "opset": self.opset, "info": self.info}

    def to_json(self) -> str:
        from ..io import _finite, _json_default

        return json.dumps(_finite(self.to_dict()), sort_keys=True, default=_json_default)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> DeployMeta:
        if not isinstance(d, dict) or d.get("format_name") != META_FORMAT:
            raise PrunekitError(f"{where}: not prunekit deployment metadata")
        if d.get("version") != META_VERSION:
            raise PrunekitError(f"{where}: unsupported metadata version {d.get('version')!r} (this prunekit reads "
                                f"{META_VERSION})")
        check_deploy_doc(d, where)
        try:
            try:
                inp = InputSpec.from_dict(dict(d["input"]))
            except PrunekitError as e:
                raise PrunekitError(f"{where}: {e}") from None
            names = d.get("class_names")
            return cls(str(d["arch"]), dict(d.get("kwargs") or {}), inp, names, str(d.get("format", "onnx")),
                       str(d.get("precision", "fp32")), str(d.get("prunekit_version", "?")), d.get("opset"),
                       dict(d.get("info") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise PrunekitError(f"{where}: incomplete prunekit metadata ({type(e).__name__}: {e})") from None

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> DeployMeta:
        from ..io import MAX_JSON_BYTES

        if len(text) > MAX_JSON_BYTES:
            raise PrunekitError(f"{where}: prunekit metadata is larger than {MAX_JSON_BYTES >> 20} MiB")
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PrunekitError(f"{where}: prunekit metadata is not valid JSON ({e})") from None
        except RecursionError:
            raise PrunekitError(f"{where}: prunekit metadata is nested too deeply") from None
        return cls.from_dict(d, where)

    def onnx_props(self) -> dict[str, str]:
        """``metadata_props`` entries: the whole document plus readable per-field keys for other tools."""
        inp = self.input
        return {META_KEY: self.to_json(), "prunekit_version": self.prunekit_version, "arch": self.arch,
                "precision": self.precision, "class_names": json.dumps(self.class_names),
                "input_channels": str(inp.channels), "input_size": json.dumps(inp.size),
                "mean": json.dumps(inp.mean), "std": json.dumps(inp.std), "resize": json.dumps(inp.resize)}


def check_deploy_doc(d: dict[str, Any], where: str) -> None:
    """Bounds on the size-like fields of deployment metadata (see :mod:`prunekit.models.limits`)."""
    from ..models import limits

    limits.check_tree(d, where)
    limits.check_arch(d.get("arch"), where)
    limits.check_kwargs(d.get("kwargs") or {}, where)
    limits.check_class_names(d.get("class_names"), where)
    if not isinstance(d.get("input"), dict):
        raise PrunekitError(f"{where}: 'input' must be a mapping")
    opset = d.get("opset")
    if opset is not None and not limits.bounded_int(opset, 1, 100):
        raise PrunekitError(f"{where}: opset must be an integer in 1..100 or null, got {opset!r}"[:300])
    for key in ("format", "precision", "prunekit_version"):
        v = d.get(key)
        if v is not None and not (isinstance(v, str) and len(v) <= limits.MAX_ARCH_CHARS):
            raise PrunekitError(f"{where}: {key} must be a short string, got {v!r}"[:300])
    if not isinstance(d.get("info") or {}, dict):
        raise PrunekitError(f"{where}: 'info' must be a mapping")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def sidecar_doc(meta: DeployMeta, data: bytes, path: str | os.PathLike) -> dict[str, Any]:
    return {**meta.to_dict(), "file": Path(path).name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_model_file(path: str | os.PathLike, data: bytes, meta: DeployMeta) -> Path:
    """Write a model file and its sidecar, each atomically (the model first: a sidecar never describes a
    file that is not there; a stale sidecar is recognised by its SHA-256)."""
    from ..io import atomic_write, write_json

    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(data)
    side = sidecar_path(path)
    write_json(side, sidecar_doc(meta, data, path))
    return side


def read_sidecar(path: str | os.PathLike) -> DeployMeta | None:
    """The sidecar's metadata if it exists *and* matches the file's SHA-256, else None."""
    from ..io import read_json

    side = sidecar_path(path)
    if not side.is_file():
        return None
    doc = read_json(side, "metadata sidecar")
    if not isinstance(doc, dict) or doc.get("sha256") != sha256_file(path):
        return None
    return DeployMeta.from_dict(doc, str(side))


def check_output(out: str | os.PathLike, overwrite: bool, what: str = "output") -> Path:
    """Refuse to replace an existing file unless asked; check that the directory can be written (before work)."""
    from ..io import check_writable_dir

    out = Path(out)
    if out.is_dir():
        raise PrunekitError(f"{what} {out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise PrunekitError(f"{what} {out} already exists; use --overwrite to replace it or choose another path")
    check_writable_dir(out.parent if str(out.parent) else Path("."), "output directory")
    return out
