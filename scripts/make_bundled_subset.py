"""Regenerate the bundled, class-balanced Fashion-MNIST subset shipped inside the package.

    python scripts/make_bundled_subset.py --src ../shared/data/fashion-mnist --train-per-class 400 --test-per-class 100
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from prunekit.data import BUNDLED_DIR, read_idx, write_idx
from prunekit.data.datasets import FASHION_MNIST_FILES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="directory with the four Fashion-MNIST IDX .gz files")
    ap.add_argument("--train-per-class", type=int, default=400)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = Path(args.src)
    rng = np.random.default_rng(args.seed)
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        img_name, lbl_name = FASHION_MNIST_FILES[split]
        images, labels = read_idx(src / img_name), read_idx(src / lbl_name)
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
        keep = rng.permutation(keep)
        write_idx(BUNDLED_DIR / img_name, images[keep])
        write_idx(BUNDLED_DIR / lbl_name, labels[keep])
        print(f"{split}: {len(keep)} images")
    if (src / "COPYRIGHT").is_file():
        shutil.copy(src / "COPYRIGHT", BUNDLED_DIR / "COPYRIGHT")
    total = sum(f.stat().st_size for f in BUNDLED_DIR.iterdir())
    print(f"bundled subset: {total / 1e6:.2f} MB in {BUNDLED_DIR}")


if __name__ == "__main__":
    main()
