"""Data: Fashion-MNIST (IDX), the bundled subset, ImageFolder, synthetic; batched tensor loading and augmentation."""

from .bundle import Augment, DataBundle, TensorSplit, adapt, iterate_batches, num_batches
from .classes import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes, imagenet_wnids
from .datasets import (
    BUNDLED_DIR,
    DATASETS,
    FASHION_MNIST_CLASSES,
    fashion_mnist,
    find_fashion_mnist,
    load_data,
    synthetic,
)
from .idx import read_idx, write_idx

__all__ = [
    "BUNDLED_DIR", "DATASETS", "FASHION_MNIST_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "Augment", "DataBundle",
    "TensorSplit", "adapt", "fashion_mnist", "find_fashion_mnist", "imagenet_classes", "imagenet_wnids",
    "iterate_batches", "load_data", "num_batches", "read_idx", "synthetic", "write_idx",
]
