"""The run configuration: the library's typed configs composed into one YAML schema, validated in one place.

``train`` *is* :class:`prunekit.train.TrainConfig`; ``prune`` *is* :class:`prunekit.pruning.PruningConfig`
plus the training settings of the prune stage; schedules are :class:`prunekit.pruning.ScheduleSpec`. Every
key has a default; unknown keys name the closest valid key; wrong types and out-of-range values name the key
and the value; choices (criteria, schedules, export formats, datasets, calibration methods) come from the
registries that define them. ``--set a.b=value`` overrides parse ``value`` as YAML. See docs/config.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .data import DATASETS, Augment
from .deploy import ACTIVATION_TYPES, CPU_CLASSES, EXPORTERS, FORMATS, METHODS, OBJECTIVES, WEIGHT_TYPES
from .errors import PrunekitError, closest
from .pruning import PruningConfig, ScheduleSpec
from .pruning.budget import BUDGET_RUNTIMES, Budget
from .schema import F, build, to_dict
from .schema import describe as _describe
from .train import TrainConfig

CONFIG_VERSION = 1
MAX_YAML_BYTES = 1 << 20  # configs are a few KB


@dataclass
class ModelCfg:
    arch: str = F("mobilenet_v1", "registry name, torchvision:NAME or timm:NAME (timm installed)")
    width: float = F(1.0, "width multiplier (mobilenet_v1)", lo=0, lo_open=True, hi=16)
    init: str | None = F(None, "start from this saved model directory (train.epochs more epochs of training; 0: "
                         "use it as it is)")
    reinit: bool = F(False, "with init: keep its architecture (e.g. a searched allocation after surgery) but start "
                     "from fresh weights, seeded: train that architecture from scratch")
    small_input: bool | None = F(None, "first conv stride 1 (default: input smaller than 64 px)")
    dropout: float = F(0.2, "dropout before the classifier (mobilenet_v1)", lo=0, hi=1, hi_open=True)
    kwargs: dict = F({}, "extra builder arguments")

    def check(self, path: str = "model") -> None:
        from .models import TIMM_PREFIX, TORCHVISION_PREFIX, check_arch, list_models

        if self.arch.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)):
            check_arch(self.arch, f"{path}.arch")
        elif self.arch not in list_models():
            valid = [*list_models(), f"{TORCHVISION_PREFIX}NAME", f"{TIMM_PREFIX}NAME"]
            raise PrunekitError(f"{path}.arch: unknown model '{self.arch}'{closest(self.arch, list_models())}; "
                                f"valid: {', '.join(valid)}")


@dataclass
class DataCfg:
    name: str = F("bundled", "dataset", choices=DATASETS)
    root: str | None = F(None, "dataset directory (fashion-mnist: the IDX .gz files; imagefolder: the tree)")
    image_size: int | None = F(None, "model input size in pixels (default: the dataset's own, 28 for Fashion-MNIST)",
                               lo=8, hi=1024)
    channels: int | None = F(None, "model input channels (default: the dataset's)", lo=1, hi=4)
    resize: int | None = F(None, "imagefolder: resize the shorter side to this, then center-crop image_size",
                           lo=8, hi=4096)
    val_fraction: float = F(0.1, "imagefolder without train/ and val/: held-out fraction", lo=0, hi=1,
                            lo_open=True, hi_open=True)
    num_workers: int = F(0, "decoding workers for streamed image folders", lo=0, hi=64)
    augment: Augment = F(factory=Augment, doc="training augmentation (unset: the dataset's default)")

    def check(self, path: str = "data") -> None:
        if self.name == "imagefolder" and not self.root:
            raise PrunekitError(f"{path}.root is required for {path}.name: imagefolder (command line: --data imagefolder "
                                "needs --data-dir DIR with class subfolders, or train/ and val/)")


@dataclass
class StageTrainCfg:
    """Training settings of the prune/finetune stages; unset values inherit from ``train``."""

    epochs: float = F(5, "epochs", lo=0, hi=10000)
    lr: float | None = F(None, "peak learning rate (default: train.lr / 2)", lo=0, lo_open=True, hi=100)
    batch_size: int | None = F(None, "batch size (default: train.batch_size)", lo=1, hi=1 << 20)
    warmup_epochs: float = F(0.0, "warm-up epochs", lo=0, hi=10000)
    distill: float = F(0.0, "weight of distillation from the dense (train-stage) model; 0 = off", lo=0, hi=1)
    distill_temperature: float = F(4.0, "distillation temperature", lo=0, lo_open=True, hi=100)

    LR_FACTOR: ClassVar[float] = 0.5  # the default lr, as a fraction of train.lr

    def training(self, train: TrainConfig, seed: int, num_workers: int = 0) -> TrainConfig:
        """The trainer's config for this stage: ``train``'s settings with this stage's epochs, LR, ..."""
        t = copy.copy(train)
        t.epochs, t.warmup_epochs = self.epochs, self.warmup_epochs
        t.lr = self.lr if self.lr is not None else train.lr * self.LR_FACTOR
        t.batch_size = self.batch_size or train.batch_size
        t.distill, t.distill_temperature = self.distill, self.distill_temperature
        t.seed, t.num_workers = seed, num_workers
        return t.validate()


@dataclass
class PruneCfg(PruningConfig, StageTrainCfg):
    """The prune stage: a :class:`PruningConfig` (what and how) and the training it runs during."""

    enabled: bool = F(True, "run the prune stage")
    final_sparsity: float | None = F(None, "shortcut for schedule.final_sparsity", lo=0, hi=1, hi_open=True)
    budget: str | None = F(None, "prune to a budget instead of a sparsity: macs=0.25x, params=1.2M, latency_ms=0.5x "
                           "(x: relative to the dense model); a search chooses each layer's sparsity")
    budget_runtime: str = F("onnxruntime-fp32", "runtime whose latency a latency_ms budget measures",
                            choices=BUDGET_RUNTIMES)
    budget_batch: int = F(1, "batch size of a latency budget", lo=1, hi=4096)
    budget_threads: int = F(0, "threads of a latency budget (0: all cores)", lo=0, hi=512)
    budget_allocation: str = F("ranked", "which allocation of the budget's plan the prune step uses: ranked (no "
                               "search: channels ranked across layers by normalised score, prune.global_norm, per MAC "
                               "their removal saves, sized to the budget; the best or as good as the best at 1/4 "
                               "budgets on our benchmark, README), searched (the candidate search's pick; prune "
                               "runs the search only for this), uniform (the same sparsity everywhere, as small as meets "
                               "the budget) or uniform_fill (uniform, then channels added back to the groups with the "
                               "lowest kept fraction while the budget allows: a width multiplier that spends the "
                               "whole budget)",
                               choices=("ranked", "searched", "uniform", "uniform_fill"))
    search_candidates: int = F(100, "allocations the budget search scores by adaptive-BN accuracy (0: greedy only)",
                               lo=0, hi=100_000)
    search_floor: float = F(0.5, "the budget search keeps every layer at or above this fraction of the channels "
                            "uniform pruning to the same budget keeps there (a layer cut far below it is a bottleneck "
                            "fine-tuning recovers from worst; 0: no floor)", lo=0, hi=1)
    search_finetune_steps: int = F(0, "training steps (batch <= 128, 0.1 x finetune.lr) each of the search's "
                                   "finalists gets before the final pick (NetAdapt's short-term fine-tuning; 0: pick by "
                                   "adaptive BN). Off by default: at 300 steps it ranked allocations no better here, "
                                   "benchmarks/results/search_finetune_proxy.md", lo=0, hi=1_000_000)
    search_finetune_top: int = F(4, "finalists: the best candidates by adaptive BN, fine-tuned besides the uniform "
                                 "and greedy allocations", lo=1, hi=10_000)
    search_confirm_images: int = F(2000, "fresh held-out training images on which the search's pick must beat "
                                   "uniform's allocation by 2 paired standard errors, else the plan keeps uniform's "
                                   "(0: no check)", lo=0, hi=1_000_000)
    sensitivity_images: int = F(1000, "held-out training images that score sensitivity and search candidates",
                                lo=32, hi=1_000_000)
    calib_images: int = F(512, "training images that re-estimate BatchNorm statistics (adaptive BN)", lo=16,
                          hi=1_000_000)
    # the library's PruningConfig keeps exact counts (round_to 1); a run, which deploys, rounds to multiples of 8
    round_to: int = F(8, "keep channel counts multiples of this (8: ONNX Runtime's x86 kernels run several times "
                      "slower on other counts, benchmarks/results/round_to_quick.md; 1: exact counts)", lo=1, hi=1024)

    def pruning(self, seed: int = 0) -> PruningConfig:
        """The library's :class:`PruningConfig` of this stage (``final_sparsity`` folded into the schedule)."""
        sched = copy.copy(self.schedule)
        if self.final_sparsity is not None and isinstance(sched, ScheduleSpec):
            sched.final_sparsity = self.final_sparsity
        values = {f.name: getattr(self, f.name) for f in fields(PruningConfig)}
        return PruningConfig(**{**values, "schedule": sched, "seed": seed}).validate()

    def check(self, path: str = "prune") -> None:
        PruningConfig.check(self, path)
        if self.budget is not None:
            Budget.parse(self.budget)
            if self.target != "channels":
                raise PrunekitError(f"{path}.budget replaces {path}.target ({self.target}); give one of them")
        s = self.schedule
        if not isinstance(s, ScheduleSpec):
            return
        if s.end_epoch is not None and s.end_epoch > self.epochs:
            raise PrunekitError(f"{path}.schedule.end_epoch ({s.end_epoch}) is after the last prune epoch "
                                f"({self.epochs})")
        final = self.final_sparsity if self.final_sparsity is not None else s.final_sparsity
        if s.kind not in ("constant", "one_shot") and s.initial_sparsity > final:
            raise PrunekitError(f"{path}.schedule.initial_sparsity ({s.initial_sparsity}) exceeds the final sparsity "
                                f"({final})")


@dataclass
class FinetuneCfg(StageTrainCfg):
    # the full rate, restarted on the shrunk model (learning-rate rewinding, Renda et al. 2020):
    # benchmarks/results/budget_fmnist_quick*_ftlr0p1*.md, +0.8 to +2.0 pt over train.lr / 2 after a short dense run
    LR_FACTOR: ClassVar[float] = 1.0
    lr: float | None = F(None, "peak learning rate (default: train.lr)", lo=0, lo_open=True, hi=100)
    enabled: bool = F(True, "fine-tune the shrunk model")


@dataclass
class ExportCfg:
    formats: list[str] = F(["onnx", "torchscript"], "export formats", choices=FORMATS)
    opset: int = F(18, "ONNX opset", lo=13, hi=30)
    exporter: str = F("auto", "ONNX exporter: torch.export-based dynamo, TorchScript-based legacy (much faster to "
                      "export, same verification), or auto (dynamo, legacy if it fails); also for the dense and "
                      "pruned models the evaluate stage times", choices=EXPORTERS)


@dataclass
class QuantizeCfg:
    enabled: bool = F(True, "int8 static quantization with ONNX Runtime")
    calib_samples: int = F(512, "calibration images from the training split", lo=1, hi=1_000_000)
    method: str = F("minmax", "calibration method", choices=METHODS)
    per_channel: bool = F(True, "per-channel weight scales")
    cpu: str = F("auto", "CPU class the int8 settings are chosen for (auto: detected from this machine's "
                 "/proc/cpuinfo; name one to quantize for another machine)", choices=("auto", *CPU_CLASSES))
    activations: str = F("auto", "activation type (auto: uint8 on x86, int8 on ARM)", choices=ACTIVATION_TYPES)
    weights: str = F("auto", "weight type (auto: int8)", choices=WEIGHT_TYPES)
    reduce_range: bool | None = F(None, "7-bit weights against u8*s8 saturation (null: on for x86 without VNNI)")
    objective: str = F("latency", "which file is the deploy artifact: latency (faster at batch 1), throughput "
                       "(more img/s at throughput_batch), size (smaller), or fp32/int8 whatever the measurements; "
                       "latency, throughput and size only among files within `tolerance`", choices=OBJECTIVES)
    tolerance: float = F(0.5, "largest top-1 drop (points) of int8 vs fp32 on the held-out slice", lo=0, hi=100)
    min_speedup: float = F(1.05, "int8 counts as faster only from this ratio on (smaller gaps are timing noise)",
                           lo=1, hi=100)
    eval_samples: int = F(2000, "held-out slice: the first N test images, for the accuracy checks (0: all)",
                          lo=0, hi=10_000_000)
    throughput_batch: int = F(32, "batch size of the throughput measurement (latency: batch 1)", lo=1, hi=4096)
    guard: bool = F(True, "when int8 loses more than `tolerance`, keep the most sensitive layers in fp32")
    max_fp32_layers: int = F(8, "the guard keeps at most this many layers in fp32, then falls back to fp32",
                             lo=0, hi=10000)
    fp32_prefix: int = F(4, "int8 only where it is faster: also time int8 variants that keep the first 1, 2, "
                         "4, ... (up to N) weighted layers in fp32 and keep the fastest when it beats fully int8 by "
                         "`min_speedup` (objectives latency and throughput, CPU auto; 0: off)", lo=0, hi=10000)


@dataclass
class PredictCfg:
    image: str | None = F(None, "image to classify (default: the first test image, written to the run dir)")
    topk: int = F(5, "how many labels", lo=1, hi=1000)


@dataclass
class BenchCfg:
    enabled: bool = F(True, "measure latency for the report")
    threads: int = F(0, "intra-op threads (0: all cores); also for the fp32-vs-int8 measurement", lo=0, hi=512)
    repeats: int = F(50, "timed runs per model, runtime and batch size (ONNX Runtime: in 10 alternating rounds, "
                     "each at least 25 ms of runs)", lo=3, hi=100000)


@dataclass
class RunConfig:
    version: int = F(CONFIG_VERSION, "config schema version")
    out: str = F("runs/run", "run directory")
    seed: int = F(0, "random seed", lo=0)
    device: str = F("auto", "auto, cpu, cuda, cuda:N")
    model: ModelCfg = F(factory=ModelCfg, doc="the model")
    data: DataCfg = F(factory=DataCfg, doc="the dataset")
    train: TrainConfig = F(factory=TrainConfig, doc="training (the prune and finetune stages inherit it)")
    prune: PruneCfg = F(factory=PruneCfg, doc="pruning")
    finetune: FinetuneCfg = F(factory=FinetuneCfg, doc="fine-tuning of the shrunk model")
    export: ExportCfg = F(factory=ExportCfg, doc="export")
    quantize: QuantizeCfg = F(factory=QuantizeCfg, doc="int8 quantization")
    predict: PredictCfg = F(factory=PredictCfg, doc="the sample prediction")
    bench: BenchCfg = F(factory=BenchCfg, doc="latency measurement")

    def check(self, path: str = "") -> None:
        if self.version != CONFIG_VERSION:
            raise PrunekitError(f"config version {self.version} is not supported (expected {CONFIG_VERSION})")
        if self.quantize.enabled and "onnx" not in self.export.formats:
            raise PrunekitError("quantize.enabled needs 'onnx' in export.formats")

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        for section, cls in (("train", TrainConfig), ("prune", PruneCfg)):  # only the keys users can set
            keep = {f.name for f in fields(cls) if f.metadata.get("user", True)}
            d[section] = {k: v for k, v in d[section].items() if k in keep}
        return d


# --- parsing ---------------------------------------------------------------------------------------------


def parse_config(data: dict[str, Any] | None) -> RunConfig:
    """Validate a (partial) config mapping and fill in defaults."""
    return build(RunConfig, data or {}, "")


def describe() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every key — used to generate docs/config.md."""
    return _describe(RunConfig)


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
