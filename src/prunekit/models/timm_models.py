"""``timm:NAME`` models: any timm architecture, built with random weights, and its pretrained input settings.

timm is optional: it is imported inside these functions only, and a ``timm:`` reference without it installed
raises a one-line :class:`~prunekit.errors.PrunekitError`. Weights are never downloaded: ``pretrained=True``
is refused; import a weights file with ``prunekit import --from timm FILE --arch timm:NAME``.

>>> m = create_timm("resnet18", num_classes=10)          # doctest: +SKIP
>>> timm_default_input("efficientnet_b0")["size"]        # doctest: +SKIP
[224, 224]
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from ..errors import PrunekitError, closest

TIMM_PREFIX = "timm:"


def timm_module(ref: str = "timm:<name>"):
    """``import timm``, or a one-line error naming the reference that needs it."""
    try:
        import timm
    except ImportError:
        raise PrunekitError(f"{ref} needs timm, which is not installed (pip install timm)") from None
    return timm


@functools.lru_cache(maxsize=1)
def _names() -> frozenset[str]:
    return frozenset(timm_module().list_models())


def check_timm_name(name: str, where: str = "") -> None:
    """Raise ``PrunekitError`` unless timm is installed and knows the architecture ``name``."""
    timm = timm_module(f"{where}: {TIMM_PREFIX}{name}" if where else TIMM_PREFIX + name)
    if name not in _names() and not (name and timm.is_model(name)):  # deprecated names, name.pretrained_tag
        prefix = f"{where}: " if where else ""
        raise PrunekitError(f"{prefix}unknown timm model '{name}'{closest(name, _names())} (timm.list_models() "
                            "lists the architectures)")


def create_timm(name: str, in_channels: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``; ``in_channels`` is timm's ``in_chans``."""
    check_timm_name(name)
    timm = timm_module()
    if kwargs.pop("pretrained", False):
        raise PrunekitError(f"timm:{name}: pretrained weights are not downloaded; import a weights file with "
                            f"`prunekit import --from timm FILE --arch timm:{name}`")
    if in_channels is not None:
        if not (isinstance(in_channels, int) and in_channels >= 1):
            raise PrunekitError(f"in_channels must be a positive integer, got {in_channels!r}")
        kwargs["in_chans"] = in_channels
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunekitError(f"timm:{name}: cannot build it with {kwargs}: {first}") from None


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained configuration of ``name`` (input size, crop, mean/std, classifier); {} if none."""
    timm = timm_module(TIMM_PREFIX + name)
    try:
        pc = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - timm raises various errors for names without a default config
        pc = None
    if pc is None:
        return {}
    return pc.to_dict() if hasattr(pc, "to_dict") else dict(pc)


def timm_default_input(name: str) -> dict[str, Any]:
    """The input a timm model expects: size and channels from its ``input_size``, mean/std, and the resize of
    the shorter side before the center crop (``size / crop_pct``)."""
    check_timm_name(name)
    pc = pretrained_cfg(name)
    c, h, w = (pc.get("input_size") or (3, 224, 224))[-3:]
    out: dict[str, Any] = {"size": [int(h), int(w)], "channels": int(c)}
    if pc.get("mean") and pc.get("std") and len(pc["mean"]) == c:
        out["mean"], out["std"] = [float(v) for v in pc["mean"]], [float(v) for v in pc["std"]]
    crop = pc.get("crop_pct")
    if isinstance(crop, (int, float)) and 0 < crop <= 1:
        out["resize"] = int(round(min(h, w) / crop))
    return out
