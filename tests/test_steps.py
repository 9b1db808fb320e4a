"""One steps module under the CLI and the pipeline: the same settings give the same model by either path;
every registry entry is reachable from the config and the CLI; the import layers hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "seed": 3,
    "model": {"width": 0.25},
    "data": {"name": "synthetic", "image_size": 16},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "warmup_epochs": 0.5, "weight_decay": 1e-4},
    "prune": {"epochs": 1, "final_sparsity": 0.5, "criterion": "taylor", "taylor_batches": 2, "round_to": 2,
              "schedule": {"end_epoch": 0.75}},
    "finetune": {"epochs": 0},
    "export": {"formats": ["onnx"]},
    "quantize": {"enabled": False},
    "bench": {"enabled": False},
}


def test_cli_commands_and_the_pipeline_give_identical_models(tmp_path):
    from prunekit.config import parse_config
    from prunekit.pipeline import Pipeline

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({**TINY, "out": str(tmp_path / "run")}))
    Pipeline(parse_config({**TINY, "out": str(tmp_path / "run")}), log=lambda s: None).run()
    stages = tmp_path / "run" / "stages"

    rc, _, err = run_cli("train", "--config", cfg_file, "--out", tmp_path / "t", "--device", "cpu")
    assert rc == 0, err
    assert (tmp_path / "t/model/model.safetensors").read_bytes() == (stages / "train/model/model.safetensors").read_bytes()

    rc, _, err = run_cli("prune", "--model", tmp_path / "t/model", "--config", cfg_file, "--out", tmp_path / "p",
                         "--device", "cpu")
    assert rc == 0, err
    for f in ("model.safetensors", "masks.safetensors"):  # same weights and same masks, byte for byte
        assert (tmp_path / "p/model" / f).read_bytes() == (stages / "prune/model" / f).read_bytes(), f

    rc, _, err = run_cli("surgery", "--model", tmp_path / "p/model", "--out", tmp_path / "s")
    assert rc == 0, err
    assert (tmp_path / "s/model.safetensors").read_bytes() == (stages / "surgery/model/model.safetensors").read_bytes()


def test_a_flag_overrides_the_config_and_the_config_reaches_the_prune_stage(tmp_path):
    """`prunekit prune` used to ignore train.* settings: now --config's train section is what the stage trains with."""
    from prunekit.cli import build_parser
    from prunekit.commands.common import run_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY))
    args = build_parser().parse_args(["prune", "--model", "m", "--config", str(cfg_file), "--out", "o",
                                      "--final-sparsity", "0.3"])
    cfg = run_config(args)
    assert cfg.prune.final_sparsity == 0.3  # the flag wins over the file
    t = cfg.prune.training(cfg.train, cfg.seed)
    assert (t.weight_decay, t.lr, t.batch_size) == (1e-4, 0.025, 64)  # train.* inherited, lr = train.lr / 2


# --- registries <-> config <-> CLI ------------------------------------------------------------------------------


def _cli_choices(command: str, flag: str) -> list[str]:
    from prunekit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return list(next(a for a in sub._actions if flag in a.option_strings).choices)


def _config_choices(cls, name: str) -> list[str]:
    from prunekit.schema import choices_of, field_meta

    return choices_of(field_meta(cls, name))


def test_every_registry_entry_is_reachable_from_the_config_and_the_cli():
    from prunekit.config import DataCfg, ExportCfg, PruneCfg, QuantizeCfg, parse_config
    from prunekit.data import DATASETS
    from prunekit.deploy import FORMATS, METHODS
    from prunekit.models import list_models
    from prunekit.pruning import CRITERIA, SCHEDULES, ScheduleSpec
    from prunekit.steps import EXPORT_NAMES

    cases = [(list(CRITERIA), _config_choices(PruneCfg, "criterion"), _cli_choices("prune", "--criterion")),
             (list(SCHEDULES), _config_choices(ScheduleSpec, "kind"), _cli_choices("prune", "--schedule")),
             (list(FORMATS), _config_choices(ExportCfg, "formats"), _cli_choices("export", "--format")),
             (list(DATASETS), _config_choices(DataCfg, "name"), _cli_choices("train", "--data")),
             (list(METHODS), _config_choices(QuantizeCfg, "method"), _cli_choices("quantize", "--method"))]
    for registry, config, cli in cases:  # and vice versa: nothing in the config or CLI that the registry lacks
        assert sorted(registry) == sorted(config) == sorted(cli), (registry, config, cli)
    for name in CRITERIA:
        assert parse_config({"prune": {"criterion": name}}).prune.criterion == name
    for kind in SCHEDULES:
        spec = parse_config({"prune": {"schedule": {"kind": kind, "final_sparsity": 0.5}}}).prune.schedule
        assert spec.build(steps_per_epoch=10, total_steps=100).final_sparsity == 0.5
    assert set(EXPORT_NAMES) == set(FORMATS)
    assert parse_config({"export": {"formats": list(FORMATS)}}).export.formats == list(FORMATS)
    for arch in [*list_models(), "torchvision:resnet18"]:
        assert parse_config({"model": {"arch": arch}}).model.arch == arch
    assert _cli_choices("surgery", "--criterion") == [n for n in CRITERIA if not CRITERIA[n].needs_data]


def test_a_registered_criterion_is_valid_in_the_config_and_the_cli_at_once():
    from prunekit.config import parse_config
    from prunekit.errors import PrunekitError
    from prunekit.pruning import CRITERIA, register_criterion
    from prunekit.pruning.criteria import L1

    with pytest.raises(PrunekitError, match="must be one of"):
        parse_config({"prune": {"criterion": "my_l1"}})
    register_criterion("my_l1")(type("MyL1", (L1,), {}))
    try:
        assert parse_config({"prune": {"criterion": "my_l1"}}).prune.criterion == "my_l1"
        assert "my_l1" in _cli_choices("prune", "--criterion")
    finally:
        del CRITERIA["my_l1"]


def test_unknown_model_arch_is_named_with_the_closest():
    from prunekit.config import parse_config
    from prunekit.errors import PrunekitError

    with pytest.raises(PrunekitError, match=r"model.arch.*'mobilenet_v2'.*did you mean 'mobilenet_v1'"):
        parse_config({"model": {"arch": "mobilenet_v2"}})


# --- the layer contract ----------------------------------------------------------------------------------------


def test_import_layers_hold():
    """`lint-imports` (pyproject.toml): every module imports only layers below its own, and the forbidden
    dependencies (pruning -> train, surgery -> pruning, ...) are absent."""
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_public_api_is_small():
    import prunekit

    names = [n for n in prunekit.__all__ if not n.startswith("_")]
    assert len(names) <= 15, names
    for n in names:
        assert getattr(prunekit, n) is not None
