"""prunekit: structured channel pruning for CNNs.

Train -> prune gradually (masks) -> shrink (surgery: a physically smaller model) -> fine-tune -> export -> int8.

>>> import prunekit
>>> from prunekit.pruning import OneShot
>>> model = prunekit.create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)
>>> pruner = prunekit.prune_(model, prunekit.PruningConfig(schedule=OneShot(0.5)), input_shape=(1, 28, 28))
>>> _ = pruner.step(0)                       # call once per training step in any training loop
>>> small = prunekit.shrink(pruner).model    # verified: same outputs as the masked model

The public API is one verb per action: ``create_model``, ``load_data``, ``fit``, ``evaluate``, ``prune_``,
``shrink``, ``strip``, ``save``, ``load``, ``export``, ``quantize``; two configs, ``TrainConfig`` and
``PruningConfig``; and ``PrunekitError``. Schedules, criteria and the channel graph live in
``prunekit.pruning`` and ``prunekit.graph``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# name -> module that defines it; imported on first use so that `import prunekit` stays fast.
_EXPORTS = {
    "create_model": "models", "load_data": "data", "fit": "train", "evaluate": "train", "TrainConfig": "train",
    "PruningConfig": "pruning", "prune_": "pruning", "strip": "pruning", "shrink": "surgery", "save": "saved",
    "load": "saved", "export": "deploy", "quantize": "deploy", "PrunekitError": "errors",
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
