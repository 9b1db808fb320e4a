"""The run configuration: YAML with a default for every key, validated before any work starts.

Unknown keys name the closest valid key; wrong types and out-of-range values name the key and the value.
``--set a.b=value`` overrides parse ``value`` as YAML. See docs/config.md for every key.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import PrunekitError, closest

CONFIG_VERSION = 1
MAX_YAML_BYTES = 1 << 20  # configs are a few KB


def F(default: Any, doc: str = "", **limits: Any) -> Any:
    """A config field with its documentation and numeric limits."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"doc": doc, **limits})
    return field(default=default, metadata={"doc": doc, **limits})


@dataclass
class ModelCfg:
    arch: str = F("mobilenet_v1", "registry name or torchvision:NAME")
    width: float = F(1.0, "width multiplier (mobilenet_v1)", lo=0, lo_open=True, hi=16)
    init: str | None = F(None, "start from this saved model directory instead of training")
    small_input: bool | None = F(None, "first conv stride 1 (default: input smaller than 64 px)")
    dropout: float = F(0.2, "dropout before the classifier (mobilenet_v1)", lo=0, hi=1, hi_open=True)
    kwargs: dict = F({}, "extra builder arguments")


@dataclass
class DataCfg:
    name: Literal["bundled", "fashion-mnist", "imagefolder", "synthetic"] = F("bundled", "dataset")
    root: str | None = F(None, "dataset directory (fashion-mnist: the IDX .gz files; imagefolder: the tree)")
    image_size: int | None = F(None, "model input size in pixels (default: the dataset's own, 28 for Fashion-MNIST)",
                               lo=8, hi=1024)
    channels: int | None = F(None, "model input channels (default: the dataset's)", lo=1, hi=4)
    resize: int | None = F(None, "imagefolder: resize the shorter side to this, then center-crop image_size",
                           lo=8, hi=4096)
    val_fraction: float = F(0.1, "imagefolder without train/ and val/: held-out fraction", lo=0, hi=1,
                            lo_open=True, hi_open=True)
    num_workers: int = F(0, "decoding workers for streamed image folders", lo=0, hi=64)


@dataclass
class TrainCfg:
    epochs: float = F(10, "training epochs", lo=0, hi=10000)
    batch_size: int = F(128, "global batch size", lo=1, hi=1 << 20)
    lr: float = F(0.05, "peak learning rate", lo=0, lo_open=True, hi=100)
    optimizer: Literal["sgd", "adamw"] = F("sgd", "sgd (Nesterov momentum) or adamw")
    momentum: float = F(0.9, "SGD momentum", lo=0, hi=1, hi_open=True)
    nesterov: bool = F(True, "Nesterov momentum")
    weight_decay: float = F(5e-5, "weight decay (not applied to BN and biases)", lo=0, hi=1)
    label_smoothing: float = F(0.1, "label smoothing", lo=0, hi=1, hi_open=True)
    warmup_epochs: float = F(1.0, "linear warm-up epochs before cosine decay", lo=0, hi=10000)
    min_lr: float = F(0.0, "final learning rate", lo=0, hi=100)
    augment: bool = F(True, "random crop with padding + horizontal flip")
    amp: bool = F(True, "bf16 autocast on CUDA")
    channels_last: bool = F(True, "channels_last memory format on CUDA")
    compile: bool = F(False, "torch.compile the model")
    sync_bn: bool = F(False, "synchronised BatchNorm under DDP (torch SyncBatchNorm on CUDA, prunekit's all-reduce BN on CPU)")
    checkpoint_every: int = F(0, "also checkpoint every N steps (0: each epoch only)", lo=0)
    max_steps: int = F(0, "stop after N steps (0: no limit)", lo=0)


@dataclass
class StageTrainCfg:
    """Training settings of the prune/finetune stages; unset values inherit from ``train``."""

    epochs: float = F(5, "epochs", lo=0, hi=10000)
    lr: float | None = F(None, "peak learning rate (default: train.lr / 2)", lo=0, lo_open=True, hi=100)
    batch_size: int | None = F(None, "batch size (default: train.batch_size)", lo=1, hi=1 << 20)
    warmup_epochs: float = F(0.0, "warm-up epochs", lo=0, hi=10000)
    distill: float = F(0.0, "weight of distillation from the dense (train-stage) model; 0 = off", lo=0, hi=1)
    distill_temperature: float = F(4.0, "distillation temperature", lo=0, lo_open=True, hi=100)


@dataclass
class ScheduleCfg:
    kind: Literal["polynomial_decay", "constant", "one_shot", "agp", "linear"] = F("polynomial_decay",
                                                                                   "schedule kind")
    initial_sparsity: float = F(0.0, "sparsity at begin", lo=0, hi=1, hi_open=True)
    final_sparsity: float = F(0.5, "sparsity at end (target for constant/one_shot)", lo=0, hi=1, hi_open=True)
    begin_step: int | None = F(None, "first pruning step (default: begin_epoch converted)", lo=0)
    end_step: int | None = F(None, "last pruning step (default: end_epoch converted)", lo=-1)
    begin_epoch: float = F(0.0, "first pruning epoch (used when begin_step is unset)", lo=0)
    end_epoch: float | None = F(None, "last pruning epoch (default: 60% of prune.epochs)", lo=0)
    frequency: int | None = F(None, "prune every N steps (default: ~10 updates over the schedule)", lo=1)
    power: float = F(3.0, "polynomial exponent (3 = AGP)", lo=0, lo_open=True, hi=100)


@dataclass
class PruneCfg(StageTrainCfg):
    enabled: bool = F(True, "run the prune stage")
    final_sparsity: float | None = F(None, "shortcut for schedule.final_sparsity", lo=0, hi=1, hi_open=True)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    criterion: Literal["l1", "l2", "l1_filters", "bn_gamma", "taylor", "random"] = F(
        "l1", "channel importance (l1/l2: norm over the whole channel group; l1_filters: producing filters only)")
    scope: Literal["local", "global"] = F("local", "local: each layer to the target; global: ranked across")
    layers: str | list = F("pointwise", "pointwise | all | regex (or list) over producing layer names")
    exclude: str | None = F(None, "regex of layers never to prune")
    overrides: list = F([], "[{layers: REGEX, sparsity: S} | {layers: REGEX, exclude: true}]")
    round_to: int = F(1, "keep channel counts multiples of this", lo=1, hi=1024)
    min_channels: int = F(1, "minimum channels kept per group", lo=1)
    target: Literal["channels", "macs", "params"] = F("channels", "what sparsity measures")
    taylor_batches: int = F(16, "batches of gradient statistics per Taylor update", lo=1)


@dataclass
class FinetuneCfg(StageTrainCfg):
    enabled: bool = F(True, "fine-tune the shrunk model")


@dataclass
class ExportCfg:
    formats: list = F(["onnx", "torchscript"], "onnx, torchscript, exported-program")
    opset: int = F(18, "ONNX opset", lo=13, hi=30)


@dataclass
class QuantizeCfg:
    enabled: bool = F(True, "int8 static quantization with ONNX Runtime")
    calib_samples: int = F(512, "calibration images from the training split", lo=1, hi=1_000_000)
    method: Literal["minmax", "entropy", "percentile"] = F("minmax", "calibration method")
    per_channel: bool = F(True, "per-channel weight scales")


@dataclass
class PredictCfg:
    image: str | None = F(None, "image to classify (default: the first test image, written to the run dir)")
    topk: int = F(5, "how many labels", lo=1, hi=1000)


@dataclass
class BenchCfg:
    enabled: bool = F(True, "measure latency for the report")
    threads: int = F(0, "intra-op threads (0: all cores)", lo=0, hi=512)
    repeats: int = F(50, "timed batch-1 runs per model and runtime", lo=3, hi=100000)


@dataclass
class RunConfig:
    version: int = F(CONFIG_VERSION, "config schema version")
    out: str = F("runs/run", "run directory")
    seed: int = F(0, "random seed", lo=0)
    device: str = F("auto", "auto, cpu, cuda, cuda:N")
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    prune: PruneCfg = field(default_factory=PruneCfg)
    finetune: FinetuneCfg = field(default_factory=FinetuneCfg)
    export: ExportCfg = field(default_factory=ExportCfg)
    quantize: QuantizeCfg = field(default_factory=QuantizeCfg)
    predict: PredictCfg = field(default_factory=PredictCfg)
    bench: BenchCfg = field(default_factory=BenchCfg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- parsing and validation ----------------------------------------------------------------------


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(t, getattr(t, "__name__", str(t)))


def _coerce(path: str, t: Any, v: Any, meta: dict) -> Any:
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(path, a, v, meta)
            except PrunekitError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise PrunekitError(f"{path} must be {_type_name(t)}, got {v!r}")
    if origin is Literal:
        choices = typing.get_args(t)
        if v not in choices:
            raise PrunekitError(f"{path} must be one of {', '.join(map(str, choices))}, got {v!r}"
                                f"{closest(str(v), map(str, choices))}")
        return v
    if dataclasses.is_dataclass(t):
        return _build(t, v, path)
    if t is bool:
        if not isinstance(v, bool):
            raise PrunekitError(f"{path} must be true or false, got {v!r}")
        return v
    if t in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PrunekitError(f"{path} must be {_type_name(t)}, got {v!r}")
        if t is int and not float(v).is_integer():
            raise PrunekitError(f"{path} must be an integer, got {v!r}")
        if not math.isfinite(v):
            raise PrunekitError(f"{path} must be finite, got {v!r}")
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (v < lo or (meta.get("lo_open") and v == lo)):
            raise PrunekitError(f"{path} must be {'>' if meta.get('lo_open') else '>='} {lo}, got {v!r}")
        if hi is not None and (v > hi or (meta.get("hi_open") and v == hi)):
            raise PrunekitError(f"{path} must be {'<' if meta.get('hi_open') else '<='} {hi}, got {v!r}")
        return int(v) if t is int else float(v)
    if t is str:
        if not isinstance(v, str):
            raise PrunekitError(f"{path} must be a string, got {v!r}")
        return v
    if t is list:
        if not isinstance(v, list):
            raise PrunekitError(f"{path} must be a list, got {v!r}")
        return v
    if t is dict:
        if not isinstance(v, dict):
            raise PrunekitError(f"{path} must be a mapping, got {v!r}")
        return v
    return v


def _build(cls: type, d: Any, path: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise PrunekitError(f"{path or 'config'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in d:
        if k not in fields:
            where = f"{path}." if path else ""
            raise PrunekitError(f"unknown config key '{where}{k}'{closest(k, fields)}; valid keys"
                                f"{' under ' + path if path else ''}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in d:
            kwargs[name] = _coerce(f"{path}.{name}" if path else name, hints[name], d[name], dict(f.metadata))
    return cls(**kwargs)


def _semantic_checks(cfg: RunConfig) -> None:
    s = cfg.prune.schedule
    if s.begin_step is not None and s.end_step is not None and s.end_step != -1 and s.begin_step > s.end_step:
        raise PrunekitError(f"prune.schedule.begin_step ({s.begin_step}) must be <= end_step ({s.end_step})")
    if s.end_epoch is not None and s.begin_epoch > s.end_epoch:
        raise PrunekitError(f"prune.schedule.begin_epoch ({s.begin_epoch}) must be <= end_epoch ({s.end_epoch})")
    if s.end_epoch is not None and s.end_epoch > cfg.prune.epochs:
        raise PrunekitError(f"prune.schedule.end_epoch ({s.end_epoch}) is after the last prune epoch "
                            f"({cfg.prune.epochs})")
    for f in cfg.export.formats:
        if f not in ("onnx", "torchscript", "exported-program"):
            raise PrunekitError(f"export.formats: unknown format '{f}'{closest(f, ['onnx', 'torchscript'])}; valid: "
                                "onnx, torchscript, exported-program")
    if cfg.quantize.enabled and "onnx" not in cfg.export.formats:
        raise PrunekitError("quantize.enabled needs 'onnx' in export.formats")
    if cfg.data.name in ("imagefolder",) and not cfg.data.root:
        raise PrunekitError("data.root is required for data.name: imagefolder")
    if cfg.version != CONFIG_VERSION:
        raise PrunekitError(f"config version {cfg.version} is not supported (expected {CONFIG_VERSION})")
    from .pruning.policy import PruningConfig

    PruningConfig(schedule={"kind": "constant", "target_sparsity": 0.1}, layers=cfg.prune.layers,
                  exclude=cfg.prune.exclude, overrides=list(cfg.prune.overrides)).validate()


def parse_config(data: dict[str, Any] | None) -> RunConfig:
    """Validate a (partial) config mapping and fill in defaults."""
    cfg = _build(RunConfig, data or {}, "")
    _semantic_checks(cfg)
    return cfg


def set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise PrunekitError(f"--set {dotted}: '{k}' is not a section")
        cur = nxt
    cur[keys[-1]] = value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML)."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise PrunekitError(f"--set expects key.sub=value, got '{item}'")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise PrunekitError(f"--set: bad key '{key}'")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise PrunekitError(f"--set {key}: cannot parse value '{raw}': {e}") from None
        except RecursionError:
            raise PrunekitError(f"--set {key}: value nested too deeply") from None
        from .models.limits import check_tree

        check_tree(value, f"--set {key}", max_depth=16, max_nodes=100_000)
        set_path(d, key, value)
    return d


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"config file not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise PrunekitError(f"{path}: a config file larger than {MAX_YAML_BYTES >> 20} MiB")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise PrunekitError(f"{path}: invalid YAML ({first})") from None
    except UnicodeDecodeError:
        raise PrunekitError(f"{path}: not a text file") from None
    except RecursionError:
        raise PrunekitError(f"{path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PrunekitError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    from .models.limits import check_tree

    check_tree(data, str(path), max_depth=16, max_nodes=100_000)  # also YAML alias bombs (`&a [*b, *b, ...]`)
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    data = read_yaml(path) if path else {}
    return parse_config(apply_overrides(data, list(overrides)))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every key — used to generate docs/config.md."""
    rows = []
    hints = typing.get_type_hints(cls)
    inst = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            rows += describe(t, key + ".")
        else:
            rows.append((key, _type_name(t), getattr(inst, f.name), f.metadata.get("doc", "")))
    return rows
