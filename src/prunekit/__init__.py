"""prunekit: structured channel pruning for CNNs.

Train -> prune gradually (masks) -> surgery (physically smaller model) -> fine-tune -> export -> int8.
"""

__version__ = "0.1.0"
