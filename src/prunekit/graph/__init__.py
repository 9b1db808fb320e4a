"""Channel dependency graph built on torch.fx: which channels must be pruned together."""

from .groups import LAYER_PRESETS, DependencyGraph, Group
from .masking import MaskHooks, MaskPoint, group_masks, mask_points, masked
from .trace import propagate_shapes, trace

__all__ = ["LAYER_PRESETS", "DependencyGraph", "Group", "MaskHooks", "MaskPoint", "group_masks", "mask_points",
           "masked", "propagate_shapes", "trace"]
