"""Channel dependency graph built on torch.fx: which channels must be pruned together, and the layer handlers
that say how each module type treats channels."""

from .groups import LAYER_PRESETS, DependencyGraph, Group
from .handlers import (
    ConvHandler,
    ElementwiseHandler,
    Flow,
    LayerHandler,
    LinearHandler,
    PerChannelHandler,
    handler_for,
    register_handler,
    register_lazy_handlers,
)
from .masking import MaskHooks, MaskPoint, group_masks, mask_points, masked
from .trace import propagate_shapes, trace

__all__ = ["LAYER_PRESETS", "ConvHandler", "DependencyGraph", "ElementwiseHandler", "Flow", "Group", "LayerHandler",
           "LinearHandler", "MaskHooks", "MaskPoint", "PerChannelHandler", "group_masks", "handler_for", "mask_points",
           "masked", "propagate_shapes", "register_handler", "register_lazy_handlers", "trace"]
