import numpy as np
import pytest
from PIL import Image

from prunekit.data import load_data
from prunekit.data.imagefolder import load_image
from prunekit.errors import PrunekitError


def make_folder(root, classes=("cat", "dog"), n=4, size=(20, 30), mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / c / f"{i}.png")
    return root


def test_split_by_fraction_resized_and_named(tmp_path):
    make_folder(tmp_path, n=10)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    d = load_data("imagefolder", tmp_path, size=[16, 16])
    assert d.class_names == ["cat", "dog"]
    assert len(d.train) == 18 and len(d.test) == 2
    assert d.train.images.shape[1:] == (3, 16, 16)
    assert d.notes["ignored_files"] == 1


def test_train_val_layout_and_grayscale_detection(tmp_path):
    make_folder(tmp_path / "train", mode="L", size=(12, 12))
    make_folder(tmp_path / "val", mode="L", size=(12, 12), n=2)
    d = load_data("imagefolder", tmp_path)
    assert d.channels == 1 and d.size == [12, 12] and len(d.test) == 4


@pytest.mark.parametrize("mode", ["P", "CMYK", "I;16", "LA", "RGBA", "1"])
def test_unusual_modes_are_converted(tmp_path, mode):
    rgb = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    if mode == "I;16":
        im = Image.fromarray(np.full((8, 8), 51400, np.uint16))  # 200/255 of full scale
    elif mode == "1":
        im = rgb.convert("1")
    else:
        im = rgb.convert(mode)
    p = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    im.save(p)
    out = load_image(p, 3, [8, 8])
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    assert abs(int(out.mean()) - 200) <= 56  # the same picture, up to mode conversion


def test_resize_then_center_crop(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 20:60] = 255  # the centre 40x40 is white
    Image.fromarray(arr).save(tmp_path / "w.png")
    out = load_image(tmp_path / "w.png", 3, [16, 16], resize=16)
    assert out.min() > 200


def test_errors(tmp_path):
    with pytest.raises(PrunekitError, match="image folder not found"):
        load_data("imagefolder", tmp_path / "missing")
    with pytest.raises(PrunekitError, match="needs --data-dir"):
        load_data("imagefolder", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunekitError, match="no class subdirectories"):
        load_data("imagefolder", tmp_path / "empty")
    (tmp_path / "empty" / "a").mkdir()
    (tmp_path / "empty" / "a" / "x.txt").write_text("x")
    with pytest.raises(PrunekitError, match="contains no images .*1 files without an image extension"):
        load_data("imagefolder", tmp_path / "empty")
    bad = make_folder(tmp_path / "bad")
    (bad / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(PrunekitError, match="broken.png: not a readable image"):
        load_data("imagefolder", bad)


def test_huge_image_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("prunekit.data.imagefolder.MAX_PIXELS", 100)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(PrunekitError, match="image too large"):
        load_image(tmp_path / "big.png", 1, [8, 8])


def test_streaming_split_matches_preloaded(tmp_path):
    from prunekit.data import iterate_batches

    make_folder(tmp_path, n=6, size=(10, 10))
    a = load_data("imagefolder", tmp_path, preload=True)
    b = load_data("imagefolder", tmp_path, preload=False)
    xa = [x for x, _ in iterate_batches(a, "train", 4, train=True, seed=1)]
    xb = [x for x, _ in iterate_batches(b, "train", 4, train=True, seed=1)]
    assert all((p - q).abs().max() == 0 for p, q in zip(xa, xb, strict=True))


def test_streaming_with_persistent_workers_keeps_order_across_epochs(tmp_path):
    from prunekit.data import iterate_batches

    make_folder(tmp_path, n=6, size=(10, 10))
    a = load_data("imagefolder", tmp_path, preload=True)
    b = load_data("imagefolder", tmp_path, preload=False)
    for epoch in (0, 1):
        ya = [y for _, y in iterate_batches(a, "train", 4, train=True, seed=1, epoch=epoch)]
        yb = [y for _, y in iterate_batches(b, "train", 4, train=True, seed=1, epoch=epoch, num_workers=1)]
        assert all((p == q).all() for p, q in zip(ya, yb, strict=True))
    assert list(b.train._loaders) == [1]  # one loader (one set of worker processes) served both epochs
