"""Sensitivity: what each channel group can give up, measured one group at a time.

For every pruned group and sparsity ``s``, the group alone keeps its ``(1 - s)`` best channels (by the
pruner's criterion), BatchNorm statistics are re-estimated on a few training batches (adaptive BN: without it a
pruned network's stale statistics dominate the measurement, EagleEye, Li et al. 2020), and top-1 and loss are
measured on a held-out slice. The same adaptive-BN evaluation scores whole allocations during the search, and
on request :class:`FinetuneEvaluator` re-scores the best few after a short masked fine-tuning.

Data: every slice comes from the *training* split (calibration, evaluation and the search's confirmation images
are disjoint); the test split is never used to choose an allocation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from .budget import round_keep

SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Sensitivity:
    """Top-1 and loss of the model with one group pruned to each sparsity (all others dense)."""

    sparsities: list[float]
    dense: dict[str, float]
    groups: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # name -> [{sparsity, top1, loss}]
    meta: dict[str, Any] = field(default_factory=dict)

    def loss_increase(self, name: str, sparsity: float) -> float:
        """Loss increase of pruning group ``name`` to ``sparsity`` alone (linear between measured points,
        monotone: more pruning never looks better; extrapolated linearly beyond the last point)."""
        rows = self.groups[name]
        xs = [0.0] + [r["sparsity"] for r in rows]
        ys = list(np.maximum.accumulate([0.0] + [max(0.0, r["loss"] - self.dense["loss"]) for r in rows]))
        if sparsity <= xs[-1]:
            return float(np.interp(sparsity, xs, ys))
        slope = (ys[-1] - ys[-2]) / max(xs[-1] - xs[-2], 1e-9)
        return float(ys[-1] + slope * (sparsity - xs[-1]))

    def to_dict(self) -> dict[str, Any]:
        return {"sparsities": self.sparsities, "dense": self.dense, "groups": self.groups, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        return cls(list(d["sparsities"]), dict(d["dense"]), {k: list(v) for k, v in d["groups"].items()},
                   dict(d.get("meta", {})))


class AdaptiveBNEvaluator:
    """Scores channel selections of a pruner's model: re-estimate BatchNorm statistics on ``calib`` batches,
    then top-1 and mean loss on ``evaluation`` batches (or on the batches a function makes on each call, for a
    slice not worth holding in memory); the model's statistics are restored afterwards."""

    def __init__(self, pruner: Any, calib: Batches, evaluation: Batches | Callable[[], Iterable[Any]]):
        self.pruner, self.calib = pruner, list(calib)
        self.evaluation = evaluation if callable(evaluation) else list(evaluation)
        self.model: nn.Module = pruner.model
        self.bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and m.track_running_stats]
        self.scores = pruner.criterion.scores(self.model, pruner.graph, pruner.groups)
        self.count = 0

    def alive_for(self, keep: Sequence[int]) -> dict[int, np.ndarray]:
        """The ``keep[i]`` best channels of every group ``i``."""
        out = {}
        for g, k in zip(self.pruner.groups, keep, strict=True):
            order = np.lexsort((np.arange(g.size), -self.scores[g.id]))
            a = np.zeros(g.size, dtype=bool)
            a[order[:int(k)]] = True
            out[g.id] = a
        return out

    def __call__(self, keep: Sequence[int]) -> dict[str, float]:
        correct, losses = self.per_image(keep)
        n = max(1, len(correct))
        return {"top1": 100.0 * float(correct.sum()) / n, "loss": float(losses.sum()) / n}

    @torch.no_grad()
    def per_image(self, keep: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Whether each held-out image is classified correctly, and its loss (in the evaluation batches' order)."""
        self.count += 1
        before = self.pruner.alive()
        saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
                 for m in self.bns]
        was = self.model.training
        try:
            self.pruner.set_alive(self.alive_for(keep))
            self.model.eval()
            for m in self.bns:  # cumulative average over the calibration batches
                m.reset_running_stats()
                m.momentum = None
                m.train()
            for x, _ in self.calib:
                self.model(x)
            self.model.eval()
            correct, losses = [], []
            for x, y in (self.evaluation() if callable(self.evaluation) else self.evaluation):
                logits = self.model(x).float()
                losses.append(nnf.cross_entropy(logits, y, reduction="none").cpu())
                correct.append((logits.argmax(1) == y).cpu())
            if not correct:
                return np.zeros(0, dtype=bool), np.zeros(0)
            return torch.cat(correct).numpy(), torch.cat(losses).double().numpy()
        finally:
            for m, (mean, var, n, mom) in zip(self.bns, saved, strict=True):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(n)
                m.momentum = mom
            self.pruner.set_alive(before)
            self.model.train(was)


class FinetuneEvaluator:
    """Scores an allocation after ``steps`` SGD steps of the masked model (short-term fine-tuning, as NetAdapt
    does for each proposal): adaptive BN, then top-1 and loss on the held-out slice, as
    :class:`AdaptiveBNEvaluator`. Near the cheapest allowed model a pruned network scores near chance before any
    training, so adaptive BN alone ranks allocations poorly there. This score did not rank them better either on
    the quick Fashion-MNIST setup (300 steps, 1000 held-out images: rank correlation with the final top-1 -0.36
    and -0.51 over the allocation studies' 8 + 8, ``benchmarks/results/search_finetune_proxy.md``): the search
    uses it only when asked (``prune.search_finetune_steps``). Every candidate sees the same batches in the same
    order; the weights, BatchNorm statistics, masks and the global random state are restored afterwards.

    ``batches()`` yields training batches (disjoint from the held-out slice) without end; ``optimizer(model)``
    builds the optimizer: this module takes both from its caller and imports no trainer."""

    def __init__(self, scorer: AdaptiveBNEvaluator, batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 optimizer: Callable[[nn.Module], torch.optim.Optimizer], steps: int, seed: int = 0):
        self.scorer, self.batches, self.optimizer, self.steps, self.seed = scorer, batches, optimizer, int(steps), seed

    def __call__(self, keep: Sequence[int]) -> dict[str, float]:
        return self._trained(keep, self.scorer)

    def scoring(self, scorer: AdaptiveBNEvaluator) -> FinetuneEvaluator:
        """The same fine-tuning (batches, optimizer, steps, seed), scored by ``scorer`` (e.g. on other images)."""
        return FinetuneEvaluator(scorer, self.batches, self.optimizer, self.steps, self.seed)

    def per_image(self, keep: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`AdaptiveBNEvaluator.per_image` after the fine-tuning steps."""
        return self._trained(keep, self.scorer.per_image)

    def _trained(self, keep: Sequence[int], score: Callable[[Sequence[int]], Any]) -> Any:
        s = self.scorer
        model, pruner = s.model, s.pruner
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        before = pruner.alive()
        was = model.training
        try:
            pruner.set_alive(s.alive_for(keep))
            model.train()
            opt = self.optimizer(model)
            cuda = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
            with torch.enable_grad(), torch.random.fork_rng(devices=cuda):  # the same dropout for every candidate
                torch.manual_seed(self.seed)
                for _, (x, y) in zip(range(self.steps), self.batches(), strict=False):
                    loss = nnf.cross_entropy(model(x).float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            return score(keep)
        finally:
            model.load_state_dict(state)
            for p in model.parameters():
                p.grad = None
            pruner.set_alive(before)
            model.train(was)


def measure_sensitivity(evaluator: AdaptiveBNEvaluator, sparsities: Iterable[float] = SPARSITIES,
                        round_to: int = 1, min_channels: int = 1,
                        progress: Callable[[str], None] | None = None) -> Sensitivity:
    """One adaptive-BN evaluation per (group, sparsity), all other groups dense."""
    groups = evaluator.pruner.groups
    sizes = [g.size for g in groups]
    sparsities = sorted(float(s) for s in sparsities)
    dense = evaluator(sizes)
    result = Sensitivity(sparsities, dense)
    for i, g in enumerate(groups):
        rows = []
        for s in sparsities:
            k = round_keep(g.size * (1 - s), g.size, round_to, min_channels)
            keep = list(sizes)
            keep[i] = k
            r = evaluator(keep)
            rows.append({"sparsity": s, "kept": k, "top1": r["top1"], "loss": r["loss"]})
        result.groups[g.name] = rows
        if progress:
            worst = rows[-1]
            progress(f"sensitivity {i + 1}/{len(groups)} {g.name}: top-1 {dense['top1']:.1f}% -> "
                     f"{worst['top1']:.1f}% at {worst['sparsity']:.0%}")
    result.meta = {"evaluations": evaluator.count, "calib_images": sum(len(y) for _, y in evaluator.calib),
                   "eval_images": sum(len(y) for _, y in evaluator.evaluation)}
    return result
