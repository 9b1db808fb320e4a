"""Upper bounds on every size-like value that a file can claim: ``model.json``, deployment metadata (embedded or
in a sidecar), builder arguments. A file is checked against these before anything is built or allocated.

The caps are far above any real model and far below what would exhaust a machine:

* input side <= 4096 px: ``data.image_size`` in a run config stops at 1024 and ``data.resize`` at 4096;
  high-resolution classifiers use <= 600 px. One 4x4096x4096 float32 input is already 256 MiB.
* input channels <= 4: what images have (gray, gray + alpha, RGB, RGBA); ``data.channels`` stops at 4 too.
* channels / features / groups of one layer <= 65536 (2^16): the widest torchvision CNN layer has 4096
  (VGG's classifier 25088 -> 4096 is in_features 25088 < 2^16); a 2^16 x 2^16 linear layer is 16 GiB.
* classes <= 10^6: ImageNet-21k has 21841; a million classes is a 4 GB classifier at 1024 features.
* any other integer builder argument (depth, width per group, image size, patch size ...) |v| <= 65536, floats
  finite; builder arguments nest at most 8 deep (an architecture described as a list of block specs needs 5)
  and hold at most 1024 items per container.
* JSON documents: <= 64 MiB, <= 32 levels of nesting, <= 4 million values (a million class names fit).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import PrunekitError

MAX_INPUT_SIDE = 4096
MAX_INPUT_CHANNELS = 4
MAX_RESIZE = 4096
MAX_CHANNELS = 1 << 16
MAX_CLASSES = 1_000_000
MAX_NAME_CHARS = 1000
MAX_ARCH_CHARS = 200
MAX_KWARG_INT = 1 << 16
MAX_KWARG_DEPTH = 8
MAX_KWARG_ITEMS = 1024
MAX_TENSOR_DIMS = 8
MAX_JSON_BYTES = 64 << 20
MAX_DEPTH = 32
MAX_NODES = 4_000_000


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def bounded_int(v: Any, lo: int, hi: int) -> bool:
    return is_int(v) and lo <= v <= hi


def check_tree(obj: Any, where: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse documents nested too deeply or holding too many values (also YAML alias bombs: the walk follows
    aliases and stops at ``max_nodes``). Iterative, so it never hits Python's recursion limit itself."""
    stack = [(obj, 1)]
    nodes = 0
    while stack:
        x, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise PrunekitError(f"{where}: too many values (more than {max_nodes:,})")
        if isinstance(x, (dict, list, tuple)):
            if depth > max_depth:
                raise PrunekitError(f"{where}: nested more than {max_depth} levels deep")
            stack.extend((v, depth + 1) for v in (x.values() if isinstance(x, dict) else x))


def check_class_names(names: Any, where: str) -> None:
    if names is None:
        return
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise PrunekitError(f"{where}: 'class_names' must be a list of strings")
    if not 1 <= len(names) <= MAX_CLASSES:
        raise PrunekitError(f"{where}: 'class_names' must hold 1 to {MAX_CLASSES:,} names, got {len(names):,}")
    long = next((n for n in names if len(n) > MAX_NAME_CHARS), None)
    if long is not None:
        raise PrunekitError(f"{where}: class name '{long[:40]}...' is longer than {MAX_NAME_CHARS} characters")


def check_arch(arch: Any, where: str) -> None:
    if not isinstance(arch, str) or not 0 < len(arch) <= MAX_ARCH_CHARS:
        raise PrunekitError(f"{where}: 'arch' must be a string of 1 to {MAX_ARCH_CHARS} characters")


def check_kwargs(kwargs: Any, where: str) -> None:
    """Builder arguments: ``num_classes`` <= 10^6, ``in_channels`` <= 4, other numbers bounded and finite."""
    if not isinstance(kwargs, dict):
        raise PrunekitError(f"{where}: 'kwargs' must be a mapping")

    def walk(key: str, v: Any, depth: int) -> None:
        if depth > MAX_KWARG_DEPTH:
            raise PrunekitError(f"{where}: kwargs.{key} is nested more than {MAX_KWARG_DEPTH} levels deep")
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, int):
            hi = {"num_classes": MAX_CLASSES, "in_channels": MAX_INPUT_CHANNELS}.get(key.rpartition(".")[2])
            if hi is not None:
                if not 1 <= v <= hi:
                    raise PrunekitError(f"{where}: kwargs.{key} must be between 1 and {hi:,}, got {v}")
            elif abs(v) > MAX_KWARG_INT:
                raise PrunekitError(f"{where}: kwargs.{key} is {v}, beyond the limit of +-{MAX_KWARG_INT} for "
                                    "builder arguments")
        elif isinstance(v, float):
            if not math.isfinite(v) or abs(v) > MAX_KWARG_INT:
                raise PrunekitError(f"{where}: kwargs.{key} must be a finite number within +-{MAX_KWARG_INT}, "
                                    f"got {v!r}")
        elif isinstance(v, str):
            if len(v) > MAX_NAME_CHARS:
                raise PrunekitError(f"{where}: kwargs.{key} is a string longer than {MAX_NAME_CHARS} characters")
        elif isinstance(v, (list, tuple, dict)):
            if len(v) > MAX_KWARG_ITEMS:
                raise PrunekitError(f"{where}: kwargs.{key} holds more than {MAX_KWARG_ITEMS} items")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                walk(f"{key}.{k}", x, depth + 1)
        # other objects (a norm_layer class passed by library code) cannot come from a file: the builder judges

    for k, v in kwargs.items():
        walk(str(k), v, 1)


def check_input(size: Any, channels: Any, resize: Any, where: str = "input") -> None:
    """Bounds of an input spec (types and positivity are :meth:`InputSpec.validate`'s job)."""
    if isinstance(size, (list, tuple)) and any(is_int(s) and s > MAX_INPUT_SIDE for s in size):
        raise PrunekitError(f"{where}.size must be at most {MAX_INPUT_SIDE} pixels per side, got {list(size)!r}")
    if is_int(channels) and channels > MAX_INPUT_CHANNELS:
        raise PrunekitError(f"{where}.channels must be at most {MAX_INPUT_CHANNELS}, got {channels}")
    if is_int(resize) and resize > MAX_RESIZE:
        raise PrunekitError(f"{where}.resize must be at most {MAX_RESIZE}, got {resize}")


_CHANNEL_FIELDS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                   "num_groups", "num_channels", "num_parameters")


def check_layers(layers: Any, where: str) -> None:
    """Recorded layer shapes: positive integers <= 2^16; groups that divide the channels they split."""
    if not isinstance(layers, dict):
        raise PrunekitError(f"{where}: 'layers' must be a mapping")
    for name, shape in layers.items():
        if not isinstance(shape, dict):
            raise PrunekitError(f"{where}: layer '{name}' must be a mapping, got {shape!r}"[:300])
        for k, v in shape.items():
            if k == "type":
                continue
            vals = v if isinstance(v, list) else [v]  # normalized_shape, a mixed convolution's splits, ...
            if not vals or len(vals) > MAX_TENSOR_DIMS or not all(bounded_int(x, 1, MAX_CHANNELS) for x in vals):
                raise PrunekitError(f"{where}: layer '{name}': {k} must be positive integer(s) <= {MAX_CHANNELS}, "
                                    f"got {v!r}"[:300])
        g = shape.get("groups")
        for k in ("in_channels", "out_channels"):
            if is_int(g) and is_int(shape.get(k)) and shape[k] % g:
                raise PrunekitError(f"{where}: layer '{name}': {k} {shape[k]} is not divisible by groups {g}")
        ng, nc = shape.get("num_groups"), shape.get("num_channels")
        if is_int(ng) and is_int(nc) and nc % ng:
            raise PrunekitError(f"{where}: layer '{name}': num_channels {nc} is not divisible by num_groups {ng}")


def check_tensor_shapes(tensors: Any, where: str) -> None:
    if not isinstance(tensors, dict):
        raise PrunekitError(f"{where}: 'tensors' must be a mapping")
    for name, shape in tensors.items():
        if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS
                and all(bounded_int(s, 0, 1 << 31) for s in shape)):
            raise PrunekitError(f"{where}: tensors.{name} must be a list of at most {MAX_TENSOR_DIMS} sizes, "
                                f"got {shape!r}"[:300])


def check_pruning_plan(plan: Any, where: str) -> None:
    """The sizes a saved pruning plan claims (its input shape is traced at load time)."""
    if plan is None:
        return
    if not isinstance(plan, dict):
        raise PrunekitError(f"{where}: extra.pruning must be a mapping")
    shape = plan.get("input_shape")
    if shape is not None:
        ok = (isinstance(shape, list) and len(shape) == 3 and bounded_int(shape[0], 1, MAX_INPUT_CHANNELS)
              and all(bounded_int(s, 1, MAX_INPUT_SIDE) for s in shape[1:]))
        if not ok:
            raise PrunekitError(f"{where}: extra.pruning.input_shape must be [channels <= {MAX_INPUT_CHANNELS}, "
                                f"height, width <= {MAX_INPUT_SIDE}], got {shape!r}"[:300])
    groups = plan.get("groups")
    if isinstance(groups, list):
        for g in groups:
            if isinstance(g, dict) and "size" in g and not bounded_int(g["size"], 1, MAX_CHANNELS):
                raise PrunekitError(f"{where}: extra.pruning group sizes must be integers in 1..{MAX_CHANNELS}, got "
                                    f"{g['size']!r}"[:300])
