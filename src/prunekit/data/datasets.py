"""Datasets as splits of uint8 images + int64 labels, with class names and normalisation attached.

Sources: Fashion-MNIST IDX files, the bundled Fashion-MNIST subset, any ImageFolder directory, and a
synthetic dataset for tests. Every source ends up as a :class:`DataBundle` whose splits are iterated by
:func:`iterate_batches`: per-epoch permutation and per-batch augmentation derived from ``(seed, epoch,
batch)`` so a run resumed at any step sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PrunekitError, unknown
from .idx import read_idx
from .transforms import batch_generator, normalize

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


class Split(Protocol):
    """A split: ``len`` and ``fetch`` of uint8 ``(N, C, H, W)`` images with labels, in the requested order."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def fetch(self, batches: Sequence[torch.Tensor], num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TensorSplit:
    """An in-memory split."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be uint8 (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise PrunekitError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def fetch(self, batches, num_workers=0):
        for idx in batches:
            yield self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)]

    def to(self, device) -> TensorSplit:
        return TensorSplit(self.images.to(device), self.labels.to(device))


@dataclass
class DataBundle:
    """Train and test splits plus what a model needs to know about them."""

    name: str
    train: Split
    test: Split
    class_names: list[str]
    channels: int
    size: list[int]  # [H, W]
    mean: list[float]
    std: list[float]
    source: str = ""
    notes: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device) -> DataBundle:
        """Move in-memory splits to ``device`` (a GPU-resident loader for datasets that fit)."""
        mv = lambda s: s.to(device) if isinstance(s, TensorSplit) else s  # noqa: E731
        return DataBundle(self.name, mv(self.train), mv(self.test), self.class_names, self.channels, self.size,
                          self.mean, self.std, self.source, self.notes)


# --- iteration -----------------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def iterate_batches(bundle: DataBundle, split: str, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                    start_batch: int = 0, device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                    augment: bool = True, num_workers: int = 0, pad: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised float batches.

    ``train=True`` shuffles (per-epoch permutation), drops the last partial batch and augments (random crop
    with padding + horizontal flip). ``batch_size`` is the *global* batch: with ``world > 1`` each rank gets
    its strided share of every global batch, so N processes see exactly what one process would.
    """
    s: Split = getattr(bundle, split)
    n = len(s)
    if train:
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    nb = num_batches(n, batch_size, drop_last=train)
    global_idx = [order[b * batch_size:(b + 1) * batch_size] for b in range(start_batch, nb)]
    local_idx = [gi[rank::world] for gi in global_idx]
    device = torch.device(device)
    mean = torch.tensor(bundle.mean, device=device)
    std = torch.tensor(bundle.std, device=device)
    pad = pad if pad is not None else max(1, round(min(bundle.size) / 7))  # 4 px at 28x28
    for k, (x, y) in enumerate(s.fetch(local_idx, num_workers=num_workers)):
        b = start_batch + k
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if train and augment:
            x = _augment_share(x, len(global_idx[k]), rank, world, pad, batch_generator(seed, epoch, b))
        yield normalize(x, mean, std), y


def _augment_share(x: torch.Tensor, n_global: int, rank: int, world: int, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Draw crop offsets/flips for the whole global batch, apply this rank's share (DDP == 1 process)."""
    dy = torch.randint(0, 2 * pad + 1, (n_global,), generator=gen)[rank::world]
    dx = torch.randint(0, 2 * pad + 1, (n_global,), generator=gen)[rank::world]
    flip = (torch.rand(n_global, generator=gen) < 0.5)[rank::world]
    n, c, h, w = x.shape
    dev = x.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=dev)[None, :]
    cols = dx[:, None] + torch.arange(w, device=dev)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    xp = torch.gather(xp, 2, rows[:, None, :, None].expand(n, c, h, xp.shape[3]))
    return torch.gather(xp, 3, cols[:, None, None, :].expand(n, c, h, w))


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
                      [FASHION_MNIST_MEAN], [FASHION_MNIST_STD], source=str(directory))


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
                      channels, [h, w], [0.5] * channels, [0.25] * channels, source="synthetic")


def _check_conversion_memory(bundle: DataBundle, channels: int, size: Sequence[int]) -> None:
    """The converted in-memory splits (uint8) plus one chunk of float temporaries must fit, before converting."""
    from ..memory import require

    splits = [s for s in (bundle.train, bundle.test) if isinstance(s, TensorSplit)]
    if not splits:
        return
    h, w = int(size[0]), int(size[1])
    n = sum(len(s) for s in splits)
    chunk = min(2048, max(len(s) for s in splits))
    in_pixels = max(s.images[0].numel() if len(s) else 0 for s in splits)
    need = n * channels * h * w + chunk * 4 * 2 * (3 * in_pixels + channels * h * w)
    require(need, f"converting the {bundle.name} images ({n:,}) to {channels}x{h}x{w}",
            "use a smaller input size (the model's input.size, or data.image_size)")


def adapt(bundle: DataBundle, channels: int | None = None, size: Sequence[int] | None = None) -> DataBundle:
    """Convert in-memory splits to the model's input channels (1<->3) and size (bilinear, antialiased)."""
    channels = channels or bundle.channels
    size = list(size) if size else bundle.size
    if channels == bundle.channels and size == bundle.size:
        return bundle
    if channels not in (1, 3, bundle.channels):
        raise PrunekitError(f"cannot convert {bundle.channels}-channel images to {channels} channels")
    _check_conversion_memory(bundle, channels, size)

    def conv(s):
        if not isinstance(s, TensorSplit):  # streaming splits are sized/converted at decode time
            return s
        x = s.images
        if channels != x.shape[1]:
            x = x.expand(-1, 3, -1, -1) if channels == 3 else x.float().mean(1, keepdim=True).round().to(torch.uint8)
        if list(x.shape[2:]) != size:
            out = []
            for chunk in x.split(2048):
                y = F.interpolate(chunk.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
                out.append(y.round().clamp(0, 255).to(torch.uint8))
            x = torch.cat(out)
        return TensorSplit(x.contiguous(), s.labels)

    mean, std = bundle.mean, bundle.std
    if channels != bundle.channels:
        mean = [sum(mean) / len(mean)] * channels
        std = [sum(std) / len(std)] * channels
    return DataBundle(bundle.name, conv(bundle.train), conv(bundle.test), bundle.class_names, channels, size, mean,
                      std, bundle.source, bundle.notes)


def load_data(name: str, data_dir: str | os.PathLike | None = None, *, channels: int | None = None,
              size: Sequence[int] | None = None, **kwargs) -> DataBundle:
    """Load a dataset by name: ``bundled``, ``fashion-mnist``, ``imagefolder`` or ``synthetic``."""
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
