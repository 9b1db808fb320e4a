"""Arguments and helpers shared by CLI commands.

Options that set a run-config key are declared with :func:`config_flag`: their type, limits and choices come
from the config schema (so ``--criterion`` lists every registered criterion, ``--final-sparsity 1`` is refused
with the field's own range), and :func:`run_config` turns the parsed flags (plus ``--config`` and ``--set``)
into one validated :class:`~prunekit.config.RunConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from ..errors import PrunekitError

CONFIG_DEST = "config:"  # an option declared with config_flag stores its value under "config:<key>"


def _field(key: str) -> tuple[Any, dict[str, Any]]:
    """(type hint, metadata) of a dotted run-config key."""
    from ..config import RunConfig

    cls: Any = RunConfig
    parts = key.split(".")
    for i, name in enumerate(parts):
        hints = typing.get_type_hints(cls)
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        t = hints[name]
        if i == len(parts) - 1:
            return t, dict(f.metadata)
        members = [t] if dataclasses.is_dataclass(t) else [a for a in typing.get_args(t)
                                                           if dataclasses.is_dataclass(a)]
        cls = members[0]
    raise KeyError(key)  # pragma: no cover


def _scalar(t: Any) -> Any:
    args = [a for a in typing.get_args(t) if a is not type(None)] or [t]
    for a in args:
        if a in (int, float, str, bool):
            return a
    return str


def config_flag(p: argparse.ArgumentParser | Any, flag: str, key: str, help: str = "", **kw: Any) -> None:
    """An option that sets run-config ``key``; its type, limits, choices and default come from the schema."""
    from ..schema import choices_of

    t, meta = _field(key)
    scalar = _scalar(t)
    options = choices_of(meta)
    if scalar in (int, float):
        limits = {k: meta[k] for k in ("lo", "hi", "lo_open", "hi_open") if k in meta}
        kw.setdefault("type", number(flag, scalar is int, **limits))
    if options is not None:
        kw.setdefault("choices", options)
    if scalar is bool:
        kw.setdefault("action", argparse.BooleanOptionalAction)
    elif options is None:
        kw.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
    doc = help or meta.get("doc", "")
    p.add_argument(flag, dest=CONFIG_DEST + key, default=None, help=f"{doc} (config: {key})", **kw)


def flag_value(args: argparse.Namespace, key: str) -> Any:
    """The value given for the option of config ``key`` (None if not given)."""
    return getattr(args, CONFIG_DEST + key, None)


def run_config(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    """The run config: ``--config`` YAML, then the config flags that were given, then ``--set`` overrides."""
    from ..config import apply_overrides, parse_config, read_yaml, set_path

    d = read_yaml(args.config) if getattr(args, "config", None) else {}
    given = {k[len(CONFIG_DEST):]: v for k, v in vars(args).items() if k.startswith(CONFIG_DEST) and v is not None}
    for key, v in {**given, **{k: v for k, v in (extra or {}).items() if v is not None}}.items():
        set_path(d, key, v)
    return parse_config(apply_overrides(d, list(getattr(args, "set", []) or [])))


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="start from a run config (see docs/config.md); flags override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. train.lr=0.1 (repeatable)")


def add_budget_args(p: argparse.ArgumentParser | Any) -> None:
    """--budget and how it is measured and searched (prune, plan, sensitivity)."""
    config_flag(p, "--budget", "prune.budget", help="e.g. macs=0.25x, params=1.2M, latency_ms=0.5x (x: relative to "
                "the dense model); replaces --final-sparsity: a search chooses each layer's sparsity")
    config_flag(p, "--budget-runtime", "prune.budget_runtime")
    config_flag(p, "--budget-batch", "prune.budget_batch")
    config_flag(p, "--budget-threads", "prune.budget_threads")
    config_flag(p, "--budget-allocation", "prune.budget_allocation")
    config_flag(p, "--search-candidates", "prune.search_candidates")
    config_flag(p, "--search-floor", "prune.search_floor")
    config_flag(p, "--search-finetune-steps", "prune.search_finetune_steps")


def add_data_args(p: argparse.ArgumentParser) -> None:
    config_flag(p, "--data", "data.name", help="dataset (default: bundled)")
    config_flag(p, "--data-dir", "data.root", help="dataset directory: Fashion-MNIST IDX files (also found via "
                "$PRUNEKIT_DATA or /usr/share/datasets/fashion-mnist) or an ImageFolder tree", metavar="DIR")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    config_flag(p, "--device", "device", help="auto (CUDA if available), cpu, cuda, cuda:N")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def print_json(obj: Any) -> None:
    from ..io import _finite, _json_default

    sys.stdout.write(json.dumps(_finite(obj), indent=2, default=_json_default) + "\n")


# Output directories this command created; removed again if it fails on a user error (no half-made runs left).
CREATED_DIRS: list[Path] = []


def fresh_output(out: str | Path, *, resume: bool = False, overwrite: bool = False, marker: str = "model") -> Path:
    """Check an output directory before any work: writable, and not holding a previous result."""
    from ..io import check_writable_dir

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrunekitError(f"--out {out} exists and is not a directory")
    if not out.exists():
        CREATED_DIRS.append(out)
    if (out / marker).exists() and not (resume or overwrite):
        raise PrunekitError(f"{out} already holds a result ({out / marker}); use --resume to continue it, "
                            "--overwrite to replace it, or choose another --out")
    return check_writable_dir(out, "output directory")


def number(flag: str, integer: bool = False, **limits: Any):
    """An argparse type for a numeric option that is not a config key (limits as in the config schema)."""
    from ..schema import check_number

    def conv(s: str) -> int | float:
        try:
            v = int(s) if integer else float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {'an integer' if integer else 'a number'}, got '{s}'") \
                from None
        try:
            return check_number(flag, v, integer, limits)
        except PrunekitError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return conv


def positive_int(flag: str, allow_zero: bool = False):
    return number(flag, integer=True, lo=0, lo_open=not allow_zero)


def positive_float(flag: str):
    return number(flag, lo=0, lo_open=True)


def fraction(flag: str):
    return number(flag, lo=0, hi=1, hi_open=True)


def image_side(name: str):
    """A positive image side in pixels, at most the input-size limit of model files (4096)."""
    from ..models.limits import MAX_INPUT_SIDE

    base = positive_int(name)

    def conv(s: str) -> int:
        v = base(s)
        if v > MAX_INPUT_SIDE:
            raise argparse.ArgumentTypeError(f"{name} must be at most {MAX_INPUT_SIDE}, got {s}")
        return v

    return conv


def image_shape(loaded, image_size: int | None) -> tuple[int, int, int]:
    return loaded.input_shape if not image_size else (loaded.spec.input.channels, image_size, image_size)
