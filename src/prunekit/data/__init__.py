"""Data: Fashion-MNIST (IDX), the bundled subset, ImageFolder, synthetic; batched tensor loading."""

from .datasets import (
    BUNDLED_DIR,
    DATASETS,
    FASHION_MNIST_CLASSES,
    DataBundle,
    TensorSplit,
    adapt,
    fashion_mnist,
    find_fashion_mnist,
    iterate_batches,
    load_data,
    num_batches,
    synthetic,
)
from .idx import read_idx, write_idx

__all__ = [
    "BUNDLED_DIR", "DATASETS", "FASHION_MNIST_CLASSES", "DataBundle", "TensorSplit", "adapt", "fashion_mnist",
    "find_fashion_mnist", "iterate_batches", "load_data", "num_batches", "read_idx", "synthetic", "write_idx",
]
