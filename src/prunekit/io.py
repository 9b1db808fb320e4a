"""Safe, atomic file I/O: JSON, safetensors and torch checkpoints without unpickling foreign code.

All writers go through :func:`atomic_write`: a temporary file in the destination directory, fsync,
then ``os.replace``. A crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import PrunekitError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON, atomically."""
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    with atomic_write(path, "w") as f:
        f.write(text + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


MAX_JSON_BYTES = 64 << 20  # model.json with a million class names is ~30 MB


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON with a one-line error for missing, oversized, too deeply nested or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"{what} not found: {path}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise PrunekitError(f"{what} {path} is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrunekitError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise PrunekitError(f"{what} {path} is nested too deeply") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a flat dict of tensors as safetensors, atomically (shared storage is cloned apart)."""
    from safetensors.torch import save

    seen: dict[int, str] = {}
    flat: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen[ptr] = k
        flat[k] = t.contiguous()
    data = save(flat, metadata=metadata)
    with atomic_write(path, "wb") as f:
        f.write(data)


def load_tensors(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Load a safetensors file; corrupt or truncated files give a one-line error."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises SafetensorError / OSError variants
        raise PrunekitError(f"{what} {path} is corrupt or not a safetensors file ({type(e).__name__}: {e})") from None


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


MIN_TORCH_FOR_LOADING = (2, 6)  # weights_only=True could be bypassed before 2.6 (CVE-2025-32434)


def _torch_version() -> tuple[int, int]:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def require_safe_torch(what: str, path: str | os.PathLike) -> None:
    """Refuse to unpickle anything (even with weights_only=True) under a torch older than 2.6."""
    if _torch_version() < MIN_TORCH_FOR_LOADING:
        raise PrunekitError(f"refusing to load {what} {path} with torch {torch.__version__}: torch.load is only safe "
                            "from torch 2.6 on (CVE-2025-32434); upgrade torch")


def torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)``: refuses arbitrary pickled objects without running them (and refuses
    to load anything with a torch older than 2.6, whose weights_only unpickler could be bypassed)."""
    require_safe_torch(what, path)
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the one-line error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise PrunekitError(
                f"refusing to load {what} {path}: it contains pickled objects that are not plain tensors/containers"
            ) from None
        raise PrunekitError(f"{what} {path} could not be read ({type(e).__name__}: {msg})") from None


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check that files can be written there (before any work starts)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrunekitError(f"cannot create {what} {path}: {e.strerror}") from None
    if not path.is_dir():
        raise PrunekitError(f"{what} {path} exists and is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PrunekitError(f"{what} {path} is not writable: {e.strerror}") from None
    return path
