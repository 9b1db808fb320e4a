import shutil

import numpy as np
import pytest
import torch

from prunekit.data import BUNDLED_DIR, FASHION_MNIST_CLASSES, iterate_batches, load_data, synthetic, write_idx
from prunekit.data.datasets import FASHION_MNIST_FILES, find_fashion_mnist
from prunekit.errors import PrunekitError


def test_bundled_subset_is_small_balanced_and_real(bundled):
    size = sum(p.stat().st_size for p in BUNDLED_DIR.iterdir())
    assert size <= 3_000_000
    assert len(bundled.train) == 4000 and len(bundled.test) == 1000
    assert bundled.class_names == FASHION_MNIST_CLASSES
    counts = torch.bincount(bundled.test.labels, minlength=10)
    assert counts.tolist() == [100] * 10
    assert bundled.train.images.dtype == torch.uint8 and bundled.train.images.shape[1:] == (1, 28, 28)
    assert bundled.train.images.float().mean() > 30  # real images, not blank


def _fake_fmnist(d, n_train=20, n_test=10, labels_off=0):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        img, lbl = FASHION_MNIST_FILES[split]
        write_idx(d / img, rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(d / lbl, (np.arange(n + labels_off) % 10).astype(np.uint8))
    return d


def test_search_order_data_dir_then_env_then_system(tmp_path, monkeypatch):
    a = _fake_fmnist(tmp_path / "a")
    b = _fake_fmnist(tmp_path / "b")
    monkeypatch.setenv("PRUNEKIT_DATA", str(b))
    assert find_fashion_mnist(a) == a
    assert find_fashion_mnist(None) == b
    monkeypatch.delenv("PRUNEKIT_DATA")
    monkeypatch.setattr("prunekit.data.datasets.SYSTEM_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(PrunekitError, match="Fashion-MNIST not found"):
        find_fashion_mnist(None)
    with pytest.raises(PrunekitError, match="directory not found"):
        find_fashion_mnist(tmp_path / "missing")
    (a / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PrunekitError, match="lacks t10k-labels"):
        find_fashion_mnist(a)


def test_label_count_mismatch(tmp_path):
    d = _fake_fmnist(tmp_path / "m", labels_off=3)
    with pytest.raises(PrunekitError, match="holds 20 images but .* 23 labels"):
        load_data("fashion-mnist", d)


def test_full_size_fashion_mnist_via_prunekit_data(tmp_path, monkeypatch):
    """The real dataset's layout and sizes (60,000 + 10,000 images, 28x28, 10 classes), written here with the
    repository's own IDX writer, found through $PRUNEKIT_DATA (as on a machine with the real files)."""
    for split, n in (("train", 60_000), ("t10k", 10_000)):
        images = np.broadcast_to(np.arange(28, dtype=np.uint8), (n, 28, 28))
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    d = load_data("fashion-mnist")
    assert (len(d.train), len(d.test)) == (60_000, 10_000)
    assert d.train.images.shape[1:] == (1, 28, 28) and d.num_classes == 10
    assert torch.equal(d.train.labels[:12], torch.arange(12) % 10)
    assert d.augment.hflip and d.augment.pad_pixels(d.size) == 4  # Fashion-MNIST's default augmentation


def test_adapt_channels_and_size(bundled):
    d = load_data("bundled", channels=3, size=[32, 32])
    assert d.train.images.shape[1:] == (3, 32, 32) and len(d.mean) == 3


def test_augmentation_is_deterministic_per_batch_and_shards_like_one_process():
    d = synthetic(train_size=64, test_size=8)
    kw = dict(train=True, seed=3, epoch=1)
    full = list(iterate_batches(d, "train", 16, **kw))
    again = list(iterate_batches(d, "train", 16, **kw))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again, strict=True))
    # resuming at batch 2 yields exactly batches 2.. of the full epoch
    tail = list(iterate_batches(d, "train", 16, start_batch=2, **kw))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], tail, strict=True))
    # two ranks together see exactly the single-process global batch
    r0 = list(iterate_batches(d, "train", 16, rank=0, world=2, **kw))
    r1 = list(iterate_batches(d, "train", 16, rank=1, world=2, **kw))
    for (x, y), (a, ya), (b, yb) in zip(full, r0, r1, strict=True):
        assert torch.equal(x[0::2], a) and torch.equal(x[1::2], b)
        assert torch.equal(y[0::2], ya) and torch.equal(y[1::2], yb)
    # evaluation: no shuffle, no augmentation, keeps the last partial batch
    ev = list(iterate_batches(d, "test", 5, train=False))
    assert [len(y) for _, y in ev] == [5, 3]
    other_epoch = list(iterate_batches(d, "train", 16, train=True, seed=3, epoch=2))
    assert not torch.equal(full[0][0], other_epoch[0][0])


def test_unknown_dataset_and_system_path_copy(tmp_path, bundled):
    with pytest.raises(PrunekitError, match="unknown dataset 'mnist'"):
        load_data("mnist")
    d = tmp_path / "fm"
    shutil.copytree(BUNDLED_DIR, d)
    assert len(load_data("fashion-mnist", d).train) == 4000


def test_augmentation_scales_with_the_image_and_flips_only_where_asked(tmp_path):
    """Crop padding is a fraction of the image side; image folders (content of unknown symmetry) are not flipped
    unless data.augment.hflip says so; Fashion-MNIST keeps its 4 px + flips."""
    from PIL import Image

    from prunekit.data import Augment

    for size, pad in ((8, 1), (16, 2), (28, 4), (224, 28)):
        assert Augment(crop_pad=0.125).pad_pixels([size, size]) == pad
    assert load_data("bundled").augment == Augment(crop_pad=0.125, hflip=True)
    # an asymmetric picture: left half bright. Unflipped crops keep more light on the left, always.
    for c in ("left", "right"):
        (tmp_path / c).mkdir()
        for i in range(6):
            arr = np.zeros((8, 8), dtype=np.uint8)
            arr[:, :4] = 255 if c == "left" else 0
            arr[:, 4:] = 0 if c == "left" else 255
            Image.fromarray(arr).save(tmp_path / c / f"{i}.png")
    folder = load_data("imagefolder", tmp_path)
    assert folder.augment.hflip is False and folder.augment.pad_pixels(folder.size) == 1

    def left_heavy(bundle):
        out = []
        for x, y in iterate_batches(bundle, "train", 2, train=True, seed=1, epoch=0):
            left, right = x[..., :3].mean(dim=(1, 2, 3)), x[..., 5:].mean(dim=(1, 2, 3))
            out += [bool(a > b) == (int(c) == 0) for a, b, c in zip(left, right, y, strict=True)]
        return out

    assert all(left_heavy(folder))  # never mirrored
    flipped = load_data("imagefolder", tmp_path, augment=Augment(hflip=True))
    assert flipped.augment == Augment(crop_pad=0.125, hflip=True) and not all(left_heavy(flipped))
