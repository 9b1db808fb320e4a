"""ImageFolder datasets: ``ROOT/<class>/*.png`` or ``ROOT/{train,val|test}/<class>/*``.

Any image PIL reads (grayscale, RGB, palette, CMYK, 16-bit, with alpha) is converted to the model's
channels and resized to its input. Small folders are decoded once into memory; large ones (ImageNet)
stream through worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import PrunekitError
from .bundle import NO_FLIP, DataBundle, TensorSplit
from .classes import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding
PRELOAD_BYTES = 2 * 1024**3


def load_image(path: str | Path, channels: int, size: Sequence[int], resize: int | None = None) -> np.ndarray:
    """Decode one image to uint8 ``(C, H, W)``: convert mode, optional shorter-side resize + center crop."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise PrunekitError(f"{path}: image too large ({im.width}x{im.height} pixels, limit {MAX_PIXELS:,})")
            im = to_mode(im, channels)
            im.load()
    except PrunekitError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise PrunekitError(f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    h, w = int(size[0]), int(size[1])
    if resize:
        scale = resize / min(im.width, im.height)
        im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.BILINEAR)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
    elif (im.height, im.width) != (h, w):
        im = im.resize((w, h), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to 8-bit 'L' (1 channel) or 'RGB' (3 channels)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        im = Image.fromarray(((arr - lo) / (hi - lo or 1) * 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    if channels == 1:
        return im.convert("L")
    if channels == 3:
        return im.convert("RGB")
    raise PrunekitError(f"image folders give 1 or 3 channels, model wants {channels}")


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]], int]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise PrunekitError(f"image folder {root} has no class subdirectories (expected ROOT/<class>/<image>)")
    items, ignored = [], 0
    for ci, c in enumerate(classes):
        for dirpath, _dirs, files in os.walk(root / c, followlinks=True):
            for f in sorted(files):
                if Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                    items.append((Path(dirpath) / f, ci))
                else:
                    ignored += 1
    return classes, sorted(items), ignored


class FolderSplit(torch.utils.data.Dataset):
    """A streaming split: images decoded (and resized) in DataLoader workers."""

    def __init__(self, items: list[tuple[Path, int]], channels: int, size: Sequence[int], resize: int | None):
        self.items, self.channels, self.size, self.resize = items, channels, list(size), resize
        self.labels = torch.tensor([c for _, c in items], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.items)

    def relabel(self, lut: torch.Tensor) -> FolderSplit:
        """Label ``c`` becomes ``lut[c]``."""
        return FolderSplit([(p, int(lut[c])) for p, c in self.items], self.channels, self.size, self.resize)

    def subset(self, idx: torch.Tensor) -> FolderSplit:
        return FolderSplit([self.items[int(i)] for i in idx], self.channels, self.size, self.resize)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return torch.from_numpy(load_image(path, self.channels, self.size, self.resize)), label

    def fetch(self, batches, num_workers=0):
        # One DataLoader per worker count, kept across epochs (persistent workers); each epoch only swaps the
        # batch order in its sampler, so decoding processes are not restarted every epoch.
        loaders = self.__dict__.setdefault("_loaders", {})
        if num_workers not in loaders:
            sampler = _Batches()
            loaders[num_workers] = (sampler, torch.utils.data.DataLoader(
                self, batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate,
                persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available()))
        sampler, loader = loaders[num_workers]
        sampler.batches = [b.tolist() for b in batches]
        it = iter(loader)
        while True:
            try:
                yield next(it)
            except StopIteration:
                return
            except Exception as e:  # worker errors arrive wrapped: keep the original one-line message
                lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
                raise PrunekitError(lines[-1].split("PrunekitError: ")[-1] if lines else repr(e)) from None


class _Batches(torch.utils.data.Sampler):
    """A batch sampler whose batches are replaced before every pass."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(batch):
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64)


def _preload(items, channels, size, resize, desc) -> TensorSplit:
    from tqdm.auto import tqdm

    images = np.empty((len(items), channels, size[0], size[1]), dtype=np.uint8)
    for i, (p, _) in enumerate(tqdm(items, desc=desc, unit="img", leave=False, disable=len(items) < 2000)):
        images[i] = load_image(p, channels, size, resize)
    return TensorSplit(torch.from_numpy(images), torch.tensor([c for _, c in items], dtype=torch.int64))


def _detect(items: list[tuple[Path, int]]) -> tuple[int, list[int]]:
    """Channels (1 if every sampled image is grayscale, else 3) and size (shared size, else 224x224)."""
    modes, sizes = set(), set()
    for p, _ in items[:: max(1, len(items) // 32)][:32]:
        try:
            with Image.open(p) as im:
                modes.add("L" if im.mode in ("L", "1", "I;16", "I;16B", "I;16L", "I", "F", "LA") else "RGB")
                sizes.add((im.height, im.width))
        except (UnidentifiedImageError, OSError) as e:
            raise PrunekitError(f"{p}: not a readable image ({type(e).__name__})") from None
    channels = 1 if modes == {"L"} else 3
    size = list(next(iter(sizes))) if len(sizes) == 1 else [224, 224]
    return channels, size


def image_folder(root: str | os.PathLike, channels: int | None = None, size: Sequence[int] | None = None,
                 resize: int | None = None, val_fraction: float = 0.1, seed: int = 0,
                 preload: bool | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> DataBundle:
    """Load an ImageFolder tree. Without ``train/`` and ``val/`` (or ``test/``) subfolders, a stratified
    ``val_fraction`` of each class (chosen with ``seed``) becomes the test split."""
    root = Path(root)
    if not root.is_dir():
        raise PrunekitError(f"image folder not found: {root}")
    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test", "validation") if (root / d).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None:
        classes, train_items, ign1 = _scan(train_dir)
        test_classes, test_items, ign2 = _scan(test_dir)
        extra = sorted(set(test_classes) - set(classes))
        if extra:
            raise PrunekitError(f"{test_dir} has classes not in {train_dir}: {', '.join(extra[:5])}")
        remap = {i: classes.index(c) for i, c in enumerate(test_classes)}
        test_items = [(p, remap[c]) for p, c in test_items]
        ignored = ign1 + ign2
    else:
        classes, items, ignored = _scan(root)
        if not (0 < val_fraction < 1):
            raise PrunekitError(f"val_fraction must be in (0, 1), got {val_fraction}")
        rng = np.random.default_rng(seed)
        train_items, test_items = [], []
        for ci in range(len(classes)):
            cls_items = [it for it in items if it[1] == ci]
            rng.shuffle(cls_items)
            k = max(1, round(len(cls_items) * val_fraction)) if len(cls_items) > 1 else 0
            test_items += cls_items[:k]
            train_items += cls_items[k:]
    if not train_items:
        hint = f" ({ignored} files without an image extension were ignored)" if ignored else ""
        raise PrunekitError(f"image folder {root} contains no images{hint}")
    if not test_items:
        raise PrunekitError(f"image folder {root}: too few images to hold out a test split")
    det_channels, det_size = _detect(train_items)
    channels = channels or det_channels
    size = list(size) if size else det_size
    per_image = channels * size[0] * size[1]
    if preload is None:
        preload = (len(train_items) + len(test_items)) * per_image <= PRELOAD_BYTES
    if preload:
        train = _preload(train_items, channels, size, resize, "decode train")
        test = _preload(test_items, channels, size, resize, "decode test")
    else:
        train = FolderSplit(train_items, channels, size, resize)
        test = FolderSplit(test_items, channels, size, resize)
    if mean is None:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ([0.5], [0.25])
    return DataBundle("imagefolder", train, test, classes, channels, size, list(mean), list(std or []),
                      source=str(root), notes={"ignored_files": ignored, "preloaded": preload, "resize": resize},
                      augment=NO_FLIP)
