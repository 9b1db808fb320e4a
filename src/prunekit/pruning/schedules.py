"""Pruning schedules with TF Model Optimization semantics: ``schedule(step) -> (should_prune, sparsity)``.

``sparsity`` is the fraction of channels to remove from each selected group. Pruning happens when
``begin_step <= step <= end_step`` (``end_step=-1``: forever) and ``(step - begin_step) % frequency == 0``.

>>> s = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=100, power=3, frequency=10)
>>> s(0), s(5)[0], round(s(50)[1], 4), s(100)
((True, 0.0), False, 0.4375, (True, 0.5))
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ..errors import PrunekitError
from ..schema import F

SCHEDULES: dict[str, type[Schedule]] = {}


def register_schedule(name: str):
    def deco(cls):
        SCHEDULES[name] = cls
        cls.kind = name
        return cls

    return deco


def _check_sparsity(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
    return float(v)


def _check_int(v: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
        raise ValueError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


class Schedule(ABC):
    """Decides at each step whether to prune and to which sparsity."""

    kind = "schedule"
    begin_step: int
    end_step: int
    frequency: int

    def _validate_steps(self, allow_forever: bool) -> None:
        self.begin_step = _check_int(self.begin_step, "begin_step", 0)
        self.end_step = _check_int(self.end_step, "end_step")
        self.frequency = _check_int(self.frequency, "frequency")
        if self.frequency <= 0:
            raise ValueError(f"frequency must be > 0, got {self.frequency}")
        if self.end_step == -1 and not allow_forever:
            raise ValueError("end_step cannot be -1 for this schedule")
        if self.end_step != -1:
            if self.end_step < 0:
                raise ValueError(f"end_step must be -1 or >= 0, got {self.end_step}")
            if self.end_step < self.begin_step:
                raise ValueError(f"begin_step ({self.begin_step}) must be <= end_step ({self.end_step})")

    def should_prune(self, step: int) -> bool:
        in_range = step >= self.begin_step and (step <= self.end_step or self.end_step < 0)
        return in_range and (step - self.begin_step) % self.frequency == 0

    @abstractmethod
    def sparsity(self, step: int) -> float:
        """Target sparsity at ``step``."""

    @property
    @abstractmethod
    def final_sparsity(self) -> float:
        """Sparsity at the end of the schedule."""

    def __call__(self, step: int) -> tuple[bool, float]:
        return self.should_prune(step), self.sparsity(step)

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""

    def to_config(self) -> dict[str, Any]:
        return {"class_name": type(self).__name__, "kind": self.kind, "config": self.get_config()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()  # type: ignore[attr-defined]


@register_schedule("constant")
class ConstantSparsity(Schedule):
    """Constant target sparsity, applied every ``frequency`` steps in ``[begin_step, end_step]``."""

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int = -1, frequency: int = 100):
        self.target_sparsity = _check_sparsity(target_sparsity, "target_sparsity")
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self._validate_steps(allow_forever=True)

    def sparsity(self, step: int) -> float:
        return self.target_sparsity

    @property
    def final_sparsity(self) -> float:
        return self.target_sparsity

    def get_config(self) -> dict[str, Any]:
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency}


@register_schedule("polynomial_decay")
class PolynomialDecay(Schedule):
    """``final + (initial - final) * (1 - p) ** power`` with ``p = clip((step - begin) / (end - begin), 0, 1)``.

    ``power=3`` is AGP (Zhu & Gupta, 2017); ``power=1`` is linear.
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3, frequency: int = 100):
        self.initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
        self._final = _check_sparsity(final_sparsity, "final_sparsity")
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power <= 0:
            raise ValueError(f"power must be a positive number, got {power!r}")
        self.power = power
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self._validate_steps(allow_forever=False)

    def sparsity(self, step: int) -> float:
        span = self.end_step - self.begin_step
        p = 1.0 if span == 0 else min(1.0, max(0.0, (step - self.begin_step) / span))
        return self._final + (self.initial_sparsity - self._final) * (1.0 - p) ** self.power

    @property
    def final_sparsity(self) -> float:
        return self._final

    def get_config(self) -> dict[str, Any]:
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self._final, "power": self.power,
                "begin_step": self.begin_step, "end_step": self.end_step, "frequency": self.frequency}


@register_schedule("agp")
class AGP(PolynomialDecay):
    """Automated gradual pruning: a cubic PolynomialDecay."""

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 frequency: int = 100, power: float = 3):
        super().__init__(initial_sparsity, final_sparsity, begin_step, end_step, power, frequency)


@register_schedule("linear")
class Linear(PolynomialDecay):
    """Sparsity grows linearly from initial to final: a PolynomialDecay with ``power=1``."""

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 frequency: int = 100, power: float = 1):
        super().__init__(initial_sparsity, final_sparsity, begin_step, end_step, power, frequency)


@register_schedule("one_shot")
class OneShot(ConstantSparsity):
    """Prune to the target once, at ``begin_step``, then keep the masks (fine-tune afterwards)."""

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int | None = None, frequency: int = 1):
        super().__init__(target_sparsity, begin_step, begin_step, 1)

    def get_config(self) -> dict[str, Any]:
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step}


_ALIASES = {"polynomial": "polynomial_decay", "poly": "polynomial_decay", "constant_sparsity": "constant",
            "oneshot": "one_shot", "ConstantSparsity": "constant", "PolynomialDecay": "polynomial_decay"}
_EPOCH_KEYS = {"begin_epoch": "begin_step", "end_epoch": "end_step", "frequency_epochs": "frequency"}


def from_config(config: dict[str, Any], steps_per_epoch: int | None = None) -> Schedule:
    """Build a schedule from ``{"kind": ..., **args}`` or tfmot-style ``{"class_name": ..., "config": {...}}``.

    Epoch-based keys (``begin_epoch``, ``end_epoch``, ``frequency_epochs``) are converted with ``steps_per_epoch``.
    ``final_sparsity`` is accepted for every kind (as ``target_sparsity`` for constant/one_shot).
    """
    if not isinstance(config, dict):
        raise ValueError(f"a schedule config must be a mapping, got {type(config).__name__}")
    if "config" in config:
        kind = config.get("kind") or config.get("class_name")
        args = dict(config["config"])
    else:
        args = dict(config)
        kind = args.pop("kind", None)
    kind = _ALIASES.get(kind, kind)
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; valid: {', '.join(sorted(SCHEDULES))}")
    for ek, sk in _EPOCH_KEYS.items():
        if ek in args:
            if steps_per_epoch is None:
                raise ValueError(f"{ek} needs steps_per_epoch")
            v = args.pop(ek)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{ek} must be a number, got {v!r}")
            args[sk] = -1 if (sk == "end_step" and v == -1) else max(1 if sk == "frequency" else 0,
                                                                       int(round(v * steps_per_epoch)))
    cls = SCHEDULES[kind]
    if issubclass(cls, ConstantSparsity):
        if "final_sparsity" in args:
            args["target_sparsity"] = args.pop("final_sparsity")
        args.pop("initial_sparsity", None)
        args.pop("power", None)
    import inspect

    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = [k for k in args if k not in valid]
    if bad:
        raise ValueError(f"schedule '{kind}' got unknown argument '{bad[0]}'; valid: {', '.join(valid)}")
    try:
        return cls(**args)
    except TypeError as e:
        raise ValueError(f"schedule '{kind}': {e}") from None


@dataclass
class ScheduleSpec:
    """A schedule as configuration: kind and sparsities, with its steps given in steps *or epochs*.

    :meth:`build` resolves it against the training run (steps per epoch, total steps) into a :class:`Schedule`.
    Unset ``end_step``/``end_epoch`` ends pruning at 60% of the run; unset ``frequency`` gives about ten updates.

    >>> ScheduleSpec(final_sparsity=0.5, end_epoch=2).build(steps_per_epoch=100, total_steps=500)
    PolynomialDecay(initial_sparsity=0.0, final_sparsity=0.5, power=3.0, begin_step=0, end_step=200, frequency=20)
    """

    kind: str = F("polynomial_decay", "schedule kind", choices=lambda: list(SCHEDULES))
    initial_sparsity: float = F(0.0, "sparsity at begin", lo=0, hi=1, hi_open=True)
    final_sparsity: float = F(0.5, "sparsity at end (target for constant/one_shot)", lo=0, hi=1, hi_open=True)
    begin_step: int | None = F(None, "first pruning step (default: begin_epoch converted)", lo=0)
    end_step: int | None = F(None, "last pruning step (default: end_epoch converted)", lo=-1)
    begin_epoch: float = F(0.0, "first pruning epoch (used when begin_step is unset)", lo=0)
    end_epoch: float | None = F(None, "last pruning epoch (default: 60% of the pruning run)", lo=0)
    frequency: int | None = F(None, "prune every N steps (default: ~10 updates over the schedule)", lo=1)
    power: float = F(3.0, "polynomial exponent (3 = AGP)", lo=0, lo_open=True, hi=100)

    def check(self, path: str = "prune.schedule") -> None:
        if self.begin_step is not None and self.end_step is not None and self.end_step != -1 \
                and self.begin_step > self.end_step:
            raise PrunekitError(f"{path}.begin_step ({self.begin_step}) must be <= end_step ({self.end_step})")
        if self.end_epoch is not None and self.begin_epoch > self.end_epoch:
            raise PrunekitError(f"{path}.begin_epoch ({self.begin_epoch}) must be <= end_epoch ({self.end_epoch})")

    def build(self, steps_per_epoch: int | None = None, total_steps: int | None = None) -> Schedule:
        """The step-based schedule; epoch-based and default values need ``steps_per_epoch``/``total_steps``."""
        self.check()

        def need(what: str) -> None:
            raise PrunekitError(f"prune.schedule: {what} (pass steps_per_epoch and total_steps, or give steps)")

        if self.begin_step is not None:
            begin = self.begin_step
        elif self.begin_epoch == 0:
            begin = 0
        elif steps_per_epoch is None:
            need("begin_epoch needs the number of steps per epoch")
        else:
            begin = int(round(self.begin_epoch * steps_per_epoch))
        if self.end_step is not None:
            end = self.end_step
        elif self.end_epoch is not None:
            if steps_per_epoch is None:
                need("end_epoch needs the number of steps per epoch")
            end = int(round(self.end_epoch * steps_per_epoch))
        elif self.kind == "one_shot":
            end = begin
        elif total_steps is None:
            need("the default end (60% of the run) needs the run's length")
        else:
            end = max(begin, int(round(0.6 * total_steps)))
        final = self.final_sparsity
        if final <= 0:
            raise PrunekitError("prune: final sparsity is 0, nothing would be pruned")
        if self.initial_sparsity > final and self.kind not in ("constant", "one_shot"):
            raise PrunekitError(f"prune.schedule.initial_sparsity ({self.initial_sparsity}) exceeds the final "
                                f"sparsity ({final})")
        if self.kind == "one_shot":
            return OneShot(final, begin_step=begin)
        freq = self.frequency or max(1, (end - begin) // 10 if end > begin else 1)
        if self.kind == "constant":
            return ConstantSparsity(final, begin_step=begin, end_step=end, frequency=freq)
        if end <= begin and end != -1:
            raise PrunekitError(f"prune.schedule: end step {end} must be after begin step {begin} for {self.kind} "
                                "(increase prune.epochs or set end_epoch)")
        cls = SCHEDULES[self.kind]
        kwargs: dict[str, Any] = {"initial_sparsity": self.initial_sparsity, "final_sparsity": final,
                                  "begin_step": begin, "end_step": end, "frequency": freq}
        if self.kind == "polynomial_decay":
            kwargs["power"] = self.power
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise PrunekitError(f"prune.schedule: {e}") from None
