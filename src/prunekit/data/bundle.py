"""Datasets as splits of uint8 images + int64 labels, with class names, normalisation and augmentation attached.

Every source (:mod:`prunekit.data.datasets`, :mod:`prunekit.data.imagefolder`) ends up as a :class:`DataBundle`
whose splits are iterated by :func:`iterate_batches`: per-epoch permutation and per-batch augmentation derived
from ``(seed, epoch, batch)`` so a run resumed at any step sees exactly the batches it would have seen.

Augmentation scales with the image: a random crop whose padding is a fraction of the image side
(``crop_pad``: 0.125 gives 4 px at 28x28, 1 px at 8x8, 28 px at 224x224) and, only where the dataset's content
is mirror-symmetric (Fashion-MNIST) or the user asks for it, a horizontal flip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
import torch.nn.functional as F

from ..errors import PrunekitError
from ..schema import F as Field
from .transforms import batch_generator, normalize


@dataclass
class Augment:
    """Training augmentation of a dataset. ``None`` fields take the dataset's own default."""

    crop_pad: float | None = Field(None, "random crop: zero padding on each side as a fraction of the image side, "
                                   "then a crop back to size (default 0.125: 4 px at 28x28; 0: no crop)",
                                   lo=0, hi=0.5)
    hflip: bool | None = Field(None, "random horizontal flips (default: on for Fashion-MNIST, whose classes are "
                               "mirror-symmetric; off for image folders and synthetic data)")

    def over(self, base: Augment) -> Augment:
        """These settings where given, ``base``'s elsewhere."""
        return Augment(base.crop_pad if self.crop_pad is None else self.crop_pad,
                       base.hflip if self.hflip is None else self.hflip)

    def pad_pixels(self, size: Sequence[int]) -> int:
        return int(round((self.crop_pad or 0.0) * min(size)))


NO_FLIP = Augment(crop_pad=0.125, hflip=False)  # the default for data of unknown content


class Split(Protocol):
    """A split: ``len`` and ``fetch`` of uint8 ``(N, C, H, W)`` images with labels, in the requested order."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def relabel(self, lut: torch.Tensor) -> Split: ...

    def subset(self, idx: torch.Tensor) -> Split: ...

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

    def relabel(self, lut: torch.Tensor) -> TensorSplit:
        """Label ``c`` becomes ``lut[c]``."""
        return TensorSplit(self.images, lut.to(self.labels.device)[self.labels])

    def subset(self, idx: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)])


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
    augment: Augment = field(default_factory=lambda: NO_FLIP)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device) -> DataBundle:
        """Move in-memory splits to ``device`` (a GPU-resident loader for datasets that fit)."""
        mv = lambda s: s.to(device) if isinstance(s, TensorSplit) else s  # noqa: E731
        return replace(self, train=mv(self.train), test=mv(self.test))


# --- iteration -----------------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def iterate_batches(bundle: DataBundle, split: str, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                    start_batch: int = 0, device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                    augment: bool = True, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised float batches.

    ``train=True`` shuffles (per-epoch permutation), drops the last partial batch and, with ``augment``, applies
    the bundle's :class:`Augment` policy. ``batch_size`` is the *global* batch: with ``world > 1`` each rank gets
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
    pad, flip = bundle.augment.pad_pixels(bundle.size), bool(bundle.augment.hflip)
    augment = augment and (pad > 0 or flip)
    for k, (x, y) in enumerate(s.fetch(local_idx, num_workers=num_workers)):
        b = start_batch + k
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if train and augment:
            x = _augment_share(x, len(global_idx[k]), rank, world, pad, flip, batch_generator(seed, epoch, b))
        yield normalize(x, mean, std), y


def _augment_share(x: torch.Tensor, n_global: int, rank: int, world: int, pad: int, hflip: bool,
                   gen: torch.Generator) -> torch.Tensor:
    """Draw crop offsets/flips for the whole global batch, apply this rank's share (DDP == 1 process)."""
    dy = torch.randint(0, 2 * pad + 1, (n_global,), generator=gen)[rank::world]
    dx = torch.randint(0, 2 * pad + 1, (n_global,), generator=gen)[rank::world]
    flip = (torch.rand(n_global, generator=gen) < 0.5)[rank::world] & hflip
    n, c, h, w = x.shape
    dev = x.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=dev)[None, :]
    cols = dx[:, None] + torch.arange(w, device=dev)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    xp = torch.gather(xp, 2, rows[:, None, :, None].expand(n, c, h, xp.shape[3]))
    return torch.gather(xp, 3, cols[:, None, None, :].expand(n, c, h, w))

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
    return replace(bundle, train=conv(bundle.train), test=conv(bundle.test), channels=channels, size=size,
                   mean=mean, std=std)
