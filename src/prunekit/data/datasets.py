"""Dataset sources: Fashion-MNIST IDX files, the bundled Fashion-MNIST subset, any ImageFolder directory
(:mod:`prunekit.data.imagefolder`), and a synthetic dataset for tests; :func:`load_data` picks one by name."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import PrunekitError, unknown
from .bundle import NO_FLIP, Augment, DataBundle, TensorSplit, adapt
from .idx import read_idx

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BUNDLED_DIR = Path(__file__).parent / "bundled"
DATASETS = ("bundled", "fashion-mnist", "imagefolder", "synthetic")
FASHION_MNIST_AUGMENT = Augment(crop_pad=0.125, hflip=True)  # clothes are mirror-symmetric: flips help


# --- sources -------------------------------------------------------------------------------------


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Search order: ``data_dir``, ``$PRUNEKIT_DATA``, ``/usr/share/datasets/fashion-mnist``."""
    candidates: list[tuple[str, Path]] = []
    if data_dir:
        candidates.append(("--data-dir", Path(data_dir)))
    if os.environ.get("PRUNEKIT_DATA"):
        candidates.append(("$PRUNEKIT_DATA", Path(os.environ["PRUNEKIT_DATA"])))
    candidates.append(("system", SYSTEM_FASHION_MNIST))
    needed = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    for origin, d in candidates:
        for sub in (d, d / "fashion-mnist", d / "FashionMNIST" / "raw"):
            if all((sub / f).is_file() for f in needed):
                return sub
        if origin != "system":  # an explicit location that is wrong is an error, not a fall-through
            if not d.exists():
                raise PrunekitError(f"Fashion-MNIST directory not found: {d} (from {origin})")
            missing = [f for f in needed if not (d / f).is_file()]
            raise PrunekitError(f"Fashion-MNIST directory {d} (from {origin}) lacks {', '.join(missing)}")
    raise PrunekitError("Fashion-MNIST not found: pass --data-dir DIR (with the four IDX .gz files), set "
                        "$PRUNEKIT_DATA, or `apt-get install dataset-fashion-mnist`; `--data bundled` needs nothing")


def load_idx_pair(directory: Path, split: str) -> TensorSplit:
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    images = read_idx(directory / img_name, expect_ndim=3)
    labels = read_idx(directory / lbl_name, expect_ndim=1)
    if len(images) != len(labels):
        raise PrunekitError(f"{directory / img_name} holds {len(images)} images but {directory / lbl_name} holds "
                            f"{len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise PrunekitError(f"{directory / lbl_name}: label {int(labels.max())} out of range 0..9")
    return TensorSplit(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def fashion_mnist(data_dir: str | os.PathLike | None = None, bundled: bool = False) -> DataBundle:
    directory = BUNDLED_DIR if bundled else find_fashion_mnist(data_dir)
    return DataBundle("bundled" if bundled else "fashion-mnist", load_idx_pair(directory, "train"),
                      load_idx_pair(directory, "test"), list(FASHION_MNIST_CLASSES), 1, [28, 28],
                      [FASHION_MNIST_MEAN], [FASHION_MNIST_STD], source=str(directory), augment=FASHION_MNIST_AUGMENT)


def synthetic(num_classes: int = 10, train_size: int = 512, test_size: int = 256, channels: int = 1,
              size: Sequence[int] = (28, 28), seed: int = 0) -> DataBundle:
    """Learnable synthetic images: each class is an oriented grating at its own frequency, plus noise."""
    if num_classes < 2:
        raise PrunekitError(f"synthetic data needs at least 2 classes, got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    h, w = size
    from ..memory import require

    # float32 temporaries: the grating, the noise, their sum and clamp, per image
    require(max(train_size, test_size) * channels * h * w * 4 * 4 + 8 * h * w * 4,
            f"generating {train_size:,} + {test_size:,} synthetic {channels}x{h}x{w} images", "use a smaller size")

    def make(n: int) -> TensorSplit:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        angle = labels.float() * math.pi / num_classes
        freq = 2.0 + (labels % 3).float() * 1.5
        phase = torch.rand(n, generator=g) * 2 * math.pi
        proj = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
        img = torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])
        img = img[:, None].expand(n, channels, h, w) + 0.3 * torch.randn(n, channels, h, w, generator=g)
        img = ((img.clamp(-1.5, 1.5) + 1.5) / 3.0 * 255).round().to(torch.uint8)
        return TensorSplit(img.contiguous(), labels.long())

    return DataBundle("synthetic", make(train_size), make(test_size), [f"class_{i}" for i in range(num_classes)],
                      channels, [h, w], [0.5] * channels, [0.25] * channels, source="synthetic", augment=NO_FLIP)


def load_data(name: str, data_dir: str | os.PathLike | None = None, *, channels: int | None = None,
              size: Sequence[int] | None = None, augment: Augment | None = None, **kwargs) -> DataBundle:
    """Load a dataset by name: ``bundled``, ``fashion-mnist``, ``imagefolder`` or ``synthetic``.

    ``channels``/``size`` convert the images to a model's input; ``augment`` overrides the dataset's own
    training augmentation (fields left ``None`` keep the dataset default)."""
    bundle = _load(name, data_dir, channels, size, **kwargs)
    if augment is not None:
        bundle.augment = augment.over(bundle.augment)
    return bundle


def _load(name: str, data_dir, channels, size, **kwargs) -> DataBundle:
    if name == "bundled":
        bundle = fashion_mnist(bundled=True)
    elif name == "fashion-mnist":
        bundle = fashion_mnist(data_dir)
    elif name == "synthetic":
        bundle = synthetic(channels=channels or 1, size=size or (28, 28), **kwargs)
    elif name == "imagefolder":
        from .imagefolder import image_folder

        if not data_dir:
            raise PrunekitError("--data imagefolder needs --data-dir DIR (class subfolders, or train/ and val/)")
        return image_folder(data_dir, channels=channels, size=size, **kwargs)
    else:
        raise unknown("dataset", name, DATASETS)
    return adapt(bundle, channels, size)
