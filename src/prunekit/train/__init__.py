"""Training: the loop, optimizers/schedules, checkpoints, distributed helpers."""

from .distributed import DistContext, init_distributed, pick_device
from .trainer import CHECKPOINT, METRICS, TrainConfig, accuracy, evaluate, fit, read_metrics

__all__ = ["CHECKPOINT", "METRICS", "DistContext", "TrainConfig", "accuracy", "evaluate", "fit",
           "init_distributed", "pick_device", "read_metrics"]
