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


def test_real_fashion_mnist_if_present():
    from pathlib import Path

    src = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion-mnist"
    if not src.is_dir():
        pytest.skip("full Fashion-MNIST not available here")
    d = load_data("fashion-mnist", src)
    assert len(d.train) == 60000 and len(d.test) == 10000


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
