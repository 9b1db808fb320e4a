"""The steps of the pruning guide, each written once: train, prune, surgery, finetune, export, quantize,
evaluate, predict (plus plan and summary).

Each step is a function from typed inputs (a :class:`~prunekit.config.RunConfig` and paths) to a typed result
with ``to_dict()``. The CLI commands and the pipeline stages both call them: a command turns its flags into a
``RunConfig``, runs the step and prints the result; a pipeline stage fingerprints its inputs, runs the step
and records the result. The same settings therefore give the same model by either path.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .config import BenchCfg, DataCfg, ModelCfg, QuantizeCfg, RunConfig, StageTrainCfg, dump_config
from .data import DataBundle, adapt, load_data, num_batches
from .errors import PrunekitError
from .io import write_json, write_text
from .models import InputSpec, ModelSpec, create_model, reinitialise
from .saved import Loaded, load, resolve, save
from .train import DistContext, TrainConfig, fit

Log = Callable[[str], None]


# --- shared pieces --------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(False)


def load_dataset(d: DataCfg, channels: int | None = None, size: Sequence[int] | None = None, seed: int = 0,
                 resize: int | None = None) -> DataBundle:
    """The configured dataset, converted to a model's input (channels, size) when those are given."""
    channels = channels or d.channels
    size = list(size) if size else ([d.image_size, d.image_size] if d.image_size else None)
    kwargs: dict[str, Any] = {}
    if d.name == "imagefolder":
        kwargs = {"resize": resize if resize is not None else d.resize, "val_fraction": d.val_fraction, "seed": seed}
    bundle = load_data(d.name, d.root, channels=channels, size=size, augment=d.augment, **kwargs)
    return adapt(bundle, channels, size)


def model_data(spec: ModelSpec, d: DataCfg, seed: int = 0, data: DataBundle | None = None) -> DataBundle:
    """The dataset as a saved model sees it: its channels, size, resize and normalisation; folders named after
    (a subset of) the model's classes, or ImageNet wnids, are mapped onto the model's class indices.
    ``data``: the dataset already loaded (it is converted, not read again)."""
    inp = spec.input
    if data is None:
        bundle = load_dataset(d, inp.channels, inp.size, seed, resize=inp.resize)
    else:
        bundle = adapt(data, inp.channels, inp.size)
    bundle = dataclasses.replace(bundle, mean=list(inp.mean), std=list(inp.std))  # normalise as in training
    names = spec.class_names
    if names is not None and list(names) != list(bundle.class_names):
        from .data.classes import class_index_map, relabel

        match = class_index_map(bundle.class_names, names)
        if match is not None:
            mapping, how = match
            bundle = relabel(bundle, mapping, names)
            bundle.notes["class_map"] = how
        elif len(names) != bundle.num_classes:
            raise PrunekitError(f"the model has {len(names)} classes but the {d.name} data has {bundle.num_classes}, "
                                "and its class names are neither a subset of the model's nor ImageNet wnids")
    return bundle


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


def steps_per_epoch(data: DataBundle, batch_size: int) -> int:
    n = num_batches(len(data.train), batch_size, drop_last=True)
    if n == 0:
        raise PrunekitError(f"batch size {batch_size} is larger than the training set ({len(data.train)} images)")
    return n


def _dense(ref: str | Path, hint: str, loader: Callable[..., Loaded] = resolve) -> Loaded:
    loaded = loader(ref)
    if loaded.pruner is not None:
        raise PrunekitError(f"{ref} carries pruning masks; {hint}")
    return loaded


def _broadcast_allocation(allocation: dict[str, float] | None) -> dict[str, float] | None:
    """Under DDP rank 0 searches; every rank prunes to its allocation."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [allocation]
        dist.broadcast_object_list(box, src=0)
        allocation = box[0]
    return allocation


def _training(cfg: RunConfig, stage: StageTrainCfg | None, seed: int) -> TrainConfig:
    if stage is not None:
        return stage.training(cfg.train, seed, cfg.data.num_workers)
    t = copy.copy(cfg.train)
    t.seed, t.num_workers = seed, cfg.data.num_workers
    return t.validate()


# --- train / finetune ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """A trained (or fine-tuned) model saved to ``model_dir``."""

    model_dir: Path
    test: dict[str, Any]
    steps: int
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "test": self.test, "steps": self.steps,
                **({"source": self.source} if self.source else {})}


def train(cfg: RunConfig, out: str | Path, *, init: str | Path | None = None, stage: StageTrainCfg | None = None,
          seed: int | None = None, teacher: nn.Module | None = None, data: DataBundle | None = None,
          resume: bool = True, ctx: DistContext | None = None, log: Log = print, desc: str = "train") -> TrainResult:
    """Train a new model (``cfg.model`` on ``cfg.data`` with ``cfg.train``), or continue training a saved one
    (``init``, default ``cfg.model.init``; zero epochs use it as it is). ``stage`` (``cfg.finetune``) takes
    that stage's epochs and learning rate instead. Writes ``OUT/model``, ``OUT/metrics.jsonl`` and the
    checkpoint; a killed run resumes exactly."""
    out = Path(out)
    ctx = ctx or DistContext()
    seed = cfg.seed if seed is None else seed
    set_seed(seed)
    init = init if init is not None else cfg.model.init
    if cfg.model.reinit and not init:
        raise PrunekitError("model.reinit needs a saved model to take the architecture from (--init DIR)")
    if init:
        loaded = _dense(init, "fine-tune it with `prunekit prune` or run `prunekit surgery` first", load)
        model, spec = loaded.model, loaded.spec
        bundle = model_data(spec, cfg.data, seed, data)
        spec.extra = {k: v for k, v in spec.extra.items() if k != "metrics"}
        if cfg.model.reinit:  # the architecture only (Liu et al. 2019: a pruned architecture trained from scratch)
            reinitialise(model, seed)
            spec.extra["reinitialised_from"] = str(init)
    else:
        bundle = data if data is not None else load_dataset(cfg.data, seed=seed)
        model, spec = build_model(cfg.model, bundle, cfg.data.resize)
    tcfg = _training(cfg, stage, seed)
    result = fit(model, bundle, tcfg, out, resume=resume, ctx=ctx, desc=desc, log=log, teacher=teacher)
    if ctx.is_main:
        spec.extra["metrics"] = {"test": result["test"], "steps": result["steps"]}
        save(model.cpu(), out / "model", spec)
    return TrainResult(out / "model", result["test"], result["steps"], str(init) if init else None)


def finetune(cfg: RunConfig, model_dir: str | Path, out: str | Path, *, teacher: nn.Module | None = None,
             data: DataBundle | None = None, resume: bool = True, ctx: DistContext | None = None,
             log: Log = print) -> TrainResult:
    """Retrain a shrunk model (the seed's "retrain" step) with ``cfg.finetune``'s epochs and learning rate."""
    return train(cfg, out, init=model_dir, stage=cfg.finetune, seed=cfg.seed + 1, teacher=teacher, data=data,
                 resume=resume, ctx=ctx, log=log, desc="finetune")


# --- budgets: sensitivity, cost model, allocation search --------------------------------------------------


def _held_out(n: int, calib: int, evaluation: int, seed: int,
              confirm: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of three disjoint random slices of a training split of ``n`` images: BatchNorm calibration, the
    held-out images that score sensitivity and allocations (a small dataset: a third and the rest), and up to
    ``confirm`` fresh images on which the search's pick is checked against uniform (what is left, maybe none)."""
    if n < calib + evaluation:
        calib, evaluation = max(1, n // 3), n - max(1, n // 3)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    end = calib + evaluation
    return perm[:calib], perm[calib:end], perm[end:end + max(0, confirm)]


def _train_slices(bundle: DataBundle, calib: int, evaluation: int, batch: int, seed: int,
                  device: torch.device, confirm: int = 0) -> tuple[list, list, Callable[[], Any] | None]:
    """The three slices of :func:`_held_out` as batches (no augmentation); the confirmation slice, scored twice
    per search, as a function that makes its batches on each call instead of holding them (None: no images)."""
    from .data import iterate_batches

    def batches(idx: torch.Tensor):
        sub = dataclasses.replace(bundle, train=bundle.train.subset(idx))
        return iterate_batches(sub, "train", batch, train=False, device=device)

    calib_idx, held_idx, fresh_idx = _held_out(len(bundle.train), calib, evaluation, seed, confirm)
    return (list(batches(calib_idx)), list(batches(held_idx)),
            (lambda: batches(fresh_idx)) if len(fresh_idx) else None)


def _finetune_scorer(cfg: RunConfig, bundle: DataBundle, evaluator: Any, device: torch.device):
    """The search's final scorer: ``prune.search_finetune_steps`` SGD steps (batch <= 128, 0.1 x the
    fine-tuning LR, the training's weight decay) on the training split minus the held-out and confirmation slices,
    then adaptive BN and the score of ``evaluator``'s held-out images
    (:class:`prunekit.pruning.sensitivity.FinetuneEvaluator`)."""
    from .data import iterate_batches
    from .pruning.sensitivity import FinetuneEvaluator
    from .train.optim import build_optimizer

    p = cfg.prune
    n = len(bundle.train)
    _, held, fresh = _held_out(n, p.calib_images, p.sensitivity_images, cfg.seed, p.search_confirm_images)
    rest = torch.ones(n, dtype=torch.bool)
    rest[held] = False
    rest[fresh] = False
    sub = dataclasses.replace(bundle, train=bundle.train.subset(torch.nonzero(rest).flatten()))
    ft = cfg.finetune.training(cfg.train, cfg.seed)
    batch = max(1, min(128, ft.batch_size, len(sub.train)))

    def batches():  # the same order for every candidate, epoch after epoch
        for epoch in itertools.count():
            yield from iterate_batches(sub, "train", batch, train=True, seed=cfg.seed + 1, epoch=epoch, device=device)

    return FinetuneEvaluator(evaluator, batches,
                             lambda m: build_optimizer(m, ft.optimizer, 0.1 * ft.lr, ft.weight_decay, ft.momentum,
                                                               ft.nesterov), p.search_finetune_steps, cfg.seed)


def _fingerprint(*parts: Any) -> str:
    import hashlib
    import json

    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, nn.Module):
            for k, t in p.state_dict().items():
                h.update(k.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


@dataclass
class BudgetPlan:
    """What a budget search chose: each group's channels, its predicted cost, and what it was chosen from."""

    budget: str
    runtime: str | None
    dense_cost: float
    target: float
    allocation: Any  # prunekit.pruning.search.Allocation
    uniform: Any
    sensitivity: Any  # prunekit.pruning.sensitivity.Sensitivity
    candidates: list[dict[str, Any]]
    seconds: float
    cost_model: Any = None
    checks: list[dict[str, Any]] = field(default_factory=list)  # latency: allocations built and timed while planning
    # latency: the dense model's fastest time while planning (its first measurement, which sets the budget's scale,
    # may itself fall in a slow phase of the machine); a later check that times the dense model >10% slower than
    # this takes more passes (inference.latency.measure_ratio's dense_ref)
    dense_fastest: float | None = None
    ranked: Any = None  # channels ranked across groups by score per unit of budget saved (search.ranked)
    # uniform pruning that spends the whole budget (search.filled): MAC/parameter budgets, or when the prune step
    # uses it (at a latency budget it is built and timed like the others)
    filled: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "runtime": self.runtime, "dense_cost": self.dense_cost, "target": self.target,
                "predicted": self.allocation.cost, "allocation": self.allocation.to_dict(),
                "uniform": self.uniform.to_dict(),
                **({"ranked": self.ranked.to_dict()} if self.ranked is not None else {}),
                **({"uniform_fill": self.filled.to_dict()} if self.filled is not None else {}),
                "candidates": self.candidates, "seconds": self.seconds,
                "calibration": getattr(self.cost_model, "calibration", None), "checks": self.checks,
                "dense_fastest": self.dense_fastest}


class BudgetSetup(NamedTuple):
    """What sensitivity and the budget search work on (:func:`_budget_setup`)."""

    pruner: Any
    evaluator: Any  # AdaptiveBNEvaluator on the held-out slice: sensitivity and the search's candidates
    limits: Any
    fresh: Any  # AdaptiveBNEvaluator on the confirmation slice (None: no images left for it)


def _budget_setup(cfg: RunConfig, loaded: Loaded, bundle: DataBundle, device: torch.device,
                  confirm: bool = True) -> BudgetSetup:
    """A masked copy of the dense model, its adaptive-BN evaluators (held-out and confirmation slices) and the
    search limits."""
    from .pruning import OneShot, prune_, strip
    from .pruning.search import Limits
    from .pruning.sensitivity import AdaptiveBNEvaluator

    pcfg = dataclasses.replace(cfg.prune.pruning(cfg.seed), schedule=OneShot(0.5), allocation=None)
    model = strip(loaded.model, copy=True).eval().to(device)
    pruner = prune_(model, pcfg, loaded.input_shape)
    batch = min(256, cfg.train.batch_size)
    calib, held_out, fresh = _train_slices(bundle, cfg.prune.calib_images, cfg.prune.sensitivity_images, batch,
                                           cfg.seed, device, cfg.prune.search_confirm_images if confirm else 0)
    limits = Limits(pcfg.round_to, pcfg.min_channels, pcfg.max_sparsity)
    return BudgetSetup(pruner, AdaptiveBNEvaluator(pruner, calib, held_out), limits,
                       AdaptiveBNEvaluator(pruner, calib, fresh) if fresh else None)


def sensitivity(cfg: RunConfig, model_ref: str | Path, out: str | Path | None = None, *, data: DataBundle | None = None,
                device: str | torch.device = "cpu", log: Log = print, setup: Any = None):
    """Top-1 and loss with each selected group alone pruned to 10%..90% (adaptive BN), cached on disk by the
    model's weights and the settings; written to ``OUT/sensitivity.json`` and ``OUT/sensitivity.png``."""
    from .io import read_json
    from .pruning.sensitivity import SPARSITIES, Sensitivity, measure_sensitivity

    device = torch.device(device)
    loaded = resolve(model_ref) if not isinstance(model_ref, Loaded) else model_ref
    if loaded.pruner is not None:
        raise PrunekitError(f"{model_ref} carries pruning masks; measure the sensitivity of the dense model")
    bundle = model_data(loaded.spec, cfg.data, cfg.seed, data)
    pruner, evaluator, limits, _ = setup or _budget_setup(cfg, loaded, bundle, device, confirm=False)
    p = cfg.prune
    key = _fingerprint(loaded.model, cfg.data.name, cfg.data.root, p.criterion, p.layers, p.exclude, p.round_to,
                       p.min_channels, p.calib_images, p.sensitivity_images, cfg.seed, list(SPARSITIES))
    from .inference.latency import cache_dir

    cached = cache_dir() / "sensitivity" / f"{key}.json"
    if cached.is_file():
        sens = Sensitivity.from_dict(read_json(cached))
        log(f"sensitivity: cached ({cached})")
    else:
        sens = measure_sensitivity(evaluator, SPARSITIES, limits.round_to, limits.min_channels, progress=log)
        sens.meta["key"] = key
        import contextlib

        with contextlib.suppress(OSError):
            write_json(cached, sens.to_dict())
    if out is not None:
        from .report import plots

        out = Path(out)
        write_json(out / "sensitivity.json", sens.to_dict())
        plots.sensitivity_curves(sens.to_dict(), out / "sensitivity.png")
    return sens


# A latency plan's allocation is re-aimed until it measures within [FIT_LOW, 1] x the target. On an Intel Xeon, 4 seeds
# at latency 1/4 (benchmarks/results/budget_fmnist_quick_split1-1-3_ftlr0p1_{envelope,fit95}_paired.md): with 0.9 the
# ranked allocation was accepted at 0.91 of the target and every check met it; with 0.95 at 0.99, and the prune
# step's re-timing (+-5 % run to run) put it over the 5 % allowance in 2 of 4 seeds. 0.9 leaves room for that noise.
FIT_LOW = 0.9


def plan_budget(cfg: RunConfig, model_ref: str | Path | Loaded, out: str | Path | None = None, *,
                data: DataBundle | None = None, device: str | torch.device = "cpu", log: Log = print) -> BudgetPlan:
    """Choose every group's channels for ``cfg.prune.budget``: sensitivity, the budget's cost model (MACs,
    parameters, or a latency table measured on ``cfg.prune.budget_runtime`` here), the greedy allocation and
    ``search_candidates`` more scored by adaptive-BN accuracy (with ``search_finetune_steps`` > 0, the best few
    again after a short masked fine-tuning; the dense model's weights are left as they were). The plan also holds
    uniform pruning and the ranked allocation (:func:`~prunekit.pruning.search.ranked`) sized to the same budget,
    and uniform pruning that spends the whole budget (:func:`~prunekit.pruning.search.filled`; at a latency budget
    only when ``prune.budget_allocation`` is ``uniform_fill``)."""
    import time

    from .pruning import strip
    from .pruning.budget import Budget, ChannelFractions, ProfileCost
    from .pruning.search import filled, greedy_within, ranked, search, uniform

    t0 = time.perf_counter()
    p = cfg.prune
    if not p.budget:
        raise PrunekitError("no budget: set prune.budget (or --budget), e.g. macs=0.25x or latency_ms=0.5x")
    budget = Budget.parse(p.budget)
    device = torch.device(device)
    loaded = resolve(model_ref) if not isinstance(model_ref, Loaded) else model_ref
    bundle = model_data(loaded.spec, cfg.data, cfg.seed, data)
    setup = _budget_setup(cfg, loaded, bundle, device)
    pruner, evaluator, limits, fresh = setup
    sens = sensitivity(cfg, loaded, out, data=bundle, device=device, log=log, setup=setup)
    names, sizes = [g.name for g in pruner.groups], [g.size for g in pruner.groups]
    shape = loaded.input_shape
    runtime, by = None, None  # by: the cost whose savings rank channels for the ranked allocation, if not cost's
    if budget.kind == "latency_ms":
        from .inference.latency import (
            LatencyCost,
            LatencyTable,
            Timer,
            align,
            default_threads,
            measure_ratio,
        )
        from .surgery import shrink

        # channel counts the runtime's kernels are fast at (see inference/latency.py): the search only chooses
        # among those, and the latency table is measured on them
        limits = dataclasses.replace(limits, round_to=max(limits.round_to, align()))
        runtime = p.budget_runtime
        table = LatencyTable(Timer(runtime, p.budget_batch, default_threads(p.budget_threads)))
        dense = strip(pruner.model, copy=True).cpu()

        def build(keep: np.ndarray) -> nn.Module:  # the model with the last channels of every group removed
            removed = {g.name: list(range(int(k), g.size)) for g, k in zip(pruner.groups, keep, strict=True)
                       if int(k) < g.size}
            return shrink(dense, shape, removed, graph=pruner.graph, check=False).model

        cost = LatencyCost(dense, shape, ChannelFractions(pruner.graph, pruner.groups), table,
                           round_to=limits.round_to, progress=log, build=build)
        log(f"latency model on {runtime} (batch {p.budget_batch}): dense {cost.dense:.3f} ms measured, "
            f"{table.measured} layer timings made ({len(table.entries)} in the cache)")
        by = ProfileCost(dense, pruner.graph, pruner.groups, shape, "macs")  # ranked per MAC (see search.ranked)
    else:
        cost = ProfileCost(strip(pruner.model, copy=True), pruner.graph, pruner.groups, shape, budget.kind)
    target = budget.target(cost.dense)
    # aim a little under a measured budget: the final model is checked as measured (5% allowance)
    aim = target * (0.97 if budget.kind == "latency_ms" else 1.0)

    refine = _finetune_scorer(cfg, bundle, evaluator, device) if p.search_finetune_steps > 0 else None
    confirm = None  # the pick against uniform on fresh images, scored as the pick was (fine-tuned or not)
    if fresh is not None:
        rescore = refine.scoring(fresh) if refine else fresh

        def confirm(keep: Sequence[int]) -> np.ndarray:
            return rescore.per_image(keep)[0]
    elif p.search_confirm_images > 0 and p.search_candidates > 0:
        log("search: no training images left to confirm the pick on (prune.search_confirm_images): kept unconfirmed")

    scores = [evaluator.scores[g.id] for g in pruner.groups]  # the criterion's, on the dense model

    @functools.cache  # the search's candidate and the plan's first try share an aim
    def ranking(aim: float):
        return ranked(scores, names, sizes, cost, aim, limits, p.search_floor, p.global_norm, by)

    def searched(aim: float):
        if p.search_candidates > 0:
            return search(evaluator, sens, names, sizes, cost, aim, limits, p.search_candidates, cfg.seed,
                          progress=log, floor=p.search_floor, refine=refine, refine_top=p.search_finetune_top,
                          confirm=confirm, extra=[ranking(aim)])
        a = greedy_within(sens, uniform(names, sizes, cost, aim, limits), cost, aim, limits, p.search_floor)
        a.score = evaluator(a.keep)
        return a, []

    checks: list[dict[str, Any]] = []
    quiet = [cost.dense]  # the dense model's fastest latency seen while planning: see BudgetPlan.dense_fastest

    def measured_fit(make: Callable[[float], Any], what: str, aim: float):
        """``make(aim)``; for latency, its choice is built and timed (interleaved with the dense model) and the
        aim moved until the measurement lands in [FIT_LOW, 1] x target: a search exploits the table's errors (the
        allocation it likes best is often one the table misjudges), in either direction. Bracketing on the aim
        (geometric bisection once both sides are known), at most 4 tries; the least-pruned measured fit wins."""
        made = make(aim)
        if budget.kind != "latency_ms":
            return made
        best, best_ms, lo, hi = None, -1.0, None, None
        for attempt in range(4):
            alloc = made[0] if isinstance(made, tuple) else made
            r = measure_ratio(build(np.array(alloc.keep)), dense, shape, table.timer.careful(),
                              near=target / cost.dense, dense_ref=min(quiet))
            measured = r["ratio"] * cost.dense
            quiet.append(r["dense_ms"])
            checks.append({"allocation": what, "aim": aim, "predicted": alloc.cost, "measured": measured,
                           "dense_ms": r["dense_ms"]})
            log(f"{what}: aim {aim:.4g}, predicted {alloc.cost:.4g}, measured {measured:.4g} (target {target:.4g})")
            if measured <= target:
                if measured > best_ms:
                    best, best_ms = made, measured
                lo = aim
                if measured >= FIT_LOW * target:
                    break
            else:
                hi = aim
            if attempt == 3:
                break
            nxt = math.sqrt(lo * hi) if lo is not None and hi is not None else aim * target / measured * 0.98
            if abs(nxt - aim) <= 1e-3 * aim:
                break
            aim = nxt
            try:
                made = make(aim)
            except PrunekitError:  # an aim below what the limits allow: keep what was measured
                break
        return best if best is not None else made  # none fits as measured: the last (the prune step reports it)
    alloc, records = measured_fit(searched, "searched", aim)
    base = measured_fit(lambda a: uniform(names, sizes, cost, a, limits), "uniform", aim)
    rank = measured_fit(ranking, "ranked", aim)
    fill = None
    if budget.kind != "latency_ms" or p.budget_allocation == "uniform_fill":
        fill = measured_fit(lambda a: filled(names, sizes, cost, a, limits), "uniform_fill", aim)
    for a in (base, rank, *([fill] if fill is not None else [])):  # as in the search if it scored them, else now
        a.score = next(({k: r[k] for k in ("top1", "loss", "refined_top1", "refined_loss") if k in r}
                        for r in records if r["kept"] == list(a.keep)), None) or evaluator(a.keep)
    plan = BudgetPlan(str(budget), runtime, cost.dense, target, alloc, base, sens, records,
                      time.perf_counter() - t0, cost, checks, min(quiet) if budget.kind == "latency_ms" else None,
                      rank, fill)
    if out is not None:
        from .report import plots

        write_json(Path(out) / "budget_plan.json", plan.to_dict())
        plots.allocation([{"group": n, "total": t, "searched": k, "uniform": u, "ranked": r} for n, t, k, u, r in
                          zip(names, sizes, alloc.keep, base.keep, rank.keep, strict=True)], Path(out) / "allocation.png")
    log(f"budget {budget}: target {target:.4g} of dense {cost.dense:.4g}; {alloc.method}: predicted "
        f"{alloc.cost:.4g}, adaptive-BN top-1 {alloc.score['top1']:.2f}% (uniform {base.score['top1']:.2f}%, ranked "
        f"{rank.score['top1']:.2f}%)")
    return plan


def _chosen(plan: BudgetPlan, which: str) -> Any:
    """The allocation of ``plan`` that ``prune.budget_allocation`` names."""
    if which == "ranked" and plan.ranked is None:
        raise PrunekitError("this budget plan has no ranked allocation (BudgetPlan.ranked): plan it with "
                            "prunekit.steps.plan_budget")
    if which == "uniform_fill" and plan.filled is None:
        raise PrunekitError("this budget plan has no uniform_fill allocation (a latency plan makes it only when "
                            "prune.budget_allocation is uniform_fill): plan it with that setting")
    return {"uniform": plan.uniform, "ranked": plan.ranked, "uniform_fill": plan.filled}.get(which, plan.allocation)


def measure_cost(plan_or_budget: Any, model: nn.Module, input_shape: Sequence[int], cfg: RunConfig,
                 dense: nn.Module | None = None) -> dict[str, float]:
    """A plain model's cost in the budget's unit, as measured: ``{"measured": ...}`` (MACs/params counted;
    latency timed here). A relative latency budget with the ``dense`` model (and a plan's ``dense_cost``) times
    both interleaved and converts their ratio to the plan's units (``measured = ratio x dense_cost``), so a
    machine that got slower or faster since planning does not decide the check; ``ratio``, ``model_ms`` and
    ``dense_ms`` are recorded too."""
    from .cost import profile
    from .pruning.budget import Budget

    budget = Budget.parse(plan_or_budget.budget if hasattr(plan_or_budget, "budget") else plan_or_budget)
    if budget.kind == "latency_ms":
        from .inference.latency import Timer, default_threads, measure_models, measure_ratio

        p = cfg.prune
        timer = Timer(p.budget_runtime, p.budget_batch, default_threads(p.budget_threads)).careful()
        dense_cost = getattr(plan_or_budget, "dense_cost", None)
        if dense is not None and budget.relative and dense_cost:
            target = getattr(plan_or_budget, "target", None)
            r = measure_ratio(model, dense, input_shape, timer, near=target / dense_cost if target else None,
                              dense_ref=getattr(plan_or_budget, "dense_fastest", None) or dense_cost)
            return {"measured": r["ratio"] * dense_cost, **r}
        return {"measured": measure_models([model], input_shape, timer)[0]}
    prof = profile(model, input_shape)
    return {"measured": float(prof.macs if budget.kind == "macs" else prof.params)}


# --- prune -----------------------------------------------------------------------------------------------


@dataclass
class PruneResult:
    """A masked model saved to ``model_dir`` (with its masks), and what was pruned."""

    model_dir: Path
    test: dict[str, Any]
    sparsity: float
    config: dict[str, Any]
    totals: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "test": self.test, "sparsity": self.sparsity,
                "config": self.config, "totals": self.totals, "budget": self.budget}


def prune(cfg: RunConfig, model_dir: str | Path, out: str | Path, *, data: DataBundle | None = None,
          resume: bool = True, ctx: DistContext | None = None, log: Log = print,
          plan: BudgetPlan | None = None) -> PruneResult:
    """Prune the dense model in ``model_dir`` while training (``cfg.prune``: schedule, criterion, layers, and the
    stage's epochs/LR on top of ``cfg.train``). Writes ``OUT/model`` (masked), ``OUT/metrics.jsonl``,
    ``OUT/prune_config.json``, ``OUT/summary.md|json`` and the plots. With ``cfg.prune.budget`` every group
    prunes to its share of an allocation searched first (or the given ``plan``'s), and the pruned model is
    checked against the budget as measured (``OUT/budget.json``)."""
    from .pruning import prune_
    from .report.inspect import pruned_weight_magnitudes, write_inspection
    from .train import CHECKPOINT, read_metrics

    out = Path(out)
    ctx = ctx or DistContext()
    set_seed(cfg.seed)
    loaded = _dense(model_dir, "run `prunekit surgery` on it, or prune the dense model")
    bundle = model_data(loaded.spec, cfg.data, cfg.seed, data)
    tcfg = cfg.prune.training(cfg.train, cfg.seed, cfg.data.num_workers)
    spe = steps_per_epoch(bundle, tcfg.batch_size)
    pcfg = cfg.prune.pruning(cfg.seed)
    if cfg.prune.budget or plan is not None:  # every group's final sparsity; the schedule ramps each to it
        if plan is None and ctx.is_main:  # the candidate search only for the allocation that uses it
            pc = cfg if cfg.prune.budget_allocation == "searched" else dataclasses.replace(
                cfg, prune=dataclasses.replace(cfg.prune, search_candidates=0))
            if pc is not cfg and cfg.prune.search_candidates > 0:
                log(f"budget: pruning to the {cfg.prune.budget_allocation} allocation, so no candidate search "
                    "(--budget-allocation searched runs it)")
            plan = plan_budget(pc, loaded, out, data=bundle, device=ctx.device, log=log)
        chosen = _chosen(plan, cfg.prune.budget_allocation) if plan else None
        pcfg.allocation = _broadcast_allocation(chosen.sparsity() if chosen else None)
    model = loaded.model
    teacher = copy.deepcopy(model).eval() if tcfg.distill > 0 else None  # the dense model
    pruner = prune_(model, pcfg, loaded.input_shape, steps_per_epoch=spe, total_steps=max(1, round(tcfg.epochs * spe)))
    scores_before = pruner.criterion.scores(model, pruner.graph, pruner.groups)
    weights_before = pruned_weight_magnitudes(pruner, only_alive=False)
    resuming = resume and (out / CHECKPOINT).exists()
    if pcfg.criterion == "taylor" and pruner.schedule.begin_step == 0 and not resuming:
        from .data import iterate_batches

        batches = iterate_batches(bundle, "train", tcfg.batch_size, train=True, seed=cfg.seed + 1, device=ctx.device)
        model.to(ctx.device)
        pruner.calibrate(b for _, b in zip(range(pcfg.taylor_batches), batches, strict=False))
    doc = {"pruning": pcfg.to_dict(), "schedule": pruner.schedule.to_config(), "train": dataclasses.asdict(tcfg),
           "source_model": str(model_dir), "steps_per_epoch": spe}
    if ctx.is_main and not resuming:  # a refused resume leaves prune_config.json as it was
        write_json(out / "prune_config.json", doc)
    result = fit(model, bundle, tcfg, out, callbacks=[pruner], resume=resume, ctx=ctx, desc="prune", log=log,
                 teacher=teacher)
    totals: dict[str, Any] = {}
    if ctx.is_main:
        if resuming:
            write_json(out / "prune_config.json", doc)
        model.cpu()
        spec = loaded.spec
        spec.extra = {**spec.extra, "metrics": {"test": result["test"], "sparsity": pruner.sparsity()}}
        save(model, out / "model", spec)
        totals = write_inspection(pruner, out, scores_before, weights_before, read_metrics(out / "metrics.jsonl"))[
            "totals"]
    budget = None
    if plan is not None:  # the final model must meet the budget as measured
        from .pruning import strip

        small = pruner.shrink(check=False).model.eval()
        m = measure_cost(plan, small, loaded.input_shape, cfg, dense=strip(model, copy=True))
        measured = m["measured"]
        allowance = 1.05 if plan.runtime else 1.0 + 1e-9
        budget = {**plan.to_dict(), "used": cfg.prune.budget_allocation, "predicted": chosen.cost, **m,
                  "met": measured <= plan.target * allowance, "allowance": allowance}
        write_json(out / "budget.json", budget)
        log(f"budget {plan.budget} ({cfg.prune.budget_allocation} allocation): predicted {chosen.cost:.4g}, measured "
            f"{measured:.4g}, target {plan.target:.4g}: {'met' if budget['met'] else 'NOT met'}")
    return PruneResult(out / "model", result["test"], pruner.sparsity(), pcfg.to_dict(), totals, budget)


# --- surgery ---------------------------------------------------------------------------------------------


@dataclass
class Surgery:
    """One-shot channel selection for models without masks (``prunekit surgery --sparsity``)."""

    sparsity: float | None = None
    criterion: str = "l1"
    layers: str | list[str] = "pointwise"
    exclude: str | None = None
    scope: str = "local"
    round_to: int = 8  # as prune.round_to: multiples of 8 run faster in ONNX Runtime (benchmarks/round_to_bench.py)
    seed: int = 0


@dataclass
class SurgeryStepResult:
    model_dir: Path
    source: str
    result: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "source": self.source, **self.result}


def surgery(model_ref: str | Path, out: str | Path, how: Surgery | None = None, *, verify: bool = True,
            image_size: int | None = None, require_change: bool = True) -> SurgeryStepResult:
    """Physically delete channels and save the smaller model to ``out`` (verified against the masked model).

    Channels come from ``how.sparsity`` (one-shot by ``how.criterion``), else the model's saved masks, else the
    seed's rule (output channels whose weights are all zero). With nothing to remove: an error, or with
    ``require_change=False`` the model is saved unchanged."""
    from .pruning import OneShot, PruningConfig, prune_, strip
    from .surgery import shrink

    how = how or Surgery()
    loaded = resolve(model_ref)
    shape = loaded.input_shape if not image_size else (loaded.spec.input.channels, image_size, image_size)
    model = loaded.model.eval()
    if how.sparsity is not None:
        if how.sparsity == 0:
            raise PrunekitError("--sparsity 0 removes nothing")
        if loaded.pruner is not None:
            model = strip(model, copy=True)
        cfg = PruningConfig(schedule=OneShot(how.sparsity), criterion=how.criterion, scope=how.scope,
                            layers=how.layers, exclude=how.exclude, round_to=how.round_to, seed=how.seed)
        pruner = prune_(model, cfg, shape)
        pruner.step(0)
        res, source = pruner.shrink(check=verify), f"one-shot {how.criterion} {how.sparsity}"
    elif loaded.pruner is not None:
        res, source = loaded.pruner.shrink(check=verify), "saved masks"
    else:
        res, source = shrink(model, shape, "zero", check=verify), "zero-weight channels"
        if res.channels_removed == 0 and require_change:
            raise PrunekitError(f"{model_ref} has no masks and no all-zero channels; pass --sparsity S to choose "
                                "channels one-shot, or run `prunekit prune` first")
    spec = loaded.spec
    history = [*spec.extra.get("history", []), {"step": "surgery", "source": source, **res.to_dict()}]
    spec.extra = {k: v for k, v in spec.extra.items() if k not in ("pruning", "metrics")}
    spec.extra["history"] = history
    out = Path(out)
    save(res.model.cpu(), out, spec)
    return SurgeryStepResult(out, source, res.to_dict())


# --- export / quantize -----------------------------------------------------------------------------------

EXPORT_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts", "exported-program": "model.pt2"}
EXPORTED_SUFFIXES = (".onnx", ".ts", ".torchscript", ".jit", ".pt2")


def export(model_ref: str | Path, out: str | Path, fmt: str = "onnx", *, opset: int = 18, exporter: str = "auto",
           verify: bool = True) -> dict[str, Any]:
    """Export a model directory (masked models in their shrunk form) to ``out``, verified against PyTorch."""
    from .deploy import export_model

    loaded = resolve(model_ref)
    res = export_model(loaded, fmt, out, opset=opset, exporter=exporter, verify=verify)
    return {**res, "size_bytes": Path(out).stat().st_size}


def quant_settings(q: QuantizeCfg):
    """The int8 settings of ``q`` for this machine's CPU: each ``auto`` value chosen from the CPU class."""
    from .deploy.cpu import settings_for

    return settings_for(cpu_class=q.cpu, activations=q.activations, weights=q.weights, reduce_range=q.reduce_range,
                        per_channel=q.per_channel)


def times_prefixes(q: QuantizeCfg) -> bool:
    """Whether :func:`quantize` times int8 variants with the first layers in fp32: only when speed on this
    machine decides (objective latency or throughput, int8 settings for this CPU: ``cpu: auto``)."""
    return bool(q.fp32_prefix) and q.objective in ("latency", "throughput") and q.cpu == "auto"


def _fastest_prefix(builder: Any, settings: Any, g: Any, src: Path, q: QuantizeCfg, threads: int | None,
                    repeats: int, log: Log | None):
    """:func:`prunekit.deploy.mixed.fastest_prefix` on the guard's model, timed with ONNX Runtime on this machine
    (interleaved with the fp32 model) at the objective's batch size."""
    from .deploy.guard import write_candidate
    from .deploy.mixed import fastest_prefix, weighted_nodes
    from .inference.bench import DECISION_ROUNDS, compare_onnx

    batch = 1 if q.objective == "latency" else q.throughput_batch

    def time_ms(protos: dict[str, Any], with_fp32: bool) -> dict[str, float]:
        files: dict[str, Any] = {"fp32": src} if with_fp32 else {}
        files.update({k: write_candidate(p, builder.dir, f"prefix{k}.onnx") for k, p in protos.items()})
        lat = compare_onnx(files, (batch,), threads, repeats, rounds=DECISION_ROUNDS)
        return {k: v[str(batch)]["p50_ms"] for k, v in lat.items()}

    return fastest_prefix(lambda exclude: builder.build(exclude, settings), time_ms, g.proto, g.fp32_nodes,
                          weighted_nodes(builder.fp32_graph().graph), q.fp32_prefix, q.min_speedup, batch, log)


def _batch_for(shape: Sequence[int], batch_size: int, budget: int) -> int:
    """``batch_size`` capped so that one batch holds at most ``budget`` input values (224x224 models)."""
    return max(1, min(batch_size, budget // max(1, int(np.prod(shape)))))


def quantize(src: str | Path, out: str | Path, data: DataCfg, q: QuantizeCfg, *, batch_size: int = 64,
             evaluate: bool = False, seed: int = 0, bench: BenchCfg | None = None, bundle: DataBundle | None = None,
             log: Log | None = None) -> dict[str, Any]:
    """int8 static quantization of an fp32 ONNX model with settings for this machine's CPU, calibrated on
    ``q.calib_samples`` training images preprocessed as the model says.

    With ``evaluate``: fp32 and int8 top-1 on the held-out slice (the first ``q.eval_samples`` test images);
    when int8 loses more than ``q.tolerance`` points, the guard keeps the most sensitive layers in fp32
    (:mod:`prunekit.deploy.guard`); then both files are timed on this machine (ONNX Runtime, batch 1 and
    ``q.throughput_batch``, interleaved) and ``deploy`` names the file to ship for ``q.objective`` and why
    (:func:`prunekit.deploy.choose_confirmed`: a win of int8 on speed must hold when the two are timed again). Both
    files are kept either way."""
    from dataclasses import replace

    from .deploy import Int8Builder, calibration_batches, load_onnx_proto, onnx_meta
    from .deploy.artifact import FP32, INT8, Candidate, choose_confirmed
    from .deploy.guard import guard, layer_sensitivity, weight_range, write_candidate
    from .inference.bench import DECISION_ROUNDS, compare_onnx
    from .inference.runtime import evaluate_runtime, load_onnx

    src = Path(src)
    proto = load_onnx_proto(src)
    meta = onnx_meta(src, {p.key: p.value for p in proto.metadata_props})
    del proto
    bundle = model_data(meta.spec(), data, seed, bundle)
    settings = quant_settings(q)
    b = bench or BenchCfg()
    threads = b.threads or None
    calib_batch = _batch_for(meta.input_shape, batch_size, 1 << 21)
    eval_batch = _batch_for(meta.input_shape, max(batch_size, 256), 1 << 23)
    limit = q.eval_samples or None
    with Int8Builder(src, calibration_batches(bundle, q.calib_samples, calib_batch), method=q.method,
                     settings=settings, calib_source=f"{data.name} train") as builder:
        if not evaluate:
            res = builder.write(builder.build(), out)
            g = None
        else:
            fp32_ev = evaluate_runtime(load_onnx(src, threads), bundle, "test", eval_batch, limit)
            # id(model) -> (model, its evaluation): measured once each; holding the model keeps its id its own
            evals: dict[int, tuple[Any, dict[str, Any]]] = {}

            def top1(candidate) -> float:
                if id(candidate) not in evals:
                    path = write_candidate(candidate, builder.dir)
                    evals[id(candidate)] = candidate, evaluate_runtime(load_onnx(path, threads), bundle, "test",
                                                                       eval_batch, limit)
                return evals[id(candidate)][1]["top1"]

            def rank(candidate) -> list[dict[str, Any]]:
                return layer_sensitivity(candidate, builder.fp32_graph(), builder.kept, builder.input_name)

            build = builder.build
            if q.guard and settings.reduce_range and q.reduce_range is None:  # 7-bit weights chosen for this CPU
                full_range = replace(settings, reduce_range=False, reason=(
                    f"{settings.reason}; 8-bit weights instead: 7-bit ones lost more than {q.tolerance:g} top-1 "
                    "points on the held-out slice and 8-bit ones less (measured, so a saturating u8*s8 kernel "
                    "would have shown)"))
                wr, first = weight_range(lambda rr: builder.build(settings=settings if rr else full_range), top1,
                                         fp32_ev["top1"], q.tolerance)
                chosen = full_range if wr.full_range else settings  # every later build (guard, fp32 prefixes)
                if log and wr.drop_8bit is not None:
                    log(wr.summary())
                res_weights = wr.to_dict()

                def build(exclude=()):  # the measured fully int8 model is not built and evaluated again
                    return first if not exclude else builder.build(exclude, chosen)
            else:
                res_weights, chosen = None, settings
            g = guard(build, top1, fp32_ev["top1"], q.tolerance, q.max_fp32_layers if q.guard else 0, rank, log)
            kept, mixed = g.proto, None
            if times_prefixes(q):
                mixed = _fastest_prefix(builder, chosen, g, src, q, threads, b.repeats, log)
                if mixed.fp32_prefix:
                    drop = fp32_ev["top1"] - top1(mixed.proto)
                    if drop <= q.tolerance or drop <= g.drop:
                        kept = mixed.proto
                    else:  # more layers in fp32 and less accurate: noise on a small slice; keep the guard's model
                        n = mixed.fp32_prefix
                        mixed.reject(g.proto, f"the first {n} layer{'s' if n != 1 else ''} in fp32 ran faster but "
                                              f"lost {drop:.2f} top-1 points (> tolerance {q.tolerance:g})")
            res = builder.write(kept, out)
            int8_ev = evals[id(kept)][1]
    res["fp32_size_bytes"], res["size_bytes"] = src.stat().st_size, Path(out).stat().st_size
    if res["per_tensor_zeroed"] and log:
        from .deploy.quantize import zeroed_summary

        log(f"warning: {zeroed_summary(res['per_tensor_zeroed'])}")
    res["settings_reason"] = res["settings"]["reason"]  # the written model's (8-bit weights after a retry)
    if q.calib_samples > len(bundle.train):
        res["note"] = f"calib_samples {q.calib_samples} > {len(bundle.train)} training images: used all of them"
    if not evaluate:
        return res
    for name, ev in (("fp32", fp32_ev), ("int8", int8_ev)):
        res[name] = {"top1": ev["top1"], "top5": ev["top5"], "n": ev["n"]}
    res["agreement"] = 100.0 * float((fp32_ev["predictions"] == int8_ev["predictions"]).mean())
    res["top1_drop"] = res["fp32"]["top1"] - res["int8"]["top1"]
    res["guard"] = {**g.to_dict(), "summary": g.summary(), "enabled": q.guard}
    res["weights"] = res_weights
    res["mixed"] = mixed.to_dict() if mixed is not None else None
    if log:
        log(f"timing fp32 and int8 on this machine (batch 1 and {q.throughput_batch}) ...")
    lat = compare_onnx({FP32: src, INT8: out}, (1, q.throughput_batch), threads, b.repeats, rounds=DECISION_ROUNDS)
    res["latency"] = lat
    tb = str(q.throughput_batch)
    cand = {k: Candidate(k, str(p), p.stat().st_size, res[n]["top1"], lat[k]["1"]["p50_ms"], lat[k][tb]["img_per_s"])
            for k, p, n in ((FP32, src, "fp32"), (INT8, Path(out), "int8"))}
    note = "; ".join(([g.summary()] if len(g.tries) > 1 else []) + ([mixed.summary()] if mixed and mixed.fp32_prefix
                                                                       else []))

    def retime() -> tuple[Candidate, Candidate]:  # int8 won on speed: the two files timed again at that batch
        bt = 1 if q.objective == "latency" else q.throughput_batch
        if log:
            log(f"int8 looked faster: timing fp32 and int8 again (batch {bt}) ...")
        again = compare_onnx({FP32: src, INT8: out}, (bt,), threads, b.repeats, rounds=DECISION_ROUNDS)
        res["latency_again"] = again
        key, attr = ("p50_ms", "latency_ms") if q.objective == "latency" else ("img_per_s", "img_per_s")
        return replace(cand[FP32], **{attr: again[FP32][str(bt)][key]}), \
            replace(cand[INT8], **{attr: again[INT8][str(bt)][key]})

    decision, _ = choose_confirmed(cand[FP32], cand[INT8], retime, q.objective, q.tolerance, q.min_speedup,
                                   q.throughput_batch, note)
    res["deploy"] = decision.to_dict()
    from .inference.bench import load_average

    res["load_avg"] = load_average()
    return res


# --- evaluate / predict / inspect --------------------------------------------------------------------------


def evaluate(model_ref: str | Path, data: DataCfg, *, split: str = "test", batch_size: int = 256,
             device: str | torch.device = "cpu", seed: int = 0, bundle: DataBundle | None = None) -> dict[str, Any]:
    """Top-1/top-5 of a model directory (PyTorch, masked models with their masks) or an exported file (its
    runtime) on a split of the configured dataset."""
    from .inference.runtime import evaluate_runtime, load_runtime
    from .train import evaluate as torch_evaluate

    p = Path(str(model_ref))
    if p.suffix.lower() not in EXPORTED_SUFFIXES:  # a model directory (or torchvision:NAME)
        loaded = resolve(model_ref, device)
        return torch_evaluate(loaded.model, model_data(loaded.spec, data, seed, bundle), split, batch_size, device)
    rt = load_runtime(p)
    ev = evaluate_runtime(rt, model_data(rt.meta.spec(), data, seed, bundle), split, batch_size)
    return {k: v for k, v in ev.items() if k != "predictions"}


def predict(model_ref: str | Path, images: Sequence[str | Path], *, topk: int = 5, batch_size: int = 64,
            threads: int | None = None) -> tuple[Any, list[Any]]:
    """(runtime, top-k predictions) for image files with any model form."""
    from .inference import load_runtime
    from .inference import predict as run_predict

    rt = load_runtime(model_ref, threads)
    return rt, run_predict(rt, list(images), topk, batch_size)


def plan(model_ref: str | Path, layers: str | list[str] = "pointwise", exclude: str | None = None,
         leaf: Sequence[str] = (), image_size: int | None = None) -> dict[str, Any]:
    """Every channel group, which ones ``layers`` selects, and why the others are left alone."""
    from .graph import DependencyGraph
    from .memory import check_one_image
    from .pruning import strip

    loaded = resolve(model_ref)
    shape = loaded.input_shape if not image_size else (loaded.spec.input.channels, image_size, image_size)
    model = strip(loaded.model, copy=True) if loaded.pruner else loaded.model
    check_one_image(model, shape, "plan")
    graph = DependencyGraph(model, shape, list(leaf))
    graph.select(layers, exclude)  # raises a clear error when nothing matches
    return {"model": str(model_ref), **graph.plan(layers, exclude)}


def summary(model_ref: str | Path, image_size: int | None = None) -> dict[str, Any]:
    """Per-layer parameters and MACs, and for a masked model the kept/total channels of each group."""
    from .cost import profile
    from .memory import check_one_image
    from .pruning import strip

    loaded = resolve(model_ref)
    shape = loaded.input_shape if not image_size else (loaded.spec.input.channels, image_size, image_size)
    model = strip(loaded.model, copy=True) if loaded.pruner else loaded.model
    check_one_image(model, shape, "summary")
    prof = profile(model, shape)
    masked = None
    if loaded.pruner:
        masked = [{"group": g.name, "kept": int(a.sum()), "total": g.size}
                  for g, a in zip(loaded.pruner.groups, loaded.pruner.alive().values(), strict=True)]
    return {"model": str(model_ref), "arch": loaded.spec.arch, "profile": prof, "masked_groups": masked,
            "input_shape": list(shape)}


def latency_ms(rt: Any, repeats: int, batch: int = 1) -> float:
    """Median wall time of one ``predict_logits`` call at ``batch`` (after 5 warm-up calls)."""
    from .inference.bench import stats, time_runs

    x = np.random.default_rng(0).standard_normal((batch, *rt.input_shape)).astype(np.float32)
    return stats(time_runs(lambda: rt.predict_logits(x), warmup=5, repeats=repeats, max_seconds=20), batch)["p50_ms"]


def write_resolved_config(out: Path, cfg: RunConfig) -> None:
    write_text(out / "config.yaml", dump_config(cfg))
