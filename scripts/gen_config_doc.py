"""Regenerate docs/config.md from the config schema: `python scripts/gen_config_doc.py`."""

from pathlib import Path

from prunekit.config import describe

HEAD = """# Run configuration (`prunekit run CONFIG.yaml`)

Every key has a default; a config file lists only what it changes. `--set key.sub=value` overrides any key (the
value is parsed as YAML, e.g. `--set export.formats=[onnx]`). Unknown keys, wrong types and out-of-range values
are rejected before any work starts, naming the key and the closest valid one. The resolved config is saved as
`OUT/config.yaml`. Shipped configs: `configs/demo.yaml` (bundled data, minutes on 2 CPU cores),
`configs/fashion_mnist.yaml` (full Fashion-MNIST, GPU-sized), `configs/imagenet_mobilenet_v1.yaml` (ImageFolder,
starts from an imported model).

**Stages and what they depend on.** `train` (model, data, train, seed; `model.init` starts from a saved model
and trains it `train.epochs` more epochs, 0 = as it is) → `prune` (prune) →
`surgery` → `finetune` (finetune, train) → `export` (export) → `quantize` (quantize, bench) → `evaluate` (bench) →
`predict` (predict) → `report`. A stage reruns when its own keys or an earlier stage changed; `--from STAGE`
forces a rerun, `--to STAGE` stops after one.

**The pruning schedule** follows TF Model Optimization: between the begin and end step, every `frequency` steps,
the target sparsity is `final + (initial - final) * (1 - p)^power` (`p` = progress in [0, 1]; `constant` and
`one_shot` use `final_sparsity` throughout), and in every selected group the lowest-ranked channels are masked
until that fraction is gone. Steps can be given in epochs (`begin_epoch`, `end_epoch`); by default pruning ends
at 60% of `prune.epochs`, leaving the rest to recover. The final target is also applied at `end_step` itself.
`prune.lr` defaults to `train.lr / 2` and `finetune.lr` to `train.lr` (the fine-tuning schedule restarts at the
full rate: learning-rate rewinding); the prune and finetune stages take every other training setting from `train`.

**Augmentation** (`data.augment`) scales with the image: a random crop after zero padding of `crop_pad` times
the image side (default 0.125: 4 px at 28x28, 1 px at 8x8), and horizontal flips only where the content is
mirror-symmetric: on by default for Fashion-MNIST, off for image folders and synthetic data.

"""


OUT = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def render() -> str:
    """docs/config.md as the schema describes it (tests/test_config.py checks the file is up to date)."""
    lines = [HEAD, "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, t, default, doc in describe():
        d = "null" if default is None else f"`{default!r}`"
        lines.append(f"| `{key}` | {t} | {d} | {doc} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
