"""The shipped run configs (configs/*.yaml) load, validate and resolve their pruning schedules."""

from pathlib import Path

import pytest
import yaml

from prunekit.config import dump_config, load_config, parse_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.y*ml"))
# training-set sizes the configs are written for (images per epoch)
TRAIN_IMAGES = {"bundled": 4_000, "fashion-mnist": 60_000, "imagefolder": 1_281_167}


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "fashion_mnist.yaml", "imagenet_mobilenet_v1.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_resolves(path):
    cfg = load_config(path)
    # OUT/config.yaml (the resolved config a run saves) loads back to the same config
    assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg
    steps = TRAIN_IMAGES[cfg.data.name] // cfg.prune.training(cfg.train, cfg.seed).batch_size
    if cfg.prune.enabled:
        prune_steps = round(cfg.prune.epochs * steps)
        sched = cfg.prune.pruning(cfg.seed).build_schedule(steps, prune_steps)
        assert 0 <= sched.begin_step < sched.end_step <= prune_steps
        assert sched.final_sparsity == cfg.prune.final_sparsity


def test_demo_uses_the_bundled_data():
    cfg = load_config(next(p for p in CONFIGS if p.name == "demo.yaml"))
    assert cfg.data.name == "bundled" and cfg.data.root is None


def test_fashion_mnist_config_is_the_full_gpu_run():
    path = next(p for p in CONFIGS if p.name == "fashion_mnist.yaml")
    cfg = load_config(path)
    assert cfg.data.name == "fashion-mnist"
    assert cfg.model.arch == "mobilenet_v1" and cfg.model.width == 1.0
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.optimizer, t.nesterov) == (30, 256, 0.1, "sgd", True)
    assert t.label_smoothing == 0.1 and t.warmup_epochs > 0
    assert cfg.prune.final_sparsity == 0.75 and cfg.prune.layers == "pointwise"
    assert cfg.prune.schedule.kind == "polynomial_decay" and cfg.prune.schedule.end_epoch == 10
    assert 10 <= cfg.finetune.epochs <= 15
    assert set(cfg.export.formats) == {"onnx", "torchscript"} and cfg.quantize.enabled
    # the dataset location is one override away
    moved = load_config(path, ["data.root=/data/fmnist"])
    assert moved.data.root == "/data/fmnist" and moved.train == cfg.train
    # pruning ramps over the first 10 epochs of 234 steps (60,000 / 256), about once per epoch
    spe = 60_000 // 256
    sched = cfg.prune.pruning().build_schedule(spe, round(cfg.prune.epochs * spe))
    assert (sched.begin_step, sched.end_step) == (0, 2340)
    assert 8 <= (sched.end_step - sched.begin_step) // sched.frequency <= 12
    assert sched.sparsity(sched.end_step) == pytest.approx(0.75)
