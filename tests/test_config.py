import pytest

from prunekit.config import apply_overrides, describe, dump_config, load_config, parse_config
from prunekit.errors import PrunekitError


def test_defaults_and_overrides(tmp_path):
    cfg = parse_config({})
    assert cfg.model.arch == "mobilenet_v1" and cfg.prune.schedule.kind == "polynomial_decay"
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\nprune:\n  layers: all\n")
    cfg = load_config(p, ["train.lr=0.2", "prune.final_sparsity=0.6", "export.formats=[onnx]"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.prune.final_sparsity, cfg.prune.layers) == (3, 0.2, 0.6, "all")
    assert cfg.export.formats == ["onnx"]
    assert parse_config(__import__("yaml").safe_load(dump_config(cfg))) == cfg  # the resolved config round-trips


@pytest.mark.parametrize("data,msg", [
    ({"trian": {}}, r"unknown config key 'trian' \(did you mean 'train'\?\); valid keys: version, out"),
    ({"prune": {"schedule": {"final_sparsty": 0.5}}}, r"did you mean 'final_sparsity'"),
    ({"train": {"epochs": "ten"}}, "train.epochs must be a number, got 'ten'"),
    ({"train": {"batch_size": 12.5}}, "train.batch_size must be an integer"),
    ({"train": {"amp": "yes"}}, "train.amp must be true or false"),
    ({"prune": {"final_sparsity": 1.0}}, "prune.final_sparsity must be in \\[0, 1\\), got 1.0"),
    ({"prune": {"schedule": {"initial_sparsity": -0.1}}}, "initial_sparsity must be in \\[0, 1\\), got -0.1"),
    ({"prune": {"schedule": {"final_sparsity": float("nan")}}}, "must be finite"),
    ({"prune": {"schedule": {"begin_step": 50, "end_step": 10}}}, "begin_step .50. must be <= end_step"),
    ({"prune": {"schedule": {"frequency": 0}}}, "frequency must be >= 1"),
    ({"prune": {"epochs": 2, "schedule": {"end_epoch": 3}}}, "after the last prune epoch"),
    ({"prune": {"criterion": "l3"}}, "must be one of l1, l2, l1_filters, bn_gamma, taylor, random"),
    ({"prune": {"layers": "blocks.(("}}, "invalid layer regex"),
    ({"prune": {"overrides": [{"layer": "x"}]}}, r"unknown config key 'prune.overrides\[0\].layer' \(did you mean 'layers'\?\)"),
    ({"data": {"name": "mnist"}}, "did you mean 'fashion-mnist'"),
    ({"data": {"name": "imagefolder"}}, "data.root is required"),
    ({"export": {"formats": ["onnx", "tflite"]}}, r"export.formats\[1\] must be one of onnx, torchscript, exported-program, got 'tflite'"),
    ({"export": {"formats": ["torchscript"]}}, "quantize.enabled needs 'onnx'"),
    ({"export": {"exporter": "torchscript"}}, "export.exporter must be one of auto, dynamo, legacy, got 'torchscript'"),
    ({"model": []}, "model must be a mapping"),
    ({"version": 2}, "config version 2 is not supported"),
])
def test_every_class_of_mistake_is_named(data, msg):
    with pytest.raises(PrunekitError, match=msg):
        parse_config(data)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(PrunekitError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(PrunekitError, match="invalid YAML"):
        load_config(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(PrunekitError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(PrunekitError, match="expects key.sub=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(PrunekitError, match="is not a section"):
        apply_overrides({"train": 3}, ["train.lr=1"])


def test_every_key_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    rows = describe()
    assert len(rows) > 60
    for key, _t, _default, help_ in rows:
        assert help_, key
        assert f"`{key}`" in doc, f"docs/config.md lacks {key}"


def test_the_config_doc_is_what_the_generator_writes():
    """docs/config.md is generated (scripts/gen_config_doc.py): a hand edit there is lost at the next
    regeneration, and a schema change without regenerating leaves it stale."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_config_doc", root / "scripts" / "gen_config_doc.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (root / "docs" / "config.md").read_text() == gen.render(), "run: python scripts/gen_config_doc.py"


def test_stage_learning_rates_default_from_train():
    """Pruning trains at half the dense rate; fine-tuning restarts at the full rate (learning-rate rewinding);
    an explicit rate wins."""
    from prunekit.config import parse_config

    c = parse_config({"train": {"lr": 0.08}})
    assert c.prune.training(c.train, 0).lr == pytest.approx(0.04)
    assert c.finetune.training(c.train, 0).lr == pytest.approx(0.08)
    c = parse_config({"train": {"lr": 0.08}, "prune": {"lr": 0.02}, "finetune": {"lr": 0.01}})
    assert c.prune.training(c.train, 0).lr == 0.02 and c.finetune.training(c.train, 0).lr == 0.01
