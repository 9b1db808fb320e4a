"""Arguments and helpers shared by CLI commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..data import DATASETS
from ..errors import PrunekitError


def add_data_args(p: argparse.ArgumentParser, required: bool = False, default: str | None = "bundled") -> None:
    p.add_argument("--data", choices=DATASETS, default=None if required else default, required=required,
                   help=f"dataset (default: {default})" if not required else "dataset")
    p.add_argument("--data-dir", metavar="DIR", help="dataset directory: Fashion-MNIST IDX files (also found via "
                   "$PRUNEKIT_DATA or /usr/share/datasets/fashion-mnist) or an ImageFolder tree")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")


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


def positive_float(name: str):
    def conv(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got '{s}'") from None
        if not v > 0 or v != v:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {s}")
        return v

    return conv


def fraction(name: str):
    def conv(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got '{s}'") from None
        if not 0 <= v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1), got {s}")
        return v

    return conv


def positive_int(name: str, allow_zero: bool = False):
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{s}'") from None
        if v < 0 or (v == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {s}")
        return v

    return conv


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


def model_data(loaded, data: str, data_dir: str | None, seed: int = 0):
    """The dataset converted to what a loaded model expects (channels, size, ImageNet-style resize)."""
    from ..config import DataCfg
    from ..workflows import make_data

    inp = loaded.spec.input
    d = DataCfg(name=data, root=data_dir, resize=inp.resize)
    bundle = make_data(d, inp.channels, list(inp.size), seed=seed)
    bundle.mean, bundle.std = list(inp.mean), list(inp.std)  # normalise exactly as the model was trained
    names = loaded.spec.class_names
    if names is not None and list(names) != list(bundle.class_names):
        # Folders named after (a subset of) the model's classes, or ImageNet wnids, are mapped onto the
        # model's class indices; otherwise the counts must agree and labels are taken in order.
        from ..data.classes import class_index_map, relabel

        match = class_index_map(bundle.class_names, names)
        if match is not None:
            mapping, how = match
            bundle = relabel(bundle, mapping, names)
            bundle.notes["class_map"] = how
        elif len(names) != bundle.num_classes:
            raise PrunekitError(f"the model has {len(names)} classes but the {data} data has {bundle.num_classes}, "
                                "and its class names are neither a subset of the model's nor ImageNet wnids")
    return bundle
