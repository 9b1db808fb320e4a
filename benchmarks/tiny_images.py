"""Default `prunekit train` on an ImageFolder of tiny grayscale images: does it learn?

Generates 10 clearly separable classes of SIZExSIZE grayscale images (bars, diagonals, corners, blobs, rings,
checkerboards: several classes are mirror images of each other, as digits and letters are) with random
jitter, contrast and noise; ~1,500 training and ~300 test images per size. Then runs the default
`prunekit train --data imagefolder --data-dir DIR --out OUT` (every training setting at its default; 10 epochs
given explicitly) and, for comparison, the same with the augmentation prunekit used before it scaled with the
image (crop padding max(1, round(side / 7)) and horizontal flips on every dataset).

    python benchmarks/tiny_images.py --sizes 8,16 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CLASSES = ["hbar_top", "hbar_bottom", "vbar_left", "vbar_right", "diag", "antidiag", "corner_tl", "corner_tr",
           "ring", "checker"]


def draw(cls: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class ``cls``: a pattern at a jittered position, random contrast, noise."""
    s = size
    img = np.zeros((s, s), dtype=np.float64)
    t = max(1, s // 6)  # stroke width
    yy, xx = np.mgrid[0:s, 0:s]
    j = lambda: int(rng.integers(-max(1, s // 10), max(1, s // 10) + 1))  # noqa: E731
    if cls == "hbar_top":
        y = s // 4 + j()
        img[max(0, y):y + t, :] = 1
    elif cls == "hbar_bottom":
        y = 3 * s // 4 + j()
        img[max(0, y - t):y, :] = 1
    elif cls == "vbar_left":
        x = s // 4 + j()
        img[:, max(0, x):x + t] = 1
    elif cls == "vbar_right":
        x = 3 * s // 4 + j()
        img[:, max(0, x - t):x] = 1
    elif cls == "diag":
        o = j()
        img[np.abs(yy - xx - o) < t] = 1
    elif cls == "antidiag":
        o = j()
        img[np.abs(yy + xx - (s - 1) - o) < t] = 1
    elif cls in ("corner_tl", "corner_tr"):
        y0, x0 = s // 5 + j(), s // 5 + j()
        x0 = x0 if cls == "corner_tl" else s - 1 - x0
        img[y0:y0 + t, min(x0, s // 2):max(x0, s // 2) + 1] = 1
        img[y0:s - s // 5, max(0, x0 - (t if cls == "corner_tr" else 0)):x0 + (t if cls == "corner_tl" else 1)] = 1
    elif cls == "ring":
        cy, cx, r = s / 2 + j() / 2, s / 2 + j() / 2, s / 3
        d = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx)
        img[np.abs(d - r) < max(0.8, t / 1.5)] = 1
    elif cls == "checker":
        k = max(2, s // 4)
        off = int(rng.integers(0, 2))
        img[((yy // k + xx // k + off) % 2) == 0] = 1
    contrast = rng.uniform(0.6, 1.0)
    background = rng.uniform(0.0, 0.25)
    img = background + contrast * img + rng.normal(0, 0.08, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_folder(root: Path, size: int, per_class_train: int = 150, per_class_val: int = 30, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed + size)
    for split, n in (("train", per_class_train), ("val", per_class_val)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(draw(c, size, rng), "L").save(d / f"{i:04d}.png")
    return root


def train(folder: Path, out: Path, epochs: int, extra: list[str], threads: int) -> dict:
    cmd = [sys.executable, "-m", "prunekit", "train", "--data", "imagefolder", "--data-dir", str(folder),
           "--epochs", str(epochs), "--out", str(out), "--overwrite", "--device", "cpu", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ,
                                                                  "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [x for x in rows if "test_top1" in x]
    return {"command": " ".join(cmd[2:]), "seconds": round(time.perf_counter() - t0, 1),
            "test_top1": [round(x["test_top1"], 2) for x in rows], "train_top1": [round(x["train_top1"], 2) for x in rows],
            "final_top1": rows[-1]["test_top1"], "warned": "warning:" in r.stdout + r.stderr}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,16", help="image sides (default 8,16)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(C.RESULTS / "tiny_images"), help="result prefix")
    args = ap.parse_args()
    work = C.WORK / "tiny_images"
    env = C.environment(__import__("torch").device("cpu"))
    runs = []
    for size in [int(s) for s in args.sizes.split(",")]:
        folder = make_folder(work / f"data{size}", size)
        old_pad = max(1, round(size / 7))
        for label, extra in (("default", []),
                             ("old augmentation (flips, pad side/7)",
                              ["--set", "data.augment.hflip=true", "--set", f"data.augment.crop_pad={old_pad / size}"])):
            C.log(f"size {size}: {label}")
            res = train(folder, work / f"run{size}_{'old' if extra else 'default'}", args.epochs, extra, args.threads)
            runs.append({"size": size, "setting": label, **res})
            C.log(f"  test top-1 per epoch {res['test_top1']}")
    doc = {"what": "default `prunekit train` on tiny grayscale ImageFolders (10 separable classes, 1,500 train / "
                   "300 test images)", "environment": env, "command": C.command_line(), "provenance": env["provenance"],
           "runs": runs}
    lines = ["# Default training on tiny-image ImageFolders", "", f"{C.provenance_line(doc['provenance'])}", "",
             "| size | augmentation | test top-1 after each epoch | final | gap warning |", "|---|---|---|---:|---|"]
    for r in runs:
        lines.append(f"| {r['size']}x{r['size']} | {r['setting']} | {', '.join(f'{v:.0f}' for v in r['test_top1'])} | "
                     f"{r['final_top1']:.1f}% | {'yes' if r['warned'] else 'no'} |")
    C.write_results(Path(args.out), doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
