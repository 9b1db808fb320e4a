"""Gradual channel pruning: schedules, criteria, masks, policy and the Pruner (one concept per file)."""

from .criteria import CRITERIA, Criterion, get_criterion, register_criterion
from .masks import MASK_MODULE, MaskBank, strip
from .policy import SCOPES, TARGETS, Override, PruningConfig
from .pruner import Pruner, prune_, restore
from .schedules import (
    AGP,
    SCHEDULES,
    ConstantSparsity,
    Linear,
    OneShot,
    PolynomialDecay,
    Schedule,
    ScheduleSpec,
    from_config,
    register_schedule,
)

__all__ = [
    "AGP", "CRITERIA", "MASK_MODULE", "SCHEDULES", "SCOPES", "TARGETS", "ConstantSparsity", "Criterion", "Linear",
    "MaskBank", "OneShot", "Override", "PolynomialDecay", "Pruner", "PruningConfig", "Schedule", "ScheduleSpec",
    "from_config", "get_criterion", "prune_", "register_criterion", "register_schedule", "restore", "strip",
]
