"""The pruner: a schedule, a criterion and a policy driving channel masks inside any training loop.

>>> import torch
>>> from prunekit.models import create_model
>>> from prunekit.pruning import OneShot, PruningConfig, prune_
>>> model = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)
>>> pruner = prune_(model, PruningConfig(schedule=OneShot(0.5)), (1, 28, 28))
>>> rec = pruner.step(0)            # call once per training step, before the forward pass
>>> round(pruner.sparsity(), 2)
0.5
>>> small = pruner.shrink().model   # physically smaller, same outputs as the masked model
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PrunekitError
from ..graph import DependencyGraph, MaskHooks, mask_points
from .budget import ProfileCost
from .criteria import get_criterion
from .masks import MaskBank, attach_bank, strip
from .policy import Allocator, PruningConfig
from .schedules import Schedule

PLAN_VERSION = 1


class Pruner:
    """Holds the masks of one model and updates them on schedule.

    Use :func:`prune_` to create one. In a training loop call ``pruner.step(step)`` before each forward pass.
    """

    def __init__(self, model: nn.Module, config: PruningConfig, input_shape: Sequence[int],
                 steps_per_epoch: int | None = None, total_steps: int | None = None,
                 graph: DependencyGraph | None = None, group_names: Sequence[str] | None = None):
        config.validate()
        self.model, self.config = model, config
        self.input_shape = _input_shape(input_shape)
        self.schedule: Schedule = config.build_schedule(steps_per_epoch, total_steps)
        self.graph = graph or DependencyGraph(model, self.input_shape, config.leaf_modules)
        if group_names is None:
            groups = self.graph.select(config.layers, config.exclude)
        else:
            missing = [n for n in group_names if n not in self.graph.by_name]
            if missing:
                raise PrunekitError(f"saved pruning plan names group '{missing[0]}', which this model does not have")
            groups = [self.graph.by_name[n] for n in group_names]
        self.groups = groups
        self.criterion = get_criterion(config.criterion, **({"seed": config.seed} if config.criterion == "random"
                                                            else {}))
        cost = ProfileCost(model, self.graph, groups, self.input_shape, config.target) \
            if config.target != "channels" else None
        self.allocator = Allocator(self.graph, groups, config, self.schedule.final_sparsity, cost)
        self.bank: MaskBank = attach_bank(model, groups)
        self.bank.meta = self._plan()
        self.hooks = MaskHooks(model, mask_points(self.graph, groups), self.bank.flat, self.bank.version,
                               parts=self.bank.masks)
        self.history: list[dict[str, Any]] = []
        self.last_step = -1
        total = sum(g.size for g in groups)
        self._taylor = {"score": torch.zeros(total + 1, dtype=torch.float64), "z": torch.zeros(total + 1,
                        dtype=torch.float64), "count": 0, "pending": False}
        self._collecting = False

    # -- the plan that save/load round-trips --
    def _plan(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "config": self.config.to_dict(),
                "schedule": self.schedule.to_config(), "input_shape": list(self.input_shape),
                "groups": [{"name": g.name, "size": g.size} for g in self.groups]}

    # -- masks --
    def alive(self) -> dict[int, np.ndarray]:
        return {g.id: (m.detach().cpu().numpy() > 0.5) for g, m in zip(self.groups, self.bank.masks(), strict=True)}

    def set_alive(self, alive: dict[int, np.ndarray]) -> None:
        with torch.no_grad():
            for g, m in zip(self.groups, self.bank.masks(), strict=True):
                m.copy_(torch.as_tensor(alive[g.id], dtype=m.dtype, device=m.device))
        self.hooks.invalidate()

    def removed(self) -> dict[str, list[int]]:
        """``{group name: [pruned channel indices]}`` (what surgery deletes)."""
        return {g.name: np.flatnonzero(~a).tolist() for g, a in zip(self.groups, self.alive().values(), strict=True)
                if (~a).any()}

    def sparsity(self) -> float:
        """Fraction of the selected channels currently pruned."""
        total = sum(g.size for g in self.groups)
        kept = sum(int(a.sum()) for a in self.alive().values())
        return 1.0 - kept / total if total else 0.0

    # -- the training-loop interface --
    def _next_prune_step(self, step: int) -> int | None:
        s = self.schedule
        if step <= s.begin_step:
            return s.begin_step
        k = -(-(step - s.begin_step) // s.frequency)
        nxt = s.begin_step + k * s.frequency
        if s.end_step >= 0 and nxt > s.end_step:
            return s.end_step if step <= s.end_step else None
        return nxt

    def step(self, step: int) -> dict[str, Any] | None:
        """Advance to training step ``step`` (call before each forward pass, in any training loop): updates the
        masks when the schedule prunes at ``step`` and returns a log record when it did."""
        self._finish_batch()
        self.last_step = step
        should, s = self.schedule(step)
        if self.schedule.end_step >= 0 and step == self.schedule.end_step:
            should, s = True, self.schedule.final_sparsity  # reach the final target even if off-frequency
        rec = self._prune_to(s, step) if should and s > 0 else None
        if self.criterion.needs_data:
            nxt = self._next_prune_step(step + 1)
            self._set_collecting(nxt is not None and nxt - step <= self.config.taylor_batches)
        return rec

    def _prune_to(self, sparsity: float, step: int = 0) -> dict[str, Any]:
        """Prune to ``sparsity`` now (monotone: channels already pruned stay pruned)."""
        data = self._taylor_scores() if self.criterion.needs_data else None
        scores = self.criterion.scores(self.model, self.graph, self.groups, step=step, data=data)
        alive = self.allocator.allocate(scores, self.alive(), sparsity)
        self._sync(alive)
        self.set_alive(alive)
        if self.criterion.needs_data:
            self._reset_taylor()
        kept = sum(int(a.sum()) for a in alive.values())
        total = sum(g.size for g in self.groups)
        rec = {"event": "prune", "target_sparsity": float(sparsity), "sparsity": 1 - kept / total,
               "channels_kept": kept, "channels_total": total}
        self.history.append({"step": step, **rec})
        return rec

    def _sync(self, alive: dict[int, np.ndarray]) -> None:
        """Under DDP every rank must hold identical masks: take rank 0's decision."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([torch.as_tensor(alive[g.id], dtype=torch.float32) for g in self.groups])
            dev = self.bank.masks()[0].device if self.groups else torch.device("cpu")
            flat = flat.to(dev)
            dist.broadcast(flat, 0)
            off = 0
            for g in self.groups:
                alive[g.id] = flat[off:off + g.size].cpu().numpy() > 0.5
                off += g.size

    def summary(self) -> dict[str, Any]:
        """What the trainer logs with each epoch."""
        return {"sparsity": self.sparsity()}

    # -- Taylor importance: activation x gradient at each channel gate --
    def _set_collecting(self, on: bool) -> None:
        if on and not self._collecting:
            self.hooks.observer = self._observe
        elif not on and self._collecting:
            self.hooks.observer = None
        self._collecting = on

    def _observe(self, point, before: torch.Tensor, after: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and after.requires_grad and self.model.training):
            return
        dims = [d for d in range(after.ndim) if d != point.cdim]
        idx = torch.as_tensor(point.index, device=after.device)
        acc = self._taylor

        def grad_hook(g: torch.Tensor, before=before, idx=idx, dims=dims) -> None:
            z = (before.detach().float() * g.detach().float()).sum(dim=dims).double()
            acc["z"] = acc["z"].to(z.device)
            acc["z"].index_add_(0, idx, z)
            acc["pending"] = True

        after.register_hook(grad_hook)

    def _finish_batch(self) -> None:
        t = self._taylor
        if t["pending"]:
            z = _all_reduce_sum(t["z"].clone())
            t["score"] = t["score"].to(z.device) + z.pow(2)
            t["count"] += 1
            t["z"].zero_()
            t["pending"] = False

    def _taylor_scores(self) -> dict[int, np.ndarray] | None:
        self._finish_batch()
        t = self._taylor
        if t["count"] == 0:
            return None
        flat = (t["score"] / t["count"]).cpu().numpy()
        out, off = {}, 0
        for g in self.groups:
            out[g.id] = flat[off:off + g.size]
            off += g.size
        return out

    def _reset_taylor(self) -> None:
        t = self._taylor
        t["score"].zero_()
        t["z"].zero_()
        t["count"] = 0
        t["pending"] = False

    def calibrate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  loss_fn=nn.functional.cross_entropy) -> int:
        """Collect Taylor statistics from ``batches`` (forward + backward, no optimizer step); returns #batches."""
        was = self.model.training
        self.model.train()
        self._set_collecting(True)
        n = 0
        try:
            for x, y in batches:
                self._finish_batch()
                self.model.zero_grad(set_to_none=True)
                loss_fn(self.model(x), y).backward()
                n += 1
            self._finish_batch()
        finally:
            self.model.zero_grad(set_to_none=True)
            self._set_collecting(False)
            self.model.train(was)
        return n

    # -- checkpoints --
    def fingerprint(self) -> str:
        """The pruning setup a training checkpoint was written with (config, resolved schedule, groups): a run
        with another allocation or schedule must not resume it."""
        return repr((self.config, self.schedule, [g.name for g in self.groups]))

    def state_dict(self) -> dict[str, Any]:
        t = self._taylor
        return {"last_step": self.last_step, "history": list(self.history),
                "taylor": {"score": t["score"].cpu(), "z": t["z"].cpu(), "count": t["count"],
                           "pending": t["pending"]}, "collecting": self._collecting}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state.get("last_step", -1))
        self.history = list(state.get("history", []))
        t = state.get("taylor")
        if t:
            self._taylor = {"score": t["score"].clone(), "z": t["z"].clone(), "count": int(t["count"]),
                            "pending": bool(t["pending"])}
        self._set_collecting(bool(state.get("collecting", False)))
        self.hooks.invalidate()

    # -- leaving the masked world --
    def bake(self) -> None:
        """Zero the weights of pruned channels (producers, BN affine, consumer inputs, coupled parameters): the
        seed's flow, where surgery then deletes the channels whose weights are all zero
        (``prunekit.shrink(model, input_shape, "zero")``)."""
        keep_elem = self.graph.keep_elements(self.removed())
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for s in self.graph.state.slots:
                drop = torch.as_tensor(np.flatnonzero(~keep_elem[s.labels]), dtype=torch.long)
                if len(drop) == 0:
                    continue
                if s.kind == "param":
                    t = self.model.get_parameter(s.module) if "." in s.module or hasattr(self.model, s.module) \
                        else None
                    if t is not None:
                        t.index_fill_(s.dim, drop.to(t.device), 0.0)
                    continue
                m = modules[s.module]
                if s.kind in ("out", "channel"):
                    for name in ("weight", "bias"):
                        t = getattr(m, name, None)
                        if isinstance(t, torch.Tensor):
                            t.index_fill_(0, drop.to(t.device), 0.0)
                elif s.kind == "in":
                    m.weight.index_fill_(1, drop.to(m.weight.device), 0.0)

    def shrink(self, check: bool = True, inputs: torch.Tensor | None = None):
        """A physically smaller copy of the model (hooks and masks stripped), verified against the masked model:
        :func:`prunekit.shrink` with this pruner's pruned channels."""
        from ..surgery import shrink

        return shrink(strip(self.model, copy=True), self.input_shape, self.removed(), graph=self.graph, check=check,
                      inputs=inputs)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` across ranks in place (no-op without a process group): Taylor statistics under DDP."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _input_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or min(out) < 1:
        raise PrunekitError(f"input_shape must be (channels, height, width) of one input, got {shape!r}")
    return out


def prune_(model: nn.Module, config: PruningConfig, input_shape: Sequence[int], *, steps_per_epoch: int | None = None,
           total_steps: int | None = None, graph: DependencyGraph | None = None) -> Pruner:
    """Attach channel masks to ``model`` (in place) and return the :class:`Pruner` that drives them.

    ``input_shape`` is ``(C, H, W)`` of one input (channel groups, shapes and costs depend on it);
    ``steps_per_epoch``/``total_steps`` resolve a :class:`ScheduleSpec` given in epochs."""
    return Pruner(model, config, input_shape, steps_per_epoch, total_steps, graph)


def restore(model: nn.Module, plan: dict[str, Any], masks: dict[str, torch.Tensor]) -> Pruner:
    """Re-attach a saved pruning plan and its masks to a freshly loaded model."""
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION:
        raise PrunekitError(f"unsupported pruning plan version {plan.get('version') if isinstance(plan, dict) else plan!r}")
    try:
        cfg = PruningConfig.from_dict({**plan["config"], "schedule": plan["schedule"]})
        names = [g["name"] for g in plan["groups"]]
        sizes = {g["name"]: int(g["size"]) for g in plan["groups"]}
        shape = plan["input_shape"]
    except (KeyError, TypeError) as e:
        raise PrunekitError(f"pruning plan is incomplete: missing {e}") from None
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s >= 1 for s in shape)):
        raise PrunekitError(f"pruning plan: input_shape must be [channels, height, width], got {shape!r}"[:300])
    from ..memory import check_one_image

    check_one_image(model, shape, "tracing the saved pruning plan",  # the graph is traced at this shape
                    "the plan's input_shape (extra.pruning in model.json) is too large")
    pruner = Pruner(model, cfg, shape, group_names=names)
    alive = {}
    for g in pruner.groups:
        m = masks.get(g.name)
        if m is None or m.ndim != 1 or len(m) != sizes[g.name] or len(m) != g.size:
            raise PrunekitError(f"saved masks do not match group '{g.name}' ({g.size} channels)")
        alive[g.id] = m.cpu().numpy() > 0.5
    pruner.set_alive(alive)
    return pruner
