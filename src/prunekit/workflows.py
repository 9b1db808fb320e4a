"""Orchestration shared by the CLI commands and the pipeline: data for a model, models from config,
training stages, and pruning schedules resolved against the data."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import DataCfg, ModelCfg, PruneCfg, RunConfig, StageTrainCfg, TrainCfg, dump_config
from .data import DataBundle, load_data, num_batches
from .data.datasets import adapt
from .errors import PrunekitError
from .io import write_text
from .models import InputSpec, ModelSpec, create_model
from .pruning import PruningConfig
from .train import TrainConfig


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(False)


def make_data(d: DataCfg, channels: int | None = None, size: list[int] | None = None, seed: int = 0) -> DataBundle:
    """Load ``d`` and convert it to the model's input (channels, size) when those are given."""
    channels = channels or d.channels
    if size is None and d.image_size:
        size = [d.image_size, d.image_size]
    kwargs: dict[str, Any] = {}
    if d.name == "imagefolder":
        kwargs = {"resize": d.resize, "val_fraction": d.val_fraction, "seed": seed}
    bundle = load_data(d.name, d.root, channels=channels, size=size, **kwargs)
    return adapt(bundle, channels, size)


def input_spec(data: DataBundle, resize: int | None = None) -> InputSpec:
    return InputSpec(list(data.size), data.channels, list(data.mean), list(data.std), resize).validate()


def build_model(m: ModelCfg, data: DataBundle, resize: int | None = None) -> tuple[nn.Module, ModelSpec]:
    """A fresh model sized for ``data`` (classes, channels, small-input stem) and its spec."""
    kwargs = dict(m.kwargs)
    if m.arch == "mobilenet_v1":
        small = m.small_input if m.small_input is not None else min(data.size) < 64
        kwargs = {"width": m.width, "num_classes": data.num_classes, "in_channels": data.channels,
                  "small_input": small, "dropout": m.dropout, **kwargs}
    else:
        kwargs = {"num_classes": data.num_classes, **({"in_channels": data.channels} if data.channels != 3 else {}),
                  **kwargs}
    model = create_model(m.arch, **kwargs)
    return model, ModelSpec(m.arch, kwargs, input_spec(data, resize), list(data.class_names))


def train_config(t: TrainCfg, seed: int, stage: StageTrainCfg | None = None, num_workers: int = 0) -> TrainConfig:
    """The trainer's config for the train stage, or for a prune/finetune stage inheriting from ``train``."""
    base = {f.name: getattr(t, f.name) for f in dataclasses.fields(TrainCfg)}
    if stage is not None:
        base["epochs"] = stage.epochs
        base["lr"] = stage.lr if stage.lr is not None else t.lr / 2
        base["batch_size"] = stage.batch_size or t.batch_size
        base["warmup_epochs"] = stage.warmup_epochs
        base["distill"] = stage.distill
        base["distill_temperature"] = stage.distill_temperature
    return TrainConfig(seed=seed, num_workers=num_workers, **base).validate()


def pruning_config(p: PruneCfg, steps_per_epoch: int, seed: int = 0) -> PruningConfig:
    """Resolve the schedule (steps from epochs, defaults for end/frequency) into a :class:`PruningConfig`."""
    s = p.schedule
    total = max(1, int(round(p.epochs * steps_per_epoch)))
    final = p.final_sparsity if p.final_sparsity is not None else s.final_sparsity
    begin = s.begin_step if s.begin_step is not None else int(round(s.begin_epoch * steps_per_epoch))
    if s.end_step is not None:
        end = s.end_step
    elif s.end_epoch is not None:
        end = int(round(s.end_epoch * steps_per_epoch))
    else:
        end = max(begin, int(round(0.6 * total)))
    if s.kind in ("one_shot",):
        sched: dict[str, Any] = {"kind": "one_shot", "target_sparsity": final, "begin_step": begin}
    else:
        freq = s.frequency or max(1, (end - begin) // 10 if end > begin else 1)
        if s.kind == "constant":
            sched = {"kind": "constant", "target_sparsity": final, "begin_step": begin, "end_step": end,
                     "frequency": freq}
        else:
            if end <= begin and end != -1:
                raise PrunekitError(f"prune.schedule: end step {end} must be after begin step {begin} for "
                                    f"{s.kind} (increase prune.epochs or set end_epoch)")
            sched = {"kind": s.kind, "initial_sparsity": s.initial_sparsity, "final_sparsity": final,
                     "begin_step": begin, "end_step": end, "frequency": freq}
            if s.kind == "polynomial_decay":
                sched["power"] = s.power
    if final <= 0:
        raise PrunekitError("prune: final sparsity is 0, nothing would be pruned")
    if sched.get("initial_sparsity", 0) > final:
        raise PrunekitError(f"prune.schedule.initial_sparsity ({s.initial_sparsity}) exceeds the final sparsity "
                            f"({final})")
    return PruningConfig(schedule=sched, criterion=p.criterion, scope=p.scope, layers=p.layers, exclude=p.exclude,
                         overrides=list(p.overrides), round_to=p.round_to, min_channels=p.min_channels,
                         target=p.target, taylor_batches=p.taylor_batches, seed=seed).validate()


def steps_per_epoch(data: DataBundle, batch_size: int) -> int:
    n = num_batches(len(data.train), batch_size, drop_last=True)
    if n == 0:
        raise PrunekitError(f"batch size {batch_size} is larger than the training set ({len(data.train)} images)")
    return n


def write_resolved_config(out: Path, cfg: RunConfig) -> None:
    write_text(out / "config.yaml", dump_config(cfg))
