"""prunekit: structured channel pruning for CNNs.

Train -> prune gradually (masks) -> surgery (physically smaller model) -> fine-tune -> export -> int8.

>>> import prunekit
>>> model = prunekit.create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)
>>> config = prunekit.PruningConfig(schedule={"kind": "one_shot", "target_sparsity": 0.5})
>>> pruner = prunekit.prune_(model, config, input_shape=(1, 28, 28))
>>> _ = pruner.step(0)                       # call once per training step in any training loop
>>> small = pruner.shrink().model            # verified: same outputs as the masked model
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first use so that `import prunekit` stays fast.
_EXPORTS = {
    "create_model": "models", "list_models": "models", "register_model": "models", "ModelSpec": "models",
    "InputSpec": "models", "load": "api", "save": "api", "resolve": "api",
    "PruningConfig": "pruning", "prune_": "pruning", "strip": "pruning", "Pruner": "pruning",
    "ConstantSparsity": "pruning", "PolynomialDecay": "pruning", "register_criterion": "pruning",
    "DependencyGraph": "graph", "shrink": "surgery", "verify": "surgery",
    "load_data": "data", "fit": "train", "evaluate": "train", "TrainConfig": "train",
    "profile": "report", "export_model": "export", "quantize_onnx": "export", "load_runtime": "inference",
    "PrunekitError": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prunekit' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
