"""Typed configuration in one place: dataclass fields that carry their documentation, limits and choices.

Every config object of prunekit (``TrainConfig``, ``PruningConfig``, ``ScheduleSpec``, the run config's sections)
declares its fields with :func:`F`. :func:`build` turns a mapping (YAML, ``--set``, a saved JSON document) into
such an object and :func:`validate` re-checks one built in Python; both apply the same rules, so a limit is
written once. Errors are one line: the dotted key, what it must be, the value, and the closest valid key or
choice.

>>> from dataclasses import dataclass
>>> @dataclass
... class Opt:
...     lr: float = F(0.1, "learning rate", lo=0, lo_open=True, hi=10)
>>> build(Opt, {"lr": 0.5}, "opt").lr
0.5
>>> build(Opt, {"lr": 0}, "opt")
Traceback (most recent call last):
...
prunekit.errors.PrunekitError: opt.lr must be in (0, 10], got 0
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import Any, Literal

from .errors import PrunekitError, closest


def F(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Callable[[], Any] | None = None,
      choices: Iterable[str] | Callable[[], Iterable[str]] | None = None, user: bool = True, **limits: Any) -> Any:
    """A config field with its documentation, numeric limits (``lo``, ``hi``, ``lo_open``, ``hi_open``) and
    choices (a sequence, or a function returning a registry's names so that registered extensions are valid).
    ``user=False`` marks a field that the run sets itself (not a key of run configs)."""
    meta = {"doc": doc, "choices": choices, "user": user, **limits}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(meta: dict[str, Any]) -> list[str] | None:
    c = meta.get("choices")
    if c is None:
        return None
    return list(c() if callable(c) else c)


def field_meta(cls: type, name: str) -> dict[str, Any]:
    """The metadata of one field (to derive a command-line option from it)."""
    return dict({f.name: f for f in dataclasses.fields(cls)}[name].metadata)


def type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(t))
    if origin is list:
        return "a list"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(t, getattr(t, "__name__", str(t)))


def _range(meta: dict[str, Any]) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return f"in {'(' if meta.get('lo_open') else '['}{lo}, {hi}{')' if meta.get('hi_open') else ']'}"
    if lo is not None:
        return f"{'>' if meta.get('lo_open') else '>='} {lo}"
    return f"{'<' if meta.get('hi_open') else '<='} {hi}"


def check_number(path: str, v: Any, integer: bool, meta: dict[str, Any]) -> int | float:
    """A finite number (an integer if ``integer``) within the field's limits."""
    what = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PrunekitError(f"{path} must be {what}, got {v!r}")
    if not math.isfinite(v):
        raise PrunekitError(f"{path} must be finite, got {v!r}")
    if integer and not float(v).is_integer():
        raise PrunekitError(f"{path} must be an integer, got {v!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and (v < lo or (meta.get("lo_open") and v == lo))) or (
            hi is not None and (v > hi or (meta.get("hi_open") and v == hi))):
        raise PrunekitError(f"{path} must be {_range(meta)}, got {v!r}")
    return int(v) if integer else float(v)


_PLAIN = (int, float, str, bool, list, dict, type(None))


def coerce(path: str, t: Any, v: Any, meta: dict[str, Any] | None = None) -> Any:
    """Check ``v`` against the type hint ``t`` and the field metadata; returns the normalised value."""
    meta = meta or {}
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        if v is None and type(None) in args:
            return None
        classes = [a for a in args if isinstance(a, type) and not dataclasses.is_dataclass(a) and a not in _PLAIN]
        for a in classes:  # an instance of a class member of the union is taken as it is (e.g. a Schedule object)
            if isinstance(v, a):
                return v
        errors = []
        for a in args:
            if a is type(None) or a in classes:
                continue
            try:
                return coerce(path, a, v, meta)
            except PrunekitError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise PrunekitError(f"{path} must be {type_name(t)}, got {v!r}")
    if origin is Literal:
        options = typing.get_args(t)
        if v not in options:
            raise PrunekitError(f"{path} must be one of {', '.join(map(str, options))}, got {v!r}"
                                f"{closest(str(v), map(str, options))}")
        return v
    if dataclasses.is_dataclass(t):
        if isinstance(v, t):
            return validate(v, path)
        return build(t, v, path)
    if t is bool:
        if not isinstance(v, bool):
            raise PrunekitError(f"{path} must be true or false, got {v!r}")
        return v
    if t in (int, float):
        return check_number(path, v, t is int, meta)
    if t is str:
        if not isinstance(v, str):
            raise PrunekitError(f"{path} must be a string, got {v!r}")
        options = choices_of(meta)
        if options is not None and v not in options:
            raise PrunekitError(f"{path} must be one of {', '.join(options)}, got {v!r}{closest(v, options)}")
        return v
    if t is list or origin is list:
        if not isinstance(v, (list, tuple)):
            raise PrunekitError(f"{path} must be a list, got {v!r}")
        args = typing.get_args(t)
        if not args:
            return list(v)
        item_meta = {k: meta[k] for k in ("choices",) if k in meta}
        return [coerce(f"{path}[{i}]", args[0], x, item_meta) for i, x in enumerate(v)]
    if t is dict or origin is dict:
        if not isinstance(v, dict):
            raise PrunekitError(f"{path} must be a mapping, got {v!r}")
        return v
    if isinstance(t, type) and not isinstance(v, t):
        raise PrunekitError(f"{path} must be a {t.__name__}, got {v!r}")
    return v


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def user_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("user", True)}


def build(cls: type, d: Any, path: str = "", *, internal: bool = False) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``d`` (missing keys take their defaults).

    Unknown keys name the closest valid key. ``internal=True`` also accepts fields that users do not set
    (a saved document written by prunekit itself)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise PrunekitError(f"{path or 'config'} must be a mapping, got {d!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)} if internal else user_fields(cls)
    for k in d:
        if k not in fields:
            where = f"{path}." if path else ""
            raise PrunekitError(f"unknown config key '{where}{k}'{closest(str(k), fields)}; valid keys"
                                f"{' under ' + path if path else ''}: {', '.join(fields)}")
    kwargs = {name: coerce(f"{path}.{name}" if path else name, hints[name], d[name], dict(f.metadata))
              for name, f in fields.items() if name in d}
    obj = cls(**kwargs)
    post = getattr(obj, "check", None)
    if callable(post):
        post(path)
    return obj


def validate(obj: Any, path: str = "") -> Any:
    """Check every field of a dataclass instance built in Python (same rules as :func:`build`); normalises
    numbers in place and returns ``obj``."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        p = f"{path}.{f.name}" if path else f.name
        setattr(obj, f.name, coerce(p, hints[f.name], getattr(obj, f.name), dict(f.metadata)))
    post = getattr(obj, "check", None)
    if callable(post):
        post(path)
    return obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``(key, type, default, doc)`` for every user-settable key (generates docs/config.md)."""
    rows = []
    hints = _hints(cls)
    inst = cls()
    for f in user_fields(cls).values():
        key = f"{prefix}{f.name}"
        t = hints[f.name]
        default = getattr(inst, f.name)
        if dataclasses.is_dataclass(t):
            rows += describe(t, key + ".")
            continue
        members = [a for a in typing.get_args(t) if dataclasses.is_dataclass(a)]
        if members and dataclasses.is_dataclass(default):
            rows += describe(members[0], key + ".")
            continue
        tn = type_name(t)
        options = choices_of(dict(f.metadata))
        if options is not None:
            tn = "one of " + ", ".join(repr(o) for o in options)
        rows.append((key, tn, default, f.metadata.get("doc", "")))
    return rows


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config object; objects with ``to_config()`` use it."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "to_config"):
        return obj.to_config()
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
